"""The trainer's adapters: the registry and ingest over HTTP, the snapshot folder, the trainings table, Keras."""

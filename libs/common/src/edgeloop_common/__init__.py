"""EdgeLoop's contract: event schemas, topics, settings, the bus and telemetry."""

__version__ = "0.1.0"

"""EdgeLoop ingest: the MQTT -> Kafka bridge and the sample store."""

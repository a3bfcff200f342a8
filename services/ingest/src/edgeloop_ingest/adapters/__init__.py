"""The outside world: MQTT, the blob store, the sample database, the disk buffer."""

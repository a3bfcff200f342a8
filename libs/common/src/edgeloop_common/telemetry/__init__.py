"""Sensor telemetry for the failure model: windowed features and a site's reading history (docs/telemetry.md)."""

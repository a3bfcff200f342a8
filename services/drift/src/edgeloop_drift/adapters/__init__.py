"""The drift service's outside world: the model registry."""

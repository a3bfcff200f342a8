"""The deployer's outside world: Kubernetes, the local model server, its SQL store."""

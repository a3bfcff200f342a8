"""EdgeLoop deployer: rolls promoted model versions out to KubeEdge node groups, or checks them on the local
model server in standalone mode, and reports each rollout as DeploymentUpdated."""

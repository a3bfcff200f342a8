"""``edgeloop``: one command for the infrastructure, every service and the tools.

Sub-commands import their service lazily, so ``edgeloop --help`` is fast and a
service's heavy dependencies (TensorFlow) load only when that service runs.
"""

from __future__ import annotations

import typer

from edgeloop import api_tokens, demo, device, device_identity, federated, images_cli, infra, kube, services, train

app = typer.Typer(
    name="edgeloop",
    help="EdgeLoop: close the machine-learning loop between edge devices and the cloud.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(infra.app, name="infra", help="Local Kafka, Mosquitto and PostgreSQL: up, down, status.")
app.add_typer(kube.app, name="kube", help="A local Kubernetes control plane with simulated KubeEdge edge nodes.")
app.add_typer(images_cli.app, name="images", help="The EdgeLoop image, built locally (no Docker, no registry).")
device_identity.register(device.app)
app.add_typer(
    device.app, name="device", help="Edge devices: a simulated Pi camera over MQTT; identities on a secured broker."
)
app.add_typer(api_tokens.app, name="token", help="API tokens and roles of the HTTP services: add, list, remove.")
app.add_typer(federated.app, name="federated", help="Federated training across sites (Flower): server, site client.")
app.command("train", help=train.HELP)(train.train)
app.command("demo", help=demo.HELP)(demo.demo)
services.register(app)

if __name__ == "__main__":
    app()

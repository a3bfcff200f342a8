"""``edgeloop images build``: the command over ``edgeloop.images`` (and the real node it imports into).

Apart from ``edgeloop.images`` so that the image build does not depend on the Kubernetes package, which
imports images onto its real node (docs/kubernetes.md, "Images built locally").
"""

from __future__ import annotations

from typing import Annotated

import typer

from edgeloop.images import ImageError, build, import_image

app = typer.Typer(no_args_is_help=True, help="The EdgeLoop image built locally, without Docker and without a registry.")


@app.command("build")
def build_command(
    import_: Annotated[
        bool,
        typer.Option("--import/--no-import", help="Import into the real node's containerd when it runs."),
    ] = True,
) -> None:
    """Build the EdgeLoop image (cached by content under ~/.cache/edgeloop/images) and import it into the real node."""
    from edgeloop.kube.errors import KubeError
    from edgeloop.kube.node import containerd_address, containerd_running

    try:
        built = build(echo=typer.echo)
        if import_ and containerd_running():
            done = import_image(built.layout, built.tag, built.name, containerd_address(), echo=typer.echo)
            if not done:
                typer.echo(f"{built.name.reference}: the real node already has {built.manifest_digest[:19]}")
        elif import_:
            typer.echo("no real node running (edgeloop kube up --real-node): not imported")
    except (ImageError, KubeError) as exc:
        typer.echo(f"images build failed:\n{exc}", err=True)
        raise typer.Exit(1) from exc

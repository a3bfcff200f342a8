"""``edgeloop kube up|down|status|env``: the typer commands over :mod:`edgeloop.kube.cluster`.

The cluster module (and the kubernetes client it uses) is imported inside each
command, so ``edgeloop --help`` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer

from edgeloop.kube.edge import DEFAULT_GROUPS, DEFAULT_NODES_PER_GROUP
from edgeloop.kube.errors import KubeError

# The real node's default node group (node.DEFAULT_GROUP; not imported from there, to keep `--help` light).
DEFAULT_REAL_NODE_GROUP = "site-real"

if TYPE_CHECKING:
    from edgeloop.kube.cluster import ClusterStatus

app = typer.Typer(
    no_args_is_help=True,
    help=(
        "A local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler; built from source "
        "with Go) with KWOK-simulated KubeEdge edge nodes, on 127.0.0.1, state under .edgeloop/kube/."
    ),
)


@app.command()
def up(
    groups: Annotated[
        str, typer.Option(help="Comma-separated node group names (label apps.kubeedge.io/belonging-to).")
    ] = ",".join(DEFAULT_GROUPS),
    nodes_per_group: Annotated[int, typer.Option(min=1, max=50, help="Simulated edge nodes in each group.")] = (
        DEFAULT_NODES_PER_GROUP
    ),
    real_node: Annotated[
        bool,
        typer.Option(
            help="Also run a real node (kubelet + containerd + kube-proxy, built and installed on first use) "
            "beside the simulated ones: real containers of locally built images (`edgeloop images build`)."
        ),
    ] = False,
    real_node_group: Annotated[
        str, typer.Option(help="The node group of the real node (its own by default, so workloads choose it).")
    ] = DEFAULT_REAL_NODE_GROUP,
    export_kubeconfig: Annotated[
        bool,
        typer.Option(
            help="Merge the 'edgeloop' context into ~/.kube/config and make it current "
            "(skipped when KUBECONFIG is set)."
        ),
    ] = True,
) -> None:
    """Build once (cached in ~/.cache/edgeloop/kube), start what is not running, wait until the edge nodes are Ready."""
    from edgeloop.kube import cluster
    from edgeloop.kube.edge import Topology

    names = tuple(name.strip() for name in groups.split(",") if name.strip())
    if not names:
        raise typer.BadParameter("at least one node group", param_hint="--groups")
    try:
        status_ = cluster.up(
            Topology(names, nodes_per_group),
            echo=typer.echo,
            export_kubeconfig=export_kubeconfig,
            real_node=real_node_group if real_node else None,
        )
    except KubeError as exc:
        typer.echo(f"kube up failed:\n{exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo("")
    _print_status(status_)


@app.command()
def down(
    purge: Annotated[bool, typer.Option(help="Also delete .edgeloop/kube (etcd data, certificates, logs).")] = False,
) -> None:
    """Stop, by pid, every process `edgeloop kube up` started (the real node's first). Binaries stay cached."""
    from edgeloop.kube import cluster

    try:
        cluster.down(purge=purge, echo=typer.echo)
    except KubeError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Components (pid, port, memory), the kubeconfig and the edge nodes. Exit status 0 when all run, 3 otherwise."""
    from edgeloop.kube import cluster

    status_ = cluster.status()
    if as_json:
        typer.echo(json.dumps(asdict(status_) | {"running": status_.running}, default=str, indent=2))
    else:
        _print_status(status_)
    if not status_.running:
        raise typer.Exit(3)  # as `edgeloop infra status`: LSB's "not running"


@app.command()
def env() -> None:
    """Print the shell exports for this cluster: eval "$(edgeloop kube env)"."""
    from edgeloop.kube import cluster
    from edgeloop.kube.layout import kubeconfig_path

    bin_dir = cluster.status(with_nodes=False).bin_dir
    typer.echo(f"export KUBECONFIG={kubeconfig_path()}")
    if bin_dir is not None:
        typer.echo(f'export PATH="{bin_dir}:$PATH"')


def _print_status(status_: ClusterStatus) -> None:
    typer.echo(f"{'COMPONENT':<24} {'STATE':<8} {'PID':>8} {'PORT':>6} {'RSS':>8}  LOG")
    for component in status_.components:
        state = "running" if component.running else "stopped"
        rss = f"{component.rss_bytes / 2**20:.0f} MiB" if component.rss_bytes else "-"
        typer.echo(
            f"{component.name:<24} {state:<8} {component.pid or '-':>8} {component.port or '-':>6} {rss:>8}  "
            f"{component.log}"
        )
    total = sum(c.rss_bytes or 0 for c in status_.components)
    if total:
        typer.echo(f"{'total':<24} {'':<8} {'':>8} {'':>6} {total / 2**20:>4.0f} MiB")
    typer.echo(f"\nKubernetes {status_.kubernetes_version}, API server {status_.server or '-'}")
    typer.echo(f"kubeconfig: {status_.kubeconfig}")
    if status_.bin_dir:
        typer.echo(f"binaries:   {status_.bin_dir} (kubectl: Debian's; helm: here)")
    if status_.nodes_error:
        typer.echo(f"nodes: {status_.nodes_error}")
    elif status_.nodes:
        typer.echo(f"\n{'NODE':<24} {'GROUP':<12} {'READY':<6} TAINTS")
        for node in status_.nodes:
            typer.echo(f"{node.name:<24} {node.group:<12} {node.ready!s:<6} {','.join(node.taints)}")

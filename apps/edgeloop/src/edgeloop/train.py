"""``edgeloop train``: train an image classifier from a folder of class sub-folders, export it for TF Serving.

Two more ways to use it: ``--register URL`` registers the exported version in
the registry (and ``--promote`` asks its policy to promote it); ``--trainer URL``
does not train here but asks the trainer service for a run and follows it.
TensorFlow is imported only when the command runs, so ``edgeloop --help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

HELP = (
    "Train an image classifier from DIR/<class>/<images> and export it as MODEL_BASE/NAME/VERSION "
    "(a SavedModel for TF Serving and `edgeloop model-server`); or, with --trainer, ask the trainer service; "
    "or, with --telemetry --history SITE.db ..., train the failure model on sites' sensor histories."
)


def train(
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Model name: folder under MODEL_BASE, name in URLs (--telemetry: machine-failure)."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Folder of class sub-folders of JPEG/PNG images (class = folder name)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Model base path: the version is written to OUT/NAME/VERSION/.")
    ] = None,
    backbone: Annotated[
        str,
        typer.Option(
            "--backbone",
            help="efficientnet-lite0 (ImageNet weights from its installed package, frozen, a trained head), "
            "efficientnet-lite2 (deeper: the cloud model) or small-cnn (from scratch: tiny devices, tests).",
        ),
    ] = "efficientnet-lite0",
    fine_tune: Annotated[
        int, typer.Option("--fine-tune", min=0, help="Also train the backbone's top N blocks, at a lower rate.")
    ] = 0,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Training epochs (default: 40 for a head, 15 small-cnn).")
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", min=16, help="Images are resized to SIZE x SIZE (default: the backbone's own)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per training step.")] = 32,
    eval_fraction: Annotated[
        float | None,
        typer.Option(
            "--eval-fraction",
            min=0.01,
            max=0.9,
            help="Share of each class held out for evaluation (--telemetry: share of machines; default 0.2, 0.25).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed: evaluation split, weights, augmentation.")] = 42,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="Version to write (default: highest present + 1).")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the training progress bar.")] = True,
    register: Annotated[
        str | None,
        typer.Option("--register", metavar="URL", help="Register the version in the registry at URL (e.g. :8083)."),
    ] = None,
    promote: Annotated[
        bool | None,
        typer.Option(
            "--promote/--no-promote",
            help="With --register: ask the registry to promote it (default: no; with --telemetry: yes).",
        ),
    ] = None,
    trainer: Annotated[
        str | None,
        typer.Option(
            "--trainer", metavar="URL", help="Ask the trainer service at URL (e.g. :8084) for a run and follow it."
        ),
    ] = None,
    requested_by: Annotated[str, typer.Option("--requested-by", help="With --trainer: who asks.")] = "edgeloop-cli",
    telemetry: Annotated[
        bool, typer.Option("--telemetry", help="Train the failure model on sensor histories (--history) instead.")
    ] = False,
    histories: Annotated[
        list[Path] | None,
        typer.Option("--history", help="With --telemetry: a site's SiteHistory file (SQLite); repeat for more sites."),
    ] = None,
    kind: Annotated[
        str, typer.Option("--kind", help="With --telemetry: logistic (logistic regression) or mlp (a small MLP).")
    ] = "logistic",
) -> None:
    from rich.console import Console

    console = Console()
    if telemetry:
        _train_telemetry(
            model or "machine-failure",
            histories or [],
            out,
            kind=kind,
            epochs=epochs or 20,
            eval_fraction=eval_fraction or 0.25,
            seed=seed,
            version=version,
            register=register,
            promote=promote is not False,
            console=console,
        )
        return
    if model is None:
        console.print("[red]error:[/] --model NAME is needed")
        raise typer.Exit(code=2)
    if eval_fraction is None:
        eval_fraction = 0.2
    if trainer is not None:
        _follow_remote(trainer, model, requested_by, console)
        return
    if data is None or out is None:
        console.print("[red]error:[/] --data and --out are needed to train here (or give --trainer URL)")
        raise typer.Exit(code=2)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal
    from edgeloop_trainer.dataset import DatasetError
    from edgeloop_trainer.export import VersionExistsError
    from edgeloop_trainer.recipe import FEATURE_CACHE_DIR
    from edgeloop_trainer.report import print_report
    from edgeloop_trainer.training import train_classifier

    try:
        result = train_classifier(
            data,
            model,
            out,
            backbone=backbone,
            fine_tune=fine_tune,
            epochs=epochs,
            image_size=image_size,
            batch_size=batch_size,
            eval_fraction=eval_fraction,
            seed=seed,
            version=version,
            progress=progress,
            feature_cache=out / FEATURE_CACHE_DIR,
        )
    except (DatasetError, VersionExistsError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    print_report(result, console)
    if register is not None:
        from edgeloop_trainer.registration import RegistrationError, register_result

        try:
            version_out, decision = register_result(
                register,
                result,
                data,
                promote=bool(promote),
                eval_fraction=eval_fraction,
                seed=seed,
                batch_size=batch_size,
            )
        except RegistrationError as exc:
            console.print(f"[red]not registered:[/] {exc} (the export stays at {result.path})")
            raise typer.Exit(code=1) from exc
        console.print(f"registered {model} version {version_out['version']} in {register}")
        if decision is not None:
            verdict = "promoted" if decision["promoted"] else "not promoted"
            console.print(f"{verdict}: {decision['decision']}")


def _train_telemetry(
    model: str,
    histories: list[Path],
    out: Path | None,
    *,
    kind: str,
    epochs: int,
    eval_fraction: float,
    seed: int,
    version: int | None,
    register: str | None,
    promote: bool,
    console: Console,
) -> None:
    if not histories or out is None:
        console.print("[red]error:[/] --telemetry needs --history SITE.db (one or more) and --out MODEL_BASE")
        raise typer.Exit(code=2)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgeloop_trainer.export import VersionExistsError
    from edgeloop_trainer.registration import RegistrationError

    from edgeloop.train_telemetry import train_centralised

    try:
        train_centralised(
            histories,
            out,
            model_name=model,
            kind=kind,
            epochs=epochs,
            eval_fraction=eval_fraction,
            seed=seed,
            version=version,
            register_url=register,
            promote=promote,
            log=console.print,
        )
    except (FileNotFoundError, VersionExistsError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    except RegistrationError as exc:
        console.print(f"[red]not registered:[/] {exc}")
        raise typer.Exit(code=1) from exc


def _follow_remote(trainer: str, model: str, requested_by: str, console: Console) -> None:
    from edgeloop_trainer.follow import TrainerUnavailableError, print_outcome, request_and_follow

    try:
        run = request_and_follow(trainer, model, requested_by=requested_by, detail="edgeloop train", console=console)
    except TrainerUnavailableError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=1) from exc
    print_outcome(run, console)
    if run["state"] != "succeeded":
        raise typer.Exit(code=1)

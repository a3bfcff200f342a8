"""``edgeloop train``: train an image classifier from a folder of class sub-folders, export it for TF Serving.

TensorFlow is imported only when the command runs, so ``edgeloop --help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

HELP = (
    "Train an image classifier from DIR/<class>/<images> and export it as MODEL_BASE/NAME/VERSION "
    "(a SavedModel for TF Serving and `edgeloop model-server`)."
)


def train(
    data: Annotated[
        Path,
        typer.Option("--data", help="Folder of class sub-folders of JPEG/PNG images (class = folder name)."),
    ],
    model: Annotated[str, typer.Option("--model", help="Model name: folder under MODEL_BASE, name in URLs.")],
    out: Annotated[Path, typer.Option("--out", help="Model base path: the version is written to OUT/NAME/VERSION/.")],
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 15,
    image_size: Annotated[int, typer.Option("--image-size", min=16, help="Images are resized to SIZE x SIZE.")] = 128,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per training step.")] = 32,
    eval_fraction: Annotated[
        float, typer.Option("--eval-fraction", min=0.01, max=0.9, help="Share of each class held out for evaluation.")
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed: evaluation split, weights, augmentation.")] = 42,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="Version to write (default: highest present + 1).")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the training progress bar.")] = True,
) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal
    from edgeloop_trainer.dataset import DatasetError
    from edgeloop_trainer.export import VersionExistsError
    from edgeloop_trainer.report import print_report
    from edgeloop_trainer.training import train_classifier
    from rich.console import Console

    console = Console()
    try:
        result = train_classifier(
            data,
            model,
            out,
            epochs=epochs,
            image_size=image_size,
            batch_size=batch_size,
            eval_fraction=eval_fraction,
            seed=seed,
            version=version,
            progress=progress,
        )
    except (DatasetError, VersionExistsError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    print_report(result, console)

"""Print a training result for people: the evaluation figures ``edgeloop train`` shows."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from edgeloop_trainer.training import TrainingResult


def print_report(result: TrainingResult, console: Console) -> None:
    metrics = result.metrics
    console.print(
        f"[bold]{result.model_name}[/] version [bold]{result.version}[/] -> {result.path}  ({result.duration_s:.1f} s)"
    )
    console.print(
        f"held-out accuracy [bold]{metrics['accuracy']:.3f}[/] on {metrics['eval_samples']} images "
        f"(macro F1 {metrics['macro_f1']:.3f}; trained on {metrics['train_samples']} images)"
    )
    per_class = Table(title="per class (held-out split)")
    for column in ("class", "precision", "recall", "F1", "held-out images", "training images"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for name, figures in metrics["per_class"].items():
        per_class.add_row(
            name,
            f"{figures['precision']:.3f}",
            f"{figures['recall']:.3f}",
            f"{figures['f1']:.3f}",
            str(figures["eval_samples"]),
            str(figures["train_samples"]),
        )
    console.print(per_class)
    confusion = Table(title="confusion (rows: true class, columns: predicted)")
    names = metrics["confusion_matrix"]["class_names"]
    confusion.add_column("true \\ predicted")
    for name in names:
        confusion.add_column(name, justify="right")
    for name, row in zip(names, metrics["confusion_matrix"]["matrix"], strict=True):
        confusion.add_row(name, *(str(count) for count in row))
    console.print(confusion)
    if result.skipped_files:
        console.print(
            f"[yellow]left out {len(result.skipped_files)} file(s), undecodable or of poor quality[/]: "
            + ", ".join(str(p) for p in result.skipped_files[:5])
        )
    console.print(f"figures saved in {result.metadata_path}")

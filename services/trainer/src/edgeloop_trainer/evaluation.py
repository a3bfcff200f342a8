"""Evaluation figures of a classifier on the held-out split: accuracy, per-class precision/recall/F1, confusion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def classification_report(
    true_labels: np.ndarray,
    predicted_labels: np.ndarray,
    class_names: Sequence[str],
    train_counts: Mapping[str, int],
) -> dict[str, Any]:
    """The figures written to ``edgeloop.json`` and printed by ``edgeloop train``.

    ``confusion_matrix[i][j]`` counts held-out images of class ``i`` predicted as class ``j``.
    """
    size = len(class_names)
    confusion = np.zeros((size, size), dtype=np.int64)
    np.add.at(confusion, (true_labels, predicted_labels), 1)
    per_class: dict[str, dict[str, float | int]] = {}
    for index, name in enumerate(class_names):
        true_positive = int(confusion[index, index])
        precision = _ratio(true_positive, confusion[:, index].sum())
        recall = _ratio(true_positive, confusion[index, :].sum())
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "eval_samples": int(confusion[index, :].sum()),
            "train_samples": int(train_counts.get(name, 0)),
        }
    return {
        "accuracy": _ratio(np.trace(confusion), confusion.sum()),
        "macro_f1": float(np.mean([figures["f1"] for figures in per_class.values()])) if per_class else 0.0,
        "eval_samples": int(confusion.sum()),
        "train_samples": int(sum(train_counts.values())),
        "per_class": per_class,
        "confusion_matrix": {"class_names": list(class_names), "matrix": confusion.tolist()},
    }

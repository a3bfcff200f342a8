"""``edgeloop train`` end to end on a tiny synthetic data set: the exported model, its figures, its versions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from edgeloop.main import app
from PIL import Image
from typer.testing import CliRunner

pytestmark = pytest.mark.tf

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 40, 220)}


def encoded(colour: tuple[int, int, int], rng: np.random.Generator, fmt: str) -> bytes:
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def colour_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of noisy solid-colour pictures, JPEG and PNG mixed, plus one undecodable file."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for index in range(10):
            fmt, suffix = ("PNG", "png") if index % 2 else ("JPEG", "jpg")
            (root / name / f"{index}.{suffix}").write_bytes(encoded(colour, rng, fmt))
    (root / "red" / "broken.jpg").write_bytes(b"not a picture")
    return root


@pytest.fixture(scope="module")
def trained(colour_folders: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    model_base = tmp_path_factory.mktemp("models")
    result = CliRunner().invoke(
        app,
        [
            *("train", "--data", str(colour_folders), "--model", "colours", "--out", str(model_base)),
            *("--epochs", "2", "--image-size", "16", "--batch-size", "8", "--no-progress"),
        ],
    )
    assert result.exit_code == 0, result.output
    return model_base, result.output


def test_the_cli_prints_the_evaluation_figures(trained: tuple[Path, str]) -> None:
    _, output = trained

    assert "held-out accuracy" in output
    for name in COLOURS:
        assert name in output
    assert "left out 1 file(s), undecodable or of poor quality" in output and "broken.jpg" in output


def test_the_model_is_exported_in_tf_serving_layout_with_its_figures(trained: tuple[Path, str]) -> None:
    model_base, _ = trained
    version_dir = model_base / "colours" / "1"

    recorded = json.loads((version_dir / "assets.extra" / "edgeloop.json").read_text())

    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "variables").is_dir()
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert (version_dir / "assets.extra" / "model.keras").is_file()  # the starting point of a warm start
    assert [p.name for p in (model_base / "colours").iterdir()] == ["1"]  # no staging folder left behind
    assert recorded["class_names"] == ["blue", "green", "red"]
    assert recorded["version"] == 1
    metrics = recorded["metrics"]
    train_counts = {name: figures["train_samples"] for name, figures in metrics["per_class"].items()}
    assert train_counts["blue"] == train_counts["green"] == 8
    # 30 decodable pictures in all; the undecodable one is left out wherever the split put it
    assert metrics["train_samples"] + metrics["eval_samples"] == 30
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == metrics["eval_samples"]
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert set(metrics["per_class"]["red"]) >= {"precision", "recall", "f1"}


def test_the_serving_signature_takes_encoded_bytes_and_names_the_classes(trained: tuple[Path, str]) -> None:
    import tensorflow as tf

    model_base, _ = trained
    serving = tf.saved_model.load(str(model_base / "colours" / "1")).signatures["serving_default"]
    rng = np.random.default_rng(1)
    images = [encoded(COLOURS["green"], rng, "PNG"), encoded(COLOURS["red"], rng, "JPEG")]

    outputs = serving(image_bytes=tf.constant(images))

    scores, classes = outputs["scores"].numpy(), outputs["classes"].numpy()
    assert scores.shape == (2, 3) and scores.dtype == np.float32
    assert np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    assert [[name.decode() for name in row] for row in classes] == [["blue", "green", "red"]] * 2
    with pytest.raises(tf.errors.InvalidArgumentError):
        serving(image_bytes=tf.constant([b"not an image"]))


def test_the_next_training_is_the_next_version_and_versions_are_never_overwritten(
    trained: tuple[Path, str], colour_folders: Path
) -> None:
    from edgeloop_trainer.export import VersionExistsError
    from edgeloop_trainer.training import train_classifier

    model_base, _ = trained
    second = train_classifier(
        colour_folders, "colours", model_base, backbone="small-cnn", epochs=1, image_size=16, progress=False
    )

    assert second.version == 2
    assert (model_base / "colours" / "2" / "saved_model.pb").is_file()
    with pytest.raises(VersionExistsError):
        train_classifier(
            colour_folders,
            "colours",
            model_base,
            backbone="small-cnn",
            epochs=1,
            image_size=16,
            version=1,
            progress=False,
        )


def test_the_cli_refuses_unusable_data_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "data" / "lonely").mkdir(parents=True)

    result = CliRunner().invoke(
        app, ["train", "--data", str(tmp_path / "data"), "--model", "m", "--out", str(tmp_path / "out")]
    )

    assert result.exit_code == 2
    assert "at least two class folders" in result.output

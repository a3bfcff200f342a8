"""The Keras engine on real photos (a small subset of the cat/dog set, 32 px, one epoch).

What a user of the registry and the model base sees: the export and its
checkpoint, the figures, the drift reference, a warm start that really starts
from production's weights, and nothing visible when a run is stopped midway.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from edgeloop_trainer.adapters.keras_engine import EngineParameters, KerasTrainingEngine
from edgeloop_trainer.adapters.snapshots import LocalSnapshotStore
from edgeloop_trainer.ports import Progress, RegisteredVersion, TrainingJob
from edgeloop_trainer.recipe import Recipe
from edgeloop_trainer.snapshot import Snapshot, SourceItem, build_snapshot
from edgeloop_trainer.training import serving_scores
from trainer_testing import catdog_subset, version_folders

pytestmark = pytest.mark.tf

PARAMS = EngineParameters(recipe=Recipe("small-cnn", 32), epochs=1, incremental_epochs=1, batch_size=16, seed=5)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, catdog_train_dir: Path) -> tuple[LocalSnapshotStore, Snapshot]:
    root = tmp_path_factory.mktemp("keras-engine")
    store = LocalSnapshotStore(root / "trainer")
    snapshot = build_snapshot(store.seed_items(catdog_subset(catdog_train_dir, root / "seed", per_class=30)), 0.25)
    return store, snapshot


def job(
    store: LocalSnapshotStore,
    snapshot: Snapshot,
    *,
    warm: RegisteredVersion | None = None,
    baseline: RegisteredVersion | None = None,
    min_version: int = 1,
) -> TrainingJob:
    return TrainingJob("run-test", "catdog", snapshot, store.image_path, min_version, warm, baseline)


def registered(path: Path, version: int) -> RegisteredVersion:
    return RegisteredVersion("catdog", version, path.as_uri(), {})


@pytest.fixture(scope="module")
def first(workspace: tuple[LocalSnapshotStore, Snapshot], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    store, snapshot = workspace
    model_base = tmp_path_factory.mktemp("models")
    reports: list[Progress] = []
    candidate = KerasTrainingEngine(model_base, PARAMS).train(job(store, snapshot), reports.append)
    return model_base, candidate, reports


def test_a_candidate_is_exported_with_its_checkpoint_figures_and_reference(first, workspace) -> None:  # type: ignore[no-untyped-def]
    model_base, candidate, reports = first
    _, snapshot = workspace

    recorded = json.loads((candidate.path / "assets.extra" / "edgeloop.json").read_text())

    assert version_folders(model_base, "catdog") == ["1"]
    assert (candidate.path / "saved_model.pb").is_file() and (candidate.path / "assets.extra" / "model.keras").is_file()
    assert candidate.artifact_uri == (model_base / "catdog" / "1").as_uri()
    metrics = candidate.metrics
    assert metrics["train_counts"] == snapshot.counts("train") and metrics["eval_counts"] == snapshot.counts("eval")
    assert metrics["evaluation_set_id"] == snapshot.evaluation_set_id and "baseline" not in metrics
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["per_class"]["cat"]["support"] == snapshot.counts("eval")["cat"]
    reference = candidate.reference_stats
    assert reference["n"] == len(snapshot.of_split("eval"))
    assert {"confidence", "score:cat", "score:dog", "brightness_mean", "sharpness_laplacian_var"} <= set(
        reference["features"]
    )
    assert recorded["lineage"]["dataset_snapshot_id"] == snapshot.snapshot_id
    assert recorded["reference_stats"] == reference and recorded["class_names"] == ["cat", "dog"]
    assert candidate.parameters["warm_start"] is False and candidate.parameters["epochs"] == 1
    assert candidate.parameters["new_sample_weight"] == 1 and candidate.parameters["new_train_images"] is None
    assert candidate.parameters["train_images_per_epoch"] == candidate.parameters["train_images"]
    stages = [report.stage for report in reports]
    assert stages[0] == "training" and stages[-1] == "evaluating" and "exporting" in stages
    assert any(report.stage == "training" and report.fraction == 1.0 for report in reports)


def test_warm_start_continues_from_the_production_weights(first, workspace, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model_base, candidate, _ = first
    store, snapshot = workspace
    production = registered(candidate.path, 1)
    # A learning rate this small leaves the weights where they start: the candidate must answer like production.
    frozen = EngineParameters(**{**PARAMS.__dict__, "incremental_learning_rate": 1e-12, "learning_rate": 1e-12})

    warm = KerasTrainingEngine(model_base, frozen).train(
        job(store, snapshot, warm=production, baseline=production, min_version=2), lambda _: None
    )
    cold = KerasTrainingEngine(tmp_path / "cold", frozen).train(job(store, snapshot), lambda _: None)

    eval_files = [store.image_path(item.sha256) for item in snapshot.of_split("eval")]
    production_scores, _ = serving_scores(candidate.path, eval_files, 32)
    warm_scores, _ = serving_scores(warm.path, eval_files, 32)
    cold_scores, _ = serving_scores(cold.path, eval_files, 32)
    assert warm.version == 2 and warm.parameters["warm_start"] is True and warm.parameters["parent_version"] == 1
    assert np.allclose(warm_scores, production_scores, atol=1e-4)
    assert not np.allclose(cold_scores, production_scores, atol=1e-4)  # random weights answer differently
    assert warm.metrics["baseline"] == {"version": 1, "accuracy": pytest.approx(candidate.metrics["accuracy"])}
    assert warm.metrics["accuracy"] == pytest.approx(candidate.metrics["accuracy"])


@pytest.mark.parametrize("factor", [1, 3])
def test_a_warm_start_repeats_the_images_new_since_the_parent(  # type: ignore[no-untyped-def]
    first, workspace, catdog_train_dir: Path, tmp_path: Path, factor: int
) -> None:
    _, candidate, _ = first
    store, parent = workspace
    labeled = [
        SourceItem(f"sample:{photo.stem}", label, store.put_image(photo.read_bytes()))
        for label in ("cat", "dog")
        for photo in sorted((catdog_train_dir / label).iterdir())[30:42]
    ]
    seed = [SourceItem(item.source, item.label, item.sha256) for item in parent.items]
    grown = build_snapshot([*seed, *labeled], 0.25)
    new_in_train = sum(item.source.startswith("sample:") for item in grown.of_split("train"))
    production = registered(candidate.path, 1)
    engine = KerasTrainingEngine(
        tmp_path / "models", EngineParameters(**{**PARAMS.__dict__, "new_sample_weight": factor})
    )

    warm = engine.train(
        TrainingJob("run-test", "catdog", grown, store.image_path, 2, production, production, parent), lambda _: None
    )

    parameters = warm.parameters
    assert new_in_train > 0 and parameters["warm_start"] is True
    assert parameters["new_sample_weight"] == factor and parameters["new_train_images"] == new_in_train
    assert parameters["new_images_rule"] == f"not in {parent.snapshot_id}"
    assert parameters["train_images"] == len(grown.of_split("train"))
    assert parameters["train_images_per_epoch"] == parameters["train_images"] + (factor - 1) * new_in_train
    assert warm.metrics["train_counts"] == grown.counts("train")  # the figures count each image once


def test_warm_start_needs_the_same_classes(first, workspace, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, candidate, _ = first
    store, snapshot = workspace
    renamed = build_snapshot(
        [SourceItem(i.source, "kitten" if i.label == "cat" else i.label, i.sha256) for i in snapshot.items], 0.25
    )
    engine = KerasTrainingEngine(tmp_path / "models", PARAMS)

    start = engine._initial_model(job(store, renamed, warm=registered(candidate.path, 1)))

    assert start.warm is False and "knows classes ['cat', 'dog']" in start.note


@pytest.mark.parametrize("stage", ["training", "evaluating"])
def test_a_run_stopped_midway_leaves_no_visible_version(workspace, tmp_path: Path, stage: str) -> None:  # type: ignore[no-untyped-def]
    store, snapshot = workspace
    model_base = tmp_path / "models"

    def report(progress: Progress) -> None:
        if progress.stage == stage and (stage != "training" or progress.fraction > 0.5):
            raise KeyboardInterrupt("stopped by the test")  # not an Exception: nothing may catch it on the way

    with pytest.raises(KeyboardInterrupt):
        KerasTrainingEngine(model_base, PARAMS).train(job(store, snapshot), report)

    assert version_folders(model_base, "catdog") == []  # neither a version nor a hidden half-written one


def test_a_discarded_version_disappears_from_the_model_base(workspace, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model_base = tmp_path / "models"
    (model_base / "catdog" / "3" / "variables").mkdir(parents=True)
    (model_base / "catdog" / ".tmp-4-abcd").mkdir()
    engine = KerasTrainingEngine(model_base, PARAMS)

    assert engine.discard("catdog", 3) is True and engine.discard("catdog", 3) is False
    assert [p.name for p in engine.remove_stale_staging()] == [".tmp-4-abcd"]
    assert version_folders(model_base, "catdog") == []

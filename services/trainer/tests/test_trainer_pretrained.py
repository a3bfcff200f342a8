"""The trainer on a pretrained backbone: the head on cached features, warm starts, the recipe recorded, a deep and a
shallow model from the same labels, pictures of poor quality left out, and the export served through TF Serving's
REST and gRPC request shapes by the lite model server."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from edgeloop_trainer.adapters.keras_engine import EngineParameters, KerasTrainingEngine
from edgeloop_trainer.adapters.snapshots import LocalSnapshotStore
from edgeloop_trainer.classifier import FeatureCache
from edgeloop_trainer.ports import RegisteredVersion, TrainingJob
from edgeloop_trainer.recipe import Recipe
from edgeloop_trainer.settings import Settings
from edgeloop_trainer.snapshot import Snapshot, build_snapshot
from edgeloop_trainer.training import train_classifier
from trainer_testing import catdog_subset

from tests.helpers import free_port

pytestmark = pytest.mark.tf

LITE0 = Recipe("efficientnet-lite0")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, catdog_train_dir: Path) -> tuple[LocalSnapshotStore, Snapshot]:
    root = tmp_path_factory.mktemp("pretrained")
    store = LocalSnapshotStore(root / "trainer")
    snapshot = build_snapshot(store.seed_items(catdog_subset(catdog_train_dir, root / "seed", per_class=24)), 0.25)
    return store, snapshot


def _job(
    store: LocalSnapshotStore, snapshot: Snapshot, model: str, warm: RegisteredVersion | None = None
) -> TrainingJob:
    return TrainingJob("run-test", model, snapshot, store.image_path, 1, warm, warm)


def test_the_head_learns_on_cached_features_and_a_warm_start_reuses_them(
    workspace: tuple[LocalSnapshotStore, Snapshot], tmp_path: Path
) -> None:
    store, snapshot = workspace
    cache = tmp_path / "features"
    engine = KerasTrainingEngine(tmp_path / "models", EngineParameters(recipe=LITE0, feature_cache=cache, seed=3))

    first = engine.train(_job(store, snapshot, "catdog"), lambda progress: None)
    parent = RegisteredVersion("catdog", first.version, first.artifact_uri, {})
    second = engine.train(_job(store, snapshot, "catdog", warm=parent), lambda progress: None)

    train_images = len(snapshot.of_split("train"))
    assert first.parameters["features_computed"] == train_images and first.parameters["features_cached"] == 0
    assert second.warm_started and second.parameters["parent_version"] == 1
    assert second.parameters["features_computed"] == 0 and second.parameters["features_cached"] == train_images
    assert len(list(FeatureCache(cache).folder(LITE0).rglob("*.npy"))) == train_images
    # Pretrained features: right on the held-out photos, where the small CNN is at chance on so few.
    assert first.metrics["accuracy"] >= 0.85, first.metrics
    recorded = json.loads((first.path / "assets.extra" / "edgeloop.json").read_text())
    backbone = recorded["backbone"]
    assert backbone["name"] == "efficientnet-lite0" and backbone["input_size"] == 224 == recorded["image_size"]
    assert len(backbone["weights_sha256"]) == 64 and backbone["weights_package"].startswith("efficientnet-lite0")
    assert first.parameters["backbone"] == backbone  # what the registry records in the version's lineage


def test_a_warm_start_needs_the_same_recipe(workspace: tuple[LocalSnapshotStore, Snapshot], tmp_path: Path) -> None:
    store, snapshot = workspace
    small = KerasTrainingEngine(
        tmp_path / "models", EngineParameters(recipe=Recipe("small-cnn", 32), epochs=1, seed=3)
    ).train(_job(store, snapshot, "catdog"), lambda progress: None)
    parent = RegisteredVersion("catdog", small.version, small.artifact_uri, {})

    pretrained = KerasTrainingEngine(tmp_path / "models", EngineParameters(recipe=LITE0, seed=3)).train(
        _job(store, snapshot, "catdog", warm=parent), lambda progress: None
    )

    assert not pretrained.warm_started
    assert "training from scratch" in pretrained.parameters["warm_start_note"]
    assert "small-cnn" in pretrained.parameters["warm_start_note"]
    assert pretrained.metrics["baseline"]["version"] == small.version  # still measured against production


def test_a_shallow_edge_model_and_a_deep_cloud_model_come_from_the_same_labels(
    workspace: tuple[LocalSnapshotStore, Snapshot], tmp_path: Path
) -> None:
    store, snapshot = workspace
    settings = Settings(
        backbone="efficientnet-lite0",
        model_backbones="catdog-edge=small-cnn:32, catdog-cloud=efficientnet-lite2",
        epochs=2,
    )
    engine = KerasTrainingEngine(
        tmp_path / "models",
        EngineParameters(recipe=settings.default_recipe(), model_recipes=settings.model_recipes(), epochs=2, seed=3),
    )

    edge = engine.train(_job(store, snapshot, "catdog-edge"), lambda progress: None)
    cloud = engine.train(_job(store, snapshot, "catdog-cloud"), lambda progress: None)

    assert edge.parameters["backbone"]["name"] == "small-cnn" and edge.parameters["image_size"] == 32
    assert cloud.parameters["backbone"]["name"] == "efficientnet-lite2" and cloud.parameters["image_size"] == 260
    assert edge.metrics["evaluation_set_id"] == cloud.metrics["evaluation_set_id"]  # the same labels, judged alike
    assert {path.name for path in (tmp_path / "models").iterdir()} >= {"catdog-edge", "catdog-cloud"}


def test_model_backbones_are_checked_at_start() -> None:
    assert Settings(model_backbones="a=small-cnn:64,b=efficientnet-lite2").model_recipes() == {
        "a": Recipe("small-cnn", 64),
        "b": Recipe("efficientnet-lite2"),
    }
    for wrong in ("a", "a=", "a=small-cnn:big", "a=resnet50"):
        with pytest.raises(ValueError):
            Settings(model_backbones=wrong).model_recipes()


def test_black_frames_are_left_out_of_training(tmp_path: Path, catdog_train_dir: Path) -> None:
    data = catdog_subset(catdog_train_dir, tmp_path / "data", per_class=10)
    black_frames = sorted((catdog_train_dir.parent / "black-frames").glob("*.jpg"))[:4]
    for frame in black_frames:  # mislabelled night frames, as the shared set once had
        shutil.copy(frame, data / "cat" / f"night-{frame.name}")

    result = train_classifier(data, "catdog", tmp_path / "models", epochs=3, progress=False)

    recorded = json.loads((result.path / "assets.extra" / "edgeloop.json").read_text())
    left_out = recorded["training"]["left_out_poor_quality"]
    assert sorted(Path(path).name for path in left_out) == sorted(f"night-{frame.name}" for frame in black_frames)
    assert set(left_out.values()) == {"too_dark"}
    assert sum(recorded["metrics"]["per_class"][name]["train_samples"] for name in ("cat", "dog")) <= 20


@pytest.mark.slow
def test_the_export_answers_tf_servings_rest_and_grpc_requests(
    tmp_path: Path, catdog_train_dir: Path, catdog_captures_dir: Path
) -> None:
    from edgeloop_model_server.embedded import serve_in_thread
    from edgeloop_model_server.settings import Settings as ServerSettings
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    data = catdog_subset(catdog_train_dir, tmp_path / "data", per_class=16)
    train_classifier(data, "catdog", tmp_path / "models", epochs=20, progress=False)
    photos = sorted(catdog_captures_dir.glob("*.jpg"))
    truth = [photo.name.split(".")[0] for photo in photos]

    settings = ServerSettings(
        model_base_path=tmp_path / "models", model_name="catdog", http_port=free_port(), grpc_port=free_port()
    )
    with serve_in_thread(settings) as running:
        deadline = time.monotonic() + 120
        while (
            httpx.get(f"{running.rest_url}/v1/models/catdog").json().get("model_version_status", [{}])[0].get("state")
            != "AVAILABLE"
        ):
            assert time.monotonic() < deadline, "the model server did not load version 1"
            time.sleep(0.2)
        rest = httpx.post(
            f"{running.rest_url}/v1/models/catdog:predict",
            json={"instances": [{"b64": base64.b64encode(photo.read_bytes()).decode()} for photo in photos]},
            timeout=60,
        )
        with grpc.insecure_channel(running.grpc_target) as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "catdog"
            request.inputs["image_bytes"].CopyFrom(
                tf.make_tensor_proto([photo.read_bytes() for photo in photos], dtype=tf.string)
            )
            reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)

    assert rest.status_code == 200, rest.text
    predictions = rest.json()["predictions"]
    rest_labels = [row["classes"][int(np.argmax(row["scores"]))] for row in predictions]
    grpc_scores = tf.make_ndarray(reply.outputs["scores"])
    grpc_labels = [["cat", "dog"][int(index)] for index in np.argmax(grpc_scores, axis=1)]
    assert rest_labels == truth, (rest_labels, truth)  # the captures: photos kept out of train/
    assert grpc_labels == truth


def test_fine_tuning_trains_the_top_blocks_and_leaves_the_rest_and_the_shared_backbone_alone(
    tmp_path: Path, catdog_train_dir: Path
) -> None:
    import keras
    from edgeloop_trainer.backbones import get_backbone

    data = catdog_subset(catdog_train_dir, tmp_path / "data", per_class=8)
    shared = get_backbone("efficientnet-lite0").feature_extractor()
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in shared.layers if layer.get_weights()}

    result = train_classifier(
        data, "catdog", tmp_path / "models", fine_tune=1, image_size=96, epochs=4, batch_size=8, progress=False
    )

    recorded = json.loads((result.path / "assets.extra" / "edgeloop.json").read_text())
    assert recorded["backbone"]["fine_tuned_blocks"] == 1 and recorded["backbone"]["input_size"] == 96
    tuned = keras.models.load_model(result.path / "assets.extra" / "model.keras").get_layer("backbone")
    last_block = max(int(layer.name.split("_")[1]) for layer in tuned.layers if layer.name.startswith("blocks_"))

    def changed(name: str) -> bool:
        return any(
            not np.array_equal(a, b) for a, b in zip(tuned.get_layer(name).get_weights(), before[name], strict=True)
        )

    assert changed(f"blocks_{last_block}_depthwise_conv") and changed("conv_head")
    assert not changed(f"blocks_{last_block - 1}_depthwise_conv") and not changed("conv_stem")
    assert not changed(f"blocks_{last_block}_bn1")  # batch norm stays frozen
    for name, weights in before.items():  # the process's shared extractor is untouched
        assert all(np.array_equal(a, b) for a, b in zip(shared.get_layer(name).get_weights(), weights, strict=True))

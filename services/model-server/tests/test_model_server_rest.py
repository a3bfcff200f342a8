"""TF Serving's REST API, as its documentation shows it, against ``edgeloop model-server``."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.tf


def b64(path: Path) -> dict[str, str]:
    return {"b64": base64.b64encode(path.read_bytes()).decode("ascii")}


def test_model_status_lists_the_available_version(rest: httpx.Client, trained_model_name: str) -> None:
    response = rest.get(f"/v1/models/{trained_model_name}")

    assert response.status_code == 200
    assert response.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert rest.get(f"/v1/models/{trained_model_name}/versions/1").json() == response.json()


def test_metadata_describes_the_image_bytes_signature(rest: httpx.Client, trained_model_name: str) -> None:
    response = rest.get(f"/v1/models/{trained_model_name}/metadata")

    assert response.status_code == 200
    body = response.json()
    assert body["model_spec"] == {"name": trained_model_name, "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert signature["inputs"]["image_bytes"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert signature["outputs"]["scores"]["dtype"] == "DT_FLOAT"
    assert signature["outputs"]["classes"]["dtype"] == "DT_STRING"
    assert [dim["size"] for dim in signature["outputs"]["scores"]["tensor_shape"]["dim"]] == ["-1", "2"]


def test_predict_row_format_returns_scores_summing_to_one_and_the_class_names(
    rest: httpx.Client, trained_model_name: str, trained_model_base: Path, capture_images: list[Path]
) -> None:
    response = rest.post(
        f"/v1/models/{trained_model_name}:predict",
        json={"signature_name": "serving_default", "instances": [b64(capture_images[0]), b64(capture_images[1])]},
    )

    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    recorded = json.loads(
        (trained_model_base / trained_model_name / "1" / "assets.extra" / "edgeloop.json").read_text()
    )
    for prediction in predictions:
        assert prediction["classes"] == recorded["class_names"] == ["cat", "dog"]
        assert len(prediction["scores"]) == 2
        assert all(0.0 <= score <= 1.0 for score in prediction["scores"])
        assert sum(prediction["scores"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_columnar_format_and_named_row_instances_agree(
    rest: httpx.Client, trained_model_name: str, capture_images: list[Path]
) -> None:
    image = b64(capture_images[2])
    columnar = rest.post(f"/v1/models/{trained_model_name}:predict", json={"inputs": {"image_bytes": [image]}})
    named_rows = rest.post(f"/v1/models/{trained_model_name}:predict", json={"instances": [{"image_bytes": image}]})
    by_version = rest.post(f"/v1/models/{trained_model_name}/versions/1:predict", json={"inputs": [image]})

    assert columnar.status_code == named_rows.status_code == by_version.status_code == 200
    outputs = columnar.json()["outputs"]
    assert outputs["classes"] == [["cat", "dog"]]
    assert outputs["scores"] == [named_rows.json()["predictions"][0]["scores"]]
    assert by_version.json()["outputs"] == outputs


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/models/no-such-model:predict", {"instances": [{"b64": "aGVsbG8="}]}, 404),
        ("/v1/models/{model}/versions/99:predict", {"instances": [{"b64": "aGVsbG8="}]}, 404),
        ("/v1/models/{model}:predict", {"instances": [{"b64": "bm90IGFuIGltYWdl"}]}, 400),  # "not an image"
        ("/v1/models/{model}:predict", {"instances": [{"b64": "%%% not base64 %%%"}]}, 400),
        ("/v1/models/{model}:predict", {"examples": []}, 400),
        ("/v1/models/{model}:predict", {"instances": []}, 400),
        ("/v1/models/{model}:predict", {"instances": [{"b64": "aGVsbG8="}], "inputs": [{"b64": "aGVsbG8="}]}, 400),
        ("/v1/models/{model}:predict", {"signature_name": "nope", "instances": [{"b64": "aGVsbG8="}]}, 400),
        ("/v1/models/{model}:predict", {"instances": [{"wrong_input": {"b64": "aGVsbG8="}}]}, 400),
        ("/v1/models/{model}:predict", {"instances": [3.5]}, 400),
    ],
)
def test_predict_errors_have_tf_servings_shape_and_status(
    rest: httpx.Client, trained_model_name: str, path: str, body: dict[str, object], status: int
) -> None:
    response = rest.post(path.format(model=trained_model_name), json=body)

    assert response.status_code == status
    error = response.json()["error"]
    assert isinstance(error, str) and error


def test_malformed_json_is_a_400_with_an_error(rest: httpx.Client, trained_model_name: str) -> None:
    response = rest.post(
        f"/v1/models/{trained_model_name}:predict", content=b"{not json", headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert "error" in response.json()


def test_status_of_unknown_model_or_version_is_a_404(rest: httpx.Client, trained_model_name: str) -> None:
    for path in ("/v1/models/no-such-model", f"/v1/models/{trained_model_name}/versions/42"):
        response = rest.get(path)
        assert response.status_code == 404
        assert isinstance(response.json()["error"], str)


def test_health_readiness_and_metrics(rest: httpx.Client, trained_model_name: str) -> None:
    assert rest.get("/healthz").status_code == 200
    ready = rest.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {f"model {trained_model_name}": "ok"}
    rest.get(f"/v1/models/{trained_model_name}")

    metrics = rest.get("/metrics").text

    assert 'edgeloop_model_server_request_duration_seconds_count{api="rest",code="OK",method="status"}' in metrics
    assert f'edgeloop_model_server_available_versions{{model="{trained_model_name}"}} 1.0' in metrics

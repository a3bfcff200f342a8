"""The console over the real services (standalone: registry, ingest, drift, trainer, deployer; the real Mosquitto),
read and driven over HTTP as a browser without JavaScript would."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from console_testing import ADMIN_TOKEN, MODEL, ConsoleStack, photos, signed_in

pytestmark = [pytest.mark.mqtt, pytest.mark.tf]


@pytest.fixture
def site() -> str:
    return f"site-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def session(stack: ConsoleStack) -> Iterator[tuple[httpx.Client, str]]:
    client, csrf = signed_in(stack.console_url)
    yield client, csrf
    client.close()


def flash(page: httpx.Response) -> str:
    match = re.search(r'<p class="flash flash-(\w+)"[^>]*>(.*?)</p>', page.text, re.S)
    assert match, "no flash message on the page"
    return f"{match.group(1)}: {match.group(2).strip()}"


def test_every_page_needs_a_session_and_the_cookie_is_strict(stack: ConsoleStack) -> None:
    with httpx.Client(base_url=stack.console_url, timeout=10) as anonymous:
        for path in ("/", "/models", "/pictures", "/labeling", "/devices", "/drift"):
            response = anonymous.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/signin?next=")
        assert anonymous.get("/pictures/whatever/image").status_code == 401
        assert anonymous.post("/models/m/promote", data={"version": 1, "reason": "x"}).status_code == 303
        assert anonymous.get("/healthz").status_code == 200

        wrong = anonymous.post("/signin", data={"token": "not-the-token", "next": "/"})
        assert wrong.status_code == 401
        assert "does not sign in" in wrong.text
        assert "edgeloop_console_session" not in wrong.headers.get("set-cookie", "")

        right = anonymous.post("/signin", data={"token": ADMIN_TOKEN, "next": "//elsewhere.example/"})
        assert right.status_code == 303
        assert right.headers["location"] == "/"  # never sent to another site after sign-in
        cookie = right.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page = anonymous.get("/")
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]


def test_posts_need_the_session_csrf_token_and_this_origin(
    stack: ConsoleStack, session: tuple[httpx.Client, str]
) -> None:
    client, csrf = session
    form = {"version": "2", "reason": "csrf test"}
    assert client.post(f"/models/{MODEL}/promote", data=form).status_code == 403
    assert client.post(f"/models/{MODEL}/promote", data={**form, "csrf_token": "forged"}).status_code == 403
    other_origin = {"origin": "http://evil.example"}
    refused = client.post(f"/models/{MODEL}/promote", data={**form, "csrf_token": csrf}, headers=other_origin)
    assert refused.status_code == 403
    assert stack.production() == 1


def test_models_show_the_accuracy_table_and_promotion_refusals(
    stack: ConsoleStack, session: tuple[httpx.Client, str]
) -> None:
    client, csrf = session
    page = client.get("/models")
    assert page.status_code == 200
    rows = {n: re.search(rf'<tr id="version-{n}".*?</tr>', page.text, re.S).group(0) for n in (1, 2, 3)}  # type: ignore[union-attr]
    assert "80.0%" in rows[1] and "90.0%" in rows[2] and "60.0%" in rows[3]
    assert "42 / 10" in rows[2]  # cat images: train / evaluation
    assert "25.0 s" in rows[2] and "efficientnet-lite0" in rows[2]
    assert "production" in rows[1] and "Promote" not in rows[1]
    confirm = client.get(f"/models/{MODEL}/confirm", params={"action": "promote", "version": 3})
    assert 'id="confirm"' in confirm.text and "promotion gate" in confirm.text

    refused = client.post(
        f"/models/{MODEL}/promote", data={"version": "3", "reason": "worse", "csrf_token": csrf}, follow_redirects=True
    )
    assert flash(refused).startswith("refused: The registry refused to promote version 3")
    assert stack.production() == 1

    promoted = client.post(
        f"/models/{MODEL}/promote", data={"version": "2", "reason": "better", "csrf_token": csrf}, follow_redirects=True
    )
    assert flash(promoted).startswith("ok: Version 2 is production now (was 1)")
    assert stack.production() == 2
    rolled = client.post(
        f"/models/{MODEL}/rollback", data={"reason": "undo", "csrf_token": csrf}, follow_redirects=True
    )
    assert flash(rolled).startswith("ok: Production rolled back to version 1")
    assert stack.production() == 1

    unknown = client.post(
        f"/models/{MODEL}/deploy",
        data={"version": "1", "node_group": "nowhere", "csrf_token": csrf},
        follow_redirects=True,
    )
    assert flash(unknown).startswith("error: Deploy refused: deployer: HTTP 404")


def test_pictures_are_paged_filtered_and_proxied(
    stack: ConsoleStack, session: tuple[httpx.Client, str], site: str, catdog_train_dir: Path
) -> None:
    client, _ = session
    uploaded = [stack.upload(photo, site=site, device="cam-p") for photo in photos(catdog_train_dir, 3)]
    stack.wait_for_queue(site, 3)

    first = client.get("/pictures", params={"site": site, "limit": 2})
    assert first.text.count('class="picture"') == 2
    assert uploaded[0]["sample_id"] in first.text and "v1" in first.text, first.text[-3000:]
    next_url = re.search(r'href="([^"]+)" id="next-page"', first.text).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    second = client.get(next_url)
    assert second.text.count('class="picture"') == 1
    assert uploaded[2]["sample_id"] in second.text and 'id="next-page"' not in second.text
    assert client.get("/pictures", params={"site": site, "device": "other"}).text.count('class="picture"') == 0
    assert client.get("/pictures", params={"site": site, "hard": "no"}).text.count('class="picture"') == 0
    by_cloud = client.get("/pictures", params={"site": site, "served": "cloud"})  # the gateway is the cloud
    assert by_cloud.text.count('class="picture"') == 3 and by_cloud.text.count('data-served-by="cloud"') == 3
    assert "in the cloud" in by_cloud.text and '<option value="cloud" selected>' in by_cloud.text
    assert client.get("/pictures", params={"site": site, "served": "edge"}).text.count('class="picture"') == 0

    image = client.get(f"/pictures/{uploaded[0]['sample_id']}/image")
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/jpeg"
    assert image.content == photos(catdog_train_dir, 1)[0].read_bytes()
    assert client.get("/pictures/no-such-sample/image").status_code == 404


def test_labeling_one_at_a_time_with_skip_and_undo(
    stack: ConsoleStack, session: tuple[httpx.Client, str], site: str, catdog_train_dir: Path
) -> None:
    client, csrf = session
    uploaded = [stack.upload(photo, site=site, device="cam-l") for photo in photos(catdog_train_dir, 3)]
    stack.wait_for_queue(site, 3)

    page = client.get("/labeling", params={"site": site})
    assert '<strong id="waiting-count">3</strong>' in page.text
    assert f'data-sample="{uploaded[0]["sample_id"]}"' in page.text
    assert 'data-key="1"' in page.text and "<kbd>1</kbd> cat" in page.text and "<kbd>2</kbd> dog" in page.text

    labeled = client.post(
        "/labeling/label",
        data={"sample_id": uploaded[0]["sample_id"], "label": "dog", "site": site, "csrf_token": csrf},
        follow_redirects=True,
    )
    assert '<strong id="waiting-count">2</strong>' in labeled.text
    assert f'data-sample="{uploaded[1]["sample_id"]}"' in labeled.text
    assert len(stack.queue(site)) == 2

    skip_url = re.search(r'href="([^"]+)" data-key="s"', labeled.text).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    skipped = client.get(skip_url)
    assert f'data-sample="{uploaded[2]["sample_id"]}"' in skipped.text

    undo_url = re.search(r'href="([^"]+)" data-key="u"', skipped.text).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    undo = client.get(undo_url)
    assert f'data-sample="{uploaded[0]["sample_id"]}"' in undo.text and "Labeled <strong>dog</strong>" in undo.text
    client.post("/labeling/label", data={"sample_id": uploaded[0]["sample_id"], "label": "cat", "csrf_token": csrf})
    with httpx.Client(base_url=stack.urls["ingest"]) as ingest:
        assert ingest.get(f"/v1/samples/{uploaded[0]['sample_id']}").json()["label"] == "cat"


def test_devices_take_picture_and_the_other_pages(
    stack: ConsoleStack, session: tuple[httpx.Client, str], site: str, catdog_train_dir: Path
) -> None:
    client, csrf = session
    stack.upload(photos(catdog_train_dir, 1)[0], site=site, device="cam-d")
    stack.wait_for_queue(site, 1)

    devices = client.get("/devices")
    assert f'id="device-{site}-cam-d"' in devices.text and "Take picture" in devices.text

    plain = client.post(f"/devices/{site}/cam-d/capture", data={"csrf_token": csrf}, follow_redirects=True)
    assert flash(plain).startswith(f"ok: Asked {site}/cam-d for a picture")
    fragment = client.post(f"/devices/{site}/cam-d/capture", headers={"hx-request": "true", "x-csrf-token": csrf})
    assert fragment.status_code == 200
    poll = re.search(r'hx-get="([^"]+)"', fragment.text).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    assert poll.startswith(f"/devices/{site}/cam-d/latest?since=")
    assert "waiting" in client.get(poll).text  # no device answers at this site

    overview = client.get("/")
    assert overview.status_code == 200 and "site-a" in overview.text
    start = overview.text.index(f">{site}</h2>")
    section = overview.text[start : overview.text.index("</section>", start)]
    assert section.count('role="img"') == 1  # an SVG with a title and a description; no label yet: no accuracy chart
    assert '<p class="chart-empty" id="chart-2-' in section and "labels: no labels yet" in section
    assert f"Pictures received at {site}</title>" in section and '<rect class="bar"' in section
    assert re.search(r"1 picture in 2[45] buckets of 1 hour; the most, 1, at \d\d:00", section), section[:2000]
    assert "Figures as a table" in section and '<th scope="col">Accuracy</th>' in section
    week = client.get("/", params={"window": "7d"})
    assert "buckets of 6 hours" in week.text and 'href="/?window=7d" aria-current="true"' in week.text
    drift = client.get("/drift")
    assert drift.status_code == 200 and "Training runs" in drift.text


def test_the_overview_shows_a_sites_dead_letters_with_their_reasons(
    stack: ConsoleStack, session: tuple[httpx.Client, str], site: str, mqtt_broker: tuple[str, int]
) -> None:
    """A camera at the site publishes what is no picture: ingest dead-letters it, and the overview says why."""
    import asyncio

    from edgeloop_common.mqtt_asyncio import AsyncMqttClient

    async def publish_garbage() -> None:
        camera = AsyncMqttClient(*mqtt_broker)
        await camera.connect()
        try:
            await camera.publish(f"dt/edgeloop/{site}/cam-bad/image", b"GIF89a not a picture", qos=1)
        finally:
            await camera.close()

    asyncio.run(publish_garbage())
    client, _ = session
    deadline = time.monotonic() + 20
    while True:
        overview = client.get("/")
        if f">{site}</h2>" in overview.text and "cam-bad" in overview.text:
            break
        assert time.monotonic() < deadline, "the dead letter did not reach the overview"
        time.sleep(0.2)
    start = overview.text.index(f">{site}</h2>")
    section = overview.text[start : overview.text.index("</section>", start)]
    assert "<h3>Dead letters</h3>" in section and "<td>ingest</td><td>cam-bad</td>" in section
    assert re.search(r'id="dead-letter-count">\d+ dead letters? kept', overview.text)


def test_a_training_runs_log_is_on_the_drift_and_training_page(
    stack: ConsoleStack, session: tuple[httpx.Client, str]
) -> None:
    client, _ = session
    with httpx.Client(base_url=stack.urls["trainer"], timeout=10) as trainer:
        asked = trainer.post("/v1/trainings", json={"model_name": MODEL, "requested_by": "console test"})
        assert asked.status_code in (200, 202), asked.text
        run_id = asked.json()["run_id"]
        deadline = time.monotonic() + 60
        while (run := trainer.get(f"/v1/trainings/{run_id}").json())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, run
            time.sleep(0.2)
    page = client.get("/drift").text
    assert '<details class="run-log"><summary>Log (' in page
    assert f"{run['progress']['log'][0]}" in page  # the first line: the snapshot stage, whatever came next

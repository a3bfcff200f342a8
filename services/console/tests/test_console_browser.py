"""The console in headless Chromium (Selenium), over the real services in standalone mode and the real Mosquitto:
sign in, read the accuracy table, label hard examples with the keyboard, take a picture with a simulated device
and see its answer appear without a reload, promote a version (and see a refusal), roll it back.

One browser session for the module. Screenshots of every page go to ``.edgeloop/console-screenshots/``.

Accessibility: axe-core (vendored from npm in ``vendor/``, see its README) is injected into every page and run; no
violation of impact "serious" or "critical" may remain.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_testing import ADMIN_TOKEN, ConsoleStack, photos
from edgeloop.device import DeviceSimulator, SimulatorConfig
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = [pytest.mark.browser, pytest.mark.mqtt, pytest.mark.tf]

AXE = Path(__file__).parent / "vendor" / "axe-4.14.1.min.js"
AXE_BLOCKING = {"serious", "critical"}
AXE_RUN = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ["violations"]})
  .then((results) => done(results.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ") + ": " + n.failureSummary)}))))
  .catch((error) => done([{id: "axe-failed", impact: "critical", help: String(error), nodes: []}]));
"""
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[3] / ".edgeloop" / "console-screenshots"
# What this closed network needs: no GPU, no sandbox (containers), nothing fetched in the background.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for program in (CHROMIUM, CHROMEDRIVER):
        if not program.exists():
            pytest.fail(
                f"{program} is missing: `edgeloop infra up` installs chromium and chromium-driver (as root)",
                pytrace=False,
            )
    profile = tempfile.mkdtemp(prefix="edgeloop-console-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shoot(driver: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def wait(driver: WebDriver, timeout_s: float = 15) -> WebDriverWait[WebDriver]:
    # a condition may read an element of the page being replaced (a form posted, the next page loading): try again
    return WebDriverWait(
        driver,
        timeout_s,
        poll_frequency=0.1,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )


def flash_text(driver: WebDriver) -> str:
    return str(wait(driver).until(expected_conditions.visibility_of_element_located((By.ID, "flash"))).text)


def press(driver: WebDriver, key: str) -> None:
    driver.find_element(By.TAG_NAME, "body").send_keys(key)


def axe_violations(driver: WebDriver) -> list[dict[str, Any]]:
    """The page's accessibility violations of impact serious or critical, by axe-core run in the page."""
    driver.execute_script(AXE.read_text(encoding="utf-8"))
    violations: list[dict[str, Any]] = driver.execute_async_script(AXE_RUN)
    return [v for v in violations if v["impact"] in AXE_BLOCKING]


def waiting_count(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "waiting-count").text)


def test_the_console_in_a_browser(stack: ConsoleStack, browser: WebDriver, catdog_dir: Path) -> None:
    url = stack.console_url
    site = f"lab-{uuid.uuid4().hex[:6]}"
    for photo in photos(catdog_dir / "train", 4):
        stack.upload(photo, site=site, device="cam-l")
    stack.wait_for_queue(site, 4)

    # Sign in: a page asked for before sign-in is where the sign-in leads.
    browser.get(f"{url}/models")
    assert "/signin" in browser.current_url
    token = browser.find_element(By.ID, "token")
    assert browser.find_element(By.CSS_SELECTOR, "label[for=token]").text == "API token"
    token.send_keys(ADMIN_TOKEN)
    shoot(browser, "01-signin")
    browser.find_element(By.ID, "signin").click()
    wait(browser).until(expected_conditions.presence_of_element_located((By.ID, "versions")))
    assert browser.current_url.endswith("/models")

    # The accuracy table: every version with its figures.
    rows = {row.get_attribute("id"): row.text for row in browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")}
    assert set(rows) == {"version-1", "version-2", "version-3"}
    assert "80.0%" in rows["version-1"] and "production" in rows["version-1"]
    assert "90.0%" in rows["version-2"] and "efficientnet-lite0" in rows["version-2"] and "25.0 s" in rows["version-2"]
    shoot(browser, "02-models")

    # Labeling: three hard examples with the keys 1, 2, 1; the queue shrinks each time.
    browser.get(f"{url}/labeling?site={site}")
    assert waiting_count(browser) == "4"
    shoot(browser, "03-labeling")
    for key, expected in (("1", "3"), ("2", "2"), ("1", "1")):
        press(browser, key)
        wait(browser).until(lambda driver, expected=expected: waiting_count(driver) == expected)
    assert len(stack.queue(site)) == 1
    with httpx.Client(base_url=stack.urls["ingest"]) as ingest:
        labels = ingest.get("/v1/samples", params={"site_id": site, "labeled": "true"}).json()["samples"]
    assert sorted(sample["label"] for sample in labels) == ["cat", "cat", "dog"]
    assert "Labeled cat." in flash_text(browser)
    shoot(browser, "04-labeling-after-three")
    browser.set_window_size(390, 844)  # a phone
    shoot(browser, "05-labeling-phone")
    browser.set_window_size(1280, 1000)

    # Take picture: a simulated camera that sends only when asked (rate 0).
    camera_site = f"cam-{uuid.uuid4().hex[:6]}"
    host, port = stack.mqtt_broker
    captures = catdog_dir / "captures"
    config = SimulatorConfig(captures, camera_site, "cam-1", rate=0, loop=True, mqtt_host=host, mqtt_port=port)
    camera = DeviceSimulator(config)
    running = asyncio.run_coroutine_threadsafe(camera.run(), stack.loop)
    try:
        # The camera's first picture, asked over ingest's API until the camera is subscribed, lists it.
        with httpx.Client(base_url=stack.urls["ingest"], timeout=10) as ingest:
            deadline = time.monotonic() + 15
            while camera.summary.captures == 0 and time.monotonic() < deadline:
                ingest.post(f"/v1/devices/{camera_site}/cam-1/capture")
                time.sleep(0.5)
            assert camera.summary.captures >= 1
            while time.monotonic() < deadline:
                if ingest.get("/v1/devices", params={"site_id": camera_site}).json():
                    break
                time.sleep(0.1)
        pictures_before = camera.summary.sent

        browser.get(f"{url}/devices")
        browser.execute_script("window.__notReloaded = true;")
        shoot(browser, "06-devices")
        button = browser.find_element(By.CSS_SELECTOR, f'button[aria-label="Take picture with cam-1 at {camera_site}"]')
        button.click()
        result = wait(browser, 30).until(
            lambda driver: driver.find_element(By.ID, f"capture-{camera_site}-cam-1").find_elements(
                By.CLASS_NAME, "capture-result"
            )
        )[0]
        assert browser.execute_script("return window.__notReloaded === true;"), "the page was reloaded"
        assert camera.summary.sent == pictures_before + 1
        assert "v1" in result.text and ("cat" in result.text or "dog" in result.text)
        image = result.find_element(By.TAG_NAME, "img")
        wait(browser).until(lambda driver: driver.execute_script("return arguments[0].naturalWidth > 0;", image))
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", result)
        shoot(browser, "07-devices-picture-taken")
    finally:
        stack.loop.call_soon_threadsafe(camera.stop)
        running.result(timeout=15)

    # Promote: the gate refuses version 3, accepts version 2; then roll back to 1.
    browser.get(f"{url}/models")
    browser.find_element(By.CSS_SELECTOR, 'a[aria-label="Promote version 3"]').click()
    shoot(browser, "08-confirm-promotion")
    browser.find_element(By.ID, "confirm").click()
    refusal = flash_text(browser)
    assert refusal.startswith("The registry refused to promote version 3"), refusal
    assert stack.production() == 1
    shoot(browser, "09-promotion-refused")

    browser.find_element(By.CSS_SELECTOR, 'a[aria-label="Promote version 2"]').click()
    browser.find_element(By.ID, "confirm").click()
    assert flash_text(browser).startswith("Version 2 is production now (was 1)")
    assert stack.production() == 2
    assert "production" in browser.find_element(By.ID, "version-2").text
    shoot(browser, "10-promoted")

    browser.find_element(By.ID, "rollback").click()
    browser.find_element(By.ID, "confirm").click()
    assert flash_text(browser).startswith("Production rolled back to version 1")
    assert stack.production() == 1
    shoot(browser, "11-rolled-back")

    # The other pages, for the record.
    for path, name in (("/", "12-overview"), (f"/pictures?site={site}", "13-pictures"), ("/drift", "14-drift")):
        browser.get(url + path)
        wait(browser).until(expected_conditions.presence_of_element_located((By.TAG_NAME, "h1")))
        assert "/signin" not in browser.current_url
        shoot(browser, name)


def test_every_page_has_no_serious_accessibility_violation(
    stack: ConsoleStack, browser: WebDriver, catdog_dir: Path
) -> None:
    url = stack.console_url
    site = f"axe-{uuid.uuid4().hex[:6]}"
    for photo in photos(catdog_dir / "train", 2):
        stack.upload(photo, site=site, device="cam-a")
    stack.wait_for_queue(site, 2)
    browser.set_script_timeout(60)

    found: dict[str, list[dict[str, Any]]] = {}
    browser.delete_all_cookies()
    browser.get(f"{url}/signin")
    found["/signin"] = axe_violations(browser)
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.ID, "signin").click()
    wait(browser).until(expected_conditions.presence_of_element_located((By.TAG_NAME, "nav")))
    pages = (
        "/",
        "/?window=7d",
        "/models",
        "/models/catdog-console/confirm?action=promote&version=3",
        "/models/catdog-console/confirm?action=deploy&version=2",
        f"/pictures?site={site}",
        f"/labeling?site={site}",
        "/labeling?site=nowhere",
        "/devices",
        "/drift",
    )
    for path in pages:
        browser.get(url + path)
        wait(browser).until(expected_conditions.presence_of_element_located((By.TAG_NAME, "h1")))
        assert "/signin" not in browser.current_url
        found[path] = axe_violations(browser)
    # with a flash message on the page too
    browser.get(f"{url}/labeling?site={site}")
    press(browser, "1")
    flash_text(browser)
    found["/labeling (after a label)"] = axe_violations(browser)

    problems = {path: violations for path, violations in found.items() if violations}
    assert not problems, "\n".join(
        f"{path}: {v['impact']} {v['id']} ({v['help']}): {'; '.join(v['nodes'])}"
        for path, violations in problems.items()
        for v in violations
    )

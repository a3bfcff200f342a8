"""``edgeloop demo``: EdgeLoop in standalone mode, on a machine with nothing but Python.

One process runs what the distributed mode spreads over many: the lite model
server, ingest and the inference gateway around one in-process event bus,
SQLite and local folders under ``.edgeloop/demo/``, and an MQTT broker (the
local Mosquitto if installed, else an embedded one). A simulated camera then
publishes photos over MQTT and prints each classification as it comes back,
with where it was served (``served by cloud``) and the version.

Then an edge site (``--edge-site``, on by default; ``edgeloop.demo_edge``) runs
beside the cloud services: its own broker, its node group's model server and
the edge agent; its camera's answers say ``served by edge`` (or ``cloud`` for a
hard example the gateway answered within the budget). ``--offline`` cuts the
cloud off from the site for ``--offline-s`` seconds: the edge keeps answering,
the agent's uplink backlog grows, and drains to 0 once the cloud is back.

The second act (``--learning-loop``, on by default) plays the whole learning
loop the same way, with the registry, trainer, drift service and deployer
added (``edgeloop.demo_loop``). The service code is the same as in
distributed mode; only the adapters differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import typer
from edgeloop_common.service_runner import freeze_what_is_loaded
from edgeloop_common.topics import ID_PATTERN

from edgeloop.demo_edge import DEFAULT_EDGE_SITE, EdgeAct, EdgeActOutcome, run_edge_act
from edgeloop.demo_loop import LoopScenario, console_sign_in
from edgeloop.device import DeviceResult
from edgeloop.drifts import DEFAULT_DRIFT, DRIFT_HELP, parse_drift
from edgeloop.local_mqtt import LocalBroker, start_local_broker
from edgeloop.paths import repo_root, state_dir
from edgeloop.system import CONSOLE, DOCUMENTED_PORTS, System, SystemConfig

HELP = (
    "Run EdgeLoop standalone: train a first model if there is none, start the model server, ingest and the "
    "inference gateway in one process (in-process bus, SQLite, local folders, local or embedded MQTT broker), "
    "and let a simulated camera send photos; each result prints as it arrives, with where it was served and the "
    "version. Then an edge site beside them (--no-edge-site skips it): its own broker, its node group's model "
    "server and the edge agent answer a camera at the site (--offline: the cloud is cut off from the site for a "
    "while; the edge keeps answering and its uplink backlog drains when the cloud is back). Then the learning loop on "
    "--train-data: the camera's pictures change (sensor noise by default; --drift, --drifted-images), drift is "
    "detected, hard examples are labeled, the model is retrained, promoted if better, rolled out and serves "
    "(--no-learning-loop skips it). --telemetry plays the sensor demo instead: machines at several sites publish "
    "readings, the failure model alerts, one site changes, drift is detected, the model is retrained by federated "
    "learning across the sites, promoted and rolled out. Ctrl-C stops everything."
)

DEFAULT_MODEL = "edgeloop-classifier"
log = logging.getLogger("edgeloop.demo")


def _shared_dataset(*parts: str) -> Path | None:
    path = repo_root().parent.joinpath("shared", "datasets", "catdog", *parts)
    return path if path.is_dir() else None


@dataclass(frozen=True)
class DemoOptions:
    images: Path
    train_data: Path | None
    model: str
    count: int | None
    rate: float
    loop: bool
    backbone: str
    epochs: int | None
    image_size: int | None
    broker: str
    retrain: bool
    keep_running: bool
    site: str
    device: str
    learning_loop: bool
    loop_image_size: int | None
    loop_epochs: int | None
    drift: str
    drifted_images: Path | None
    edge_site: str | None = DEFAULT_EDGE_SITE  # None: no edge site
    console_token: str | None = None  # None: no console
    offline_s: float | None = None  # the edge site's offline moment; None: none


def demo(
    images: Path = typer.Option(
        None, help="Folder of JPEG/PNG photos the simulated camera sends. Default: ../shared/datasets/catdog/captures."
    ),
    train_data: Path = typer.Option(
        None,
        help="Folder of class subfolders to train the first model from. Default: ../shared/datasets/catdog/train.",
    ),
    model: str = typer.Option(DEFAULT_MODEL, help="Model name."),
    count: int = typer.Option(None, help="Images to send (default: each image in --images once)."),
    rate: float = typer.Option(2.0, help="Images per second the camera sends."),
    loop: bool = typer.Option(False, help="Cycle through the images until Ctrl-C."),
    backbone: str = typer.Option(
        "efficientnet-lite0",
        help="What the models are built on: efficientnet-lite0 (pretrained, the default), efficientnet-lite2 or "
        "small-cnn (from scratch, tiny; at chance on photos it never saw).",
    ),
    epochs: int = typer.Option(None, help="Epochs for the first model (default: the backbone's)."),
    image_size: int = typer.Option(None, help="Input size of the first model, in pixels (default: the backbone's)."),
    broker: str = typer.Option("auto", help="MQTT broker: auto (Mosquitto if installed), mosquitto, embedded."),
    retrain: bool = typer.Option(False, help="Train a new model version even if one exists."),
    keep_running: bool = typer.Option(
        False, help="Keep the services up after the camera is done (try the HTTP APIs), until Ctrl-C."
    ),
    site: str = typer.Option("site-a", help="Site id of the simulated camera."),
    device: str = typer.Option("cam-1", help="Device id of the simulated camera."),
    state: Path = typer.Option(
        None, help="Folder for the demo's models, blobs and databases. Default: .edgeloop/demo."
    ),
    learning_loop: bool = typer.Option(
        True,
        "--learning-loop/--no-learning-loop",
        help="After the captures, play the learning loop in standalone mode on --train-data: a change in the "
        "camera's pictures, drift, labels, retraining, promotion, rollout, and the new version answering (about a "
        "minute on 2 cores).",
    ),
    loop_image_size: int = typer.Option(
        None, help="Input size of the learning loop's model, in pixels (default: the backbone's)."
    ),
    loop_epochs: int = typer.Option(
        None, help="Epochs of the learning loop's first version (default: the backbone's)."
    ),
    drift: str = typer.Option(
        None,
        help=f"The learning loop's change: {DRIFT_HELP} (default strengths); what STRENGTH means: "
        f"docs/closed-loop.md. Default: {DEFAULT_DRIFT}.",
    ),
    drifted_images: Path = typer.Option(
        None,
        help="Instead of --drift: a folder of class subfolders (classes of --train-data) of photos already under a "
        "new condition of your own; the camera sends them after the change, as they are.",
    ),
    edge_site: bool = typer.Option(
        True,
        "--edge-site/--no-edge-site",
        help="After the cloud's camera: an edge site beside the cloud services (its own broker, its node group's "
        "model server, the edge agent) and a camera there; each answer says served by edge or cloud.",
    ),
    edge_site_id: str = typer.Option(DEFAULT_EDGE_SITE, help="Site id of the edge site (its node group's name)."),
    offline: bool = typer.Option(
        False,
        "--offline",
        help="At the edge site: cut the cloud off for --offline-s seconds; the edge keeps answering, the uplink "
        "backlog grows, then drains when the cloud is back.",
    ),
    offline_s: float = typer.Option(10.0, min=0.5, help="How long --offline cuts the cloud off, in seconds."),
    console: bool = typer.Option(
        True,
        "--console/--no-console",
        help="Serve the web console (port 8080) over the demo's services; sign in with EDGELOOP_CONSOLE_ADMIN_TOKEN "
        "if set, else with the token the demo prints. With --keep-running it stays up.",
    ),
    telemetry: bool = typer.Option(
        False,
        "--telemetry",
        help='Instead of the pictures: the sensor demo (docs/telemetry.md, "The demo"): machines at --sites sites '
        "publish readings, the failure model alerts, one site changes (--sensor-change), drift is detected there, the "
        "model is retrained by federated learning across the sites (--rounds), promoted and rolled out (minutes).",
    ),
    sites: int = typer.Option(
        3,
        min=2,
        max=8,
        help="--telemetry: simulated sites (profiles temperate, hot, cold, ...), a client process each.",
    ),
    rounds: int = typer.Option(2, min=1, max=50, help="--telemetry: rounds of the federated retraining."),
    sensor_change: str = typer.Option(
        "new-machine-type",
        help="--telemetry: what changes at the second site: new-machine-type, or recalibrated-temperature (drift "
        "too, but it hardly hurts the first version: the gate may refuse the retrained one, and the demo ends there).",
    ),
) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TensorFlow's C++ start-up chatter (no GPU here, dataset buffer notes) is noise in a demo.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if telemetry:  # edgeloop.demo_telemetry: the sensors, drift and federated retraining instead of the pictures
        from edgeloop.demo_telemetry import TelemetryScenario, run_command

        try:
            scenario = TelemetryScenario(sites=sites, rounds=rounds, change=sensor_change)
        except ValueError as exc:
            _fail(str(exc))
        home = (state or state_dir() / "demo").resolve() / "telemetry"
        run_command(scenario, home, broker=broker, keep_running=keep_running)
        return
    images = (
        images
        or _shared_dataset("captures")
        or _fail("no photos to send: pass --images DIR (a folder of JPEG/PNG files)")
    )
    if not images.is_dir():
        _fail(f"--images {images} is not a folder")
    if drift is not None and drifted_images is not None:
        _fail("give --drift or --drifted-images, not both")
    try:
        parse_drift(drift or DEFAULT_DRIFT)
    except ValueError as exc:
        _fail(f"--drift: {exc}")
    if drifted_images is not None and not drifted_images.is_dir():
        _fail(f"--drifted-images {drifted_images} is not a folder")
    if offline and not edge_site:
        _fail("--offline cuts the cloud off from the edge site: it needs --edge-site")
    if edge_site and edge_site_id == site:
        _fail(f"the edge site {edge_site_id!r} must differ from --site (the cloud's camera)")
    if edge_site and not re.fullmatch(ID_PATTERN, edge_site_id):
        _fail(f"--edge-site-id {edge_site_id!r} is not a site id (letters, digits, '_', '.', '-')")
    options = DemoOptions(
        images=images,
        train_data=train_data or _shared_dataset("train"),
        model=model,
        count=count,
        rate=rate,
        loop=loop,
        backbone=backbone,
        epochs=epochs,
        image_size=image_size,
        broker=broker,
        retrain=retrain,
        keep_running=keep_running,
        site=site,
        device=device,
        learning_loop=learning_loop,
        loop_image_size=loop_image_size,
        loop_epochs=loop_epochs,
        drift=drift or DEFAULT_DRIFT,
        drifted_images=drifted_images,
        edge_site=edge_site_id if edge_site else None,
        offline_s=offline_s if offline else None,
        console_token=_console_token() if console else None,
    )
    if options.learning_loop and options.train_data is not None and options.train_data.is_dir():
        try:  # the loop's photos must do before anything starts, not after the first act
            _loop_scenario(options).fitted_to(options.train_data)
        except ValueError as exc:
            _fail(f"the learning loop: {exc}")
    home = (state or state_dir() / "demo").resolve()
    model_base = home / "models"
    _ensure_model(options, model_base)
    try:
        asyncio.run(_run(options, home, model_base))
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        typer.echo("stopped")


def _console_token() -> str:
    """The console's sign-in token: the operator's (EDGELOOP_CONSOLE_ADMIN_TOKEN) or one made for this run."""
    given = os.environ.get("EDGELOOP_CONSOLE_ADMIN_TOKEN", "")
    return given if len(given) >= 12 else secrets.token_urlsafe(18)


def _fail(message: str) -> Any:
    typer.secho(f"edgeloop demo: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _ensure_model(options: DemoOptions, model_base: Path) -> None:
    """Train a first version unless one exists (or --retrain)."""
    from edgeloop_trainer.export import existing_versions, read_metadata
    from edgeloop_trainer.recipe import FEATURE_CACHE_DIR, recipe_of

    versions = existing_versions(model_base / options.model)
    if versions and not options.retrain:
        built_on = recipe_of(read_metadata(model_base / options.model / str(max(versions))))["name"]
        if built_on == options.backbone:
            typer.echo(f"model: {options.model} version {max(versions)} ({built_on}) in {model_base / options.model}")
            return
        typer.echo(f"model: version {max(versions)} is built on {built_on}, not {options.backbone}: a new version")
    if options.train_data is None or not options.train_data.is_dir():
        _fail("no model yet and no training data: pass --train-data DIR (one subfolder of photos per class)")
    typer.echo(f"model: training {options.model} on {options.backbone} from {options.train_data} ...")
    from edgeloop_trainer.training import train_classifier

    assert options.train_data is not None
    result = train_classifier(
        options.train_data,
        options.model,
        model_base,
        backbone=options.backbone,
        epochs=options.epochs,
        image_size=options.image_size,
        progress=True,
        feature_cache=model_base / FEATURE_CACHE_DIR,
    )
    accuracy = result.metrics.get("accuracy")
    figure = f", evaluation accuracy {accuracy:.3f}" if isinstance(accuracy, float) else ""
    typer.echo(f"model: {options.model} version {result.version} exported to {result.path}{figure}")


async def _run(options: DemoOptions, home: Path, model_base: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    broker: LocalBroker = await start_local_broker(1883, prefer=options.broker)
    typer.echo(f"mqtt:  {broker.kind} broker on {broker.host}:{broker.port}")
    try:
        keep_act_one = options.keep_running and not options.learning_loop
        missing = await _classify_captures(options, home, model_base, broker, stop, keep_running=keep_act_one)
        if options.learning_loop and not stop.is_set():
            await _learning_loop(options, home, broker, stop)
        if missing:
            raise typer.Exit(1)
    finally:
        await broker.stop()


def _loop_scenario(options: DemoOptions) -> LoopScenario:
    return LoopScenario(
        model_name=options.model,
        site=options.site,
        device=options.device,
        backbone=options.backbone,
        image_size=options.loop_image_size,
        epochs=options.loop_epochs,
        drift=options.drift,
        drifted_images=options.drifted_images,
    )


async def _learning_loop(options: DemoOptions, home: Path, broker: LocalBroker, stop: asyncio.Event) -> None:
    """Act two: the loop in standalone mode (edgeloop.demo_loop)."""
    from edgeloop.demo_loop import run_learning_loop

    if options.train_data is None or not options.train_data.is_dir():
        typer.echo("loop:  skipped: it needs photos in class folders (--train-data DIR)")
        return
    scenario = _loop_scenario(options)
    drift = scenario.parsed_drift()
    change = drift.describe() if drift else f"photos of {options.drifted_images}"
    typer.echo("")
    typer.echo(f"--- the learning loop, standalone: at {options.site}, {change} ---")
    try:
        outcome = await run_learning_loop(
            scenario,
            options.train_data,
            home / "loop",
            broker,
            stop,
            typer.echo,
            keep_running=options.keep_running,
            console_token=options.console_token,
        )
    except (TimeoutError, RuntimeError, ValueError, httpx.HTTPError) as exc:
        # A step that did not happen (a service's log above says why): say which, without a stack trace.
        typer.secho(f"loop:  stopped: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    if outcome is not None and not outcome.drift_detected:
        typer.echo(f"loop:  done: no drift detected; the edge keeps version {outcome.served_version}")
    elif outcome is not None:
        verdict = "promoted and serving" if outcome.promoted else "refused; the edge keeps"
        typer.echo(f"loop:  done: the retrained version was {verdict} version {outcome.served_version}")


async def _classify_captures(
    options: DemoOptions, home: Path, model_base: Path, broker: LocalBroker, stop: asyncio.Event, *, keep_running: bool
) -> int:
    """Act one: model server, ingest and gateway; the camera sends the captures. Returns the results missing."""
    from edgeloop_common.bus.inprocess import InProcessBus
    from edgeloop_common.settings import CommonSettings

    from edgeloop.device import DeviceSimulator, SimulatorConfig, format_result

    common = CommonSettings(mode="standalone", data_dir=home / "data", mqtt_host=broker.host, mqtt_port=broker.port)
    bus = InProcessBus(source="edgeloop-demo")
    site_stack = contextlib.AsyncExitStack()
    system = System(
        SystemConfig(
            model_name=options.model,
            model_base=model_base,
            common=lambda service: common,
            bus=bus,
            ports=DOCUMENTED_PORTS,
            # the embedded broker speaks MQTT 3.1.1 only
            settings={
                "ingest": {"mqtt_protocol": "5" if broker.kind == "mosquitto" else "3.1.1"},
                "inference-gateway": {"mqtt_protocol": "5" if broker.kind == "mosquitto" else "3.1.1"},
                CONSOLE: {"admin_token": options.console_token or ""},
            },
        )
    )
    try:
        await system.start_model_server()
        await bus.start()
        await system.start(("ingest", "inference-gateway"))
        if options.console_token is not None:
            await _start_console(system, options.console_token)
        freeze_what_is_loaded()  # as `edgeloop <service>` does: no full collection walks the start-up objects again
        urls = system.urls
        typer.echo(
            f"up:    model server {urls['model-server']} (gRPC {urls['grpc']}), ingest {urls['ingest']}, "
            f"gateway {urls['inference-gateway']}; data in {home}"
        )
        typer.echo(f"camera: {options.device}@{options.site} sends photos from {options.images}")
        simulator = DeviceSimulator(
            SimulatorConfig(
                images_dir=options.images,
                site=options.site,
                device=options.device,
                rate=options.rate,
                count=options.count,
                loop=options.loop,
                mqtt_host=broker.host,
                mqtt_port=broker.port,
            ),
            on_result=lambda result: typer.echo(f"result: {format_result(result)}  served by {_served_by(result)}"),
        )
        camera = asyncio.create_task(simulator.run())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({camera, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not camera.done():
            simulator.stop()
        summary = await camera
        typer.echo(f"camera: {summary.describe()}")
        stopper.cancel()
        missing = summary.missing
        if options.edge_site is not None and not stop.is_set():
            edge = await _edge_site(options, home, system, stop, site_stack)
            missing += edge.missing
        if keep_running and not stop.is_set():
            agent = urls.get(f"edge:{options.edge_site}")
            at_the_edge = f" or curl {agent}/v1/status" if agent else ""
            tries = f"curl {urls['ingest']}/v1/samples/<id>{at_the_edge}{_console_hint(urls)}"
            typer.echo(f"services keep running; try e.g. {tries} — Ctrl-C stops")
            await stop.wait()
        return missing
    finally:
        typer.echo("stopping ...")
        await system.stop()
        await bus.stop()
        await site_stack.aclose()  # the edge site's broker and link, once its agent has stopped


async def _start_console(system: System, token: str) -> None:
    """The console over what ``system`` runs (its settings carry the token); URL and sign-in token printed."""
    await system.start([CONSOLE])
    typer.echo(f"console: {system.urls[CONSOLE]} (sign in with {console_sign_in(token)})")


def _console_hint(urls: dict[str, str]) -> str:
    return f", or open the console at {urls[CONSOLE]}" if CONSOLE in urls else ""


def _served_by(result: DeviceResult) -> str:
    """Where the answer came from: ``served_by`` of the result (the cloud gateway's when it does not say)."""
    return str(result.payload.get("served_by") or "cloud")


async def _edge_site(
    options: DemoOptions, home: Path, system: System, stop: asyncio.Event, site_stack: contextlib.AsyncExitStack
) -> EdgeActOutcome:
    """The edge site beside the cloud services, and its offline moment (edgeloop.demo_edge)."""
    assert options.edge_site is not None
    act = EdgeAct(
        site=options.edge_site,
        device=options.device,
        images=options.images,
        model=options.model,
        rate=options.rate,
        count=options.count,
        broker=options.broker,
        offline_s=options.offline_s,
    )
    try:
        return await run_edge_act(system, act, home / "data", stop, typer.echo, site_stack)
    except (TimeoutError, RuntimeError, httpx.HTTPError) as exc:
        typer.secho(f"edge:  stopped: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc

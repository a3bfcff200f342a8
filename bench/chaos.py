"""Faults, swept, at full size (issue 13, item 5): nothing acknowledged is lost, no effect happens twice.

The distributed path runs on a Kafka, Mosquitto and PostgreSQL of its own (free ports, a state dir under
``.edgeloop/chaos/``; the shared ones are not touched) with every service as its own process. For each fault a
simulated camera publishes ``--images`` unique JPEGs at QoS 1 while the fault runs, a labeler labels every tenth
answered sample; then the harness (tests/chaos/harness.py) waits for quiescence and counts from the stores.
Printed per fault: acknowledged, stored, lost, duplicate effects, recovery time (fault end -> the next device
result), and the details behind them.

    .venv/bin/python bench/chaos.py                                  # 10,000 images a fault, every fault
    .venv/bin/python bench/chaos.py --images 1000 --kafka-down 30 --seed 3
    .venv/bin/python bench/chaos.py --faults kill,sigstop --json chaos.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos.harness import (
    KAFKA_SESSION_TIMEOUT_S,
    MODEL_NAME,
    REPO_ROOT,
    Counts,
    Scenario,
    chaos_pipeline,
    image_pool,
    kill_consumers,
    pause_service,
    run_scenario,
    stop_broker,
)

FAULTS = ("kill", "kafka", "mosquitto", "postgres", "sigstop")


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    made = {
        "kill": Scenario(f"sigkill-each-consumer-x{args.kills}", kill_consumers(args.kills), args.images, args.rate),
        "kafka": Scenario(
            f"kafka-stopped-{args.kafka_down:.0f}s", stop_broker("kafka", args.kafka_down), args.images, args.rate
        ),
        "mosquitto": Scenario("mosquitto-restarted", stop_broker("mosquitto", 0.0), args.images, args.rate),
        "postgres": Scenario("postgres-restarted", stop_broker("postgres", 0.0), args.images, args.rate),
        "sigstop": Scenario(
            f"{args.pause_service}-sigstop-{args.pause:.0f}s",
            pause_service(args.pause_service, args.pause),
            args.images,
            args.rate,
        ),
    }
    return [made[name] for name in args.faults.split(",")]


def test_model() -> Path:
    """The tests' small model (tests/model_fixtures.py), trained once and cached, as the tests use it."""
    from tests import model_fixtures

    data = REPO_ROOT.parent / "shared" / "datasets" / "catdog" / "train"
    cached = model_fixtures.CACHE_DIR / f"model-{model_fixtures._cache_key(data)}"
    if not (cached / model_fixtures.TEST_MODEL_NAME / "1" / "saved_model.pb").exists():
        print(f"training the tests' small model into {cached} ...", flush=True)
        model_fixtures._train_into(cached, data)
    return cached / model_fixtures.TEST_MODEL_NAME


async def run(args: argparse.Namespace) -> list[Counts]:
    work_dir = REPO_ROOT / ".edgeloop" / "chaos" / f"bench-{uuid.uuid4().hex[:8]}"
    models = work_dir / "models"
    shutil.copytree(test_model(), models / MODEL_NAME)
    started = time.monotonic()
    results: list[Counts] = []
    with chaos_pipeline(work_dir, models, keep=args.keep) as pipeline:
        print(f"brokers and services up in {time.monotonic() - started:.0f} s ({work_dir})", flush=True)
        pool = image_pool()
        for number, scenario in enumerate(scenarios(args)):
            counts = await run_scenario(pipeline, scenario, seed=args.seed + number, pool=pool)
            print(counts.line(), flush=True)
            print(counts.details(), flush=True)
            results.append(counts)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="Pictures per fault (default 10,000).")
    parser.add_argument("--rate", type=float, default=20.0, help="Pictures per second (default 20).")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"Comma-separated, of {', '.join(FAULTS)}.")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs of each consumer (default 3).")
    parser.add_argument("--kafka-down", type=float, default=30.0, help="Seconds Kafka stays stopped (default 30).")
    parser.add_argument("--pause", type=float, default=KAFKA_SESSION_TIMEOUT_S + 10, help="SIGSTOP seconds.")
    parser.add_argument("--pause-service", default="inference-gateway", help="The service SIGSTOPped.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the kill points.")
    parser.add_argument("--json", type=Path, help="Write every figure here.")
    parser.add_argument("--keep", action="store_true", help="Keep the run's folder (brokers' data, service logs).")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    results = asyncio.run(run(args))
    print("\nfault                        per fault")
    for counts in results:
        print(counts.line())
    if args.json:
        args.json.write_text(json.dumps([asdict(counts) for counts in results], indent=2, default=str))
    failed = [c.scenario for c in results if c.lost_total or c.duplicate_effects or c.recovery_s is None]
    if failed:
        print(f"FAIL: {', '.join(failed)}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()

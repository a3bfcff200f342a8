"""docker-compose.yml, run. No Docker engine runs here, so every EdgeLoop service of the file is started as a process
with its command and its environment exactly as Compose resolves them, and a picture from the file's simulated
camera has to come back classified through the file's ingest and gateway.

How the file is read: by the compose-spec reference loader (compose-go, the library `docker compose` itself uses:
infra/compose-config, built with `go build` and cached), with an .env file of the test's, so the interpolation, the
anchors and merge keys, the defaults and the `${VAR:?}` errors are Compose's own.

How each service runs: its image's ENTRYPOINT/CMD (read from its Dockerfile) or the file's `entrypoint`/`command`,
with the image's ENV plus the file's `environment` and nothing else from this machine. What a container would
have that a process here does not is translated, and only that:

* a service name with a port (`kafka:9092`, `http://model-server:8501`, EDGELOOP_MQTT_HOST + _PORT) becomes where
  that service really runs here, and only when the port is one the compose service really listens on (Kafka's
  advertised listener, PostgreSQL's 5432, `weed mini`'s S3 port, the broker config's listener, an EdgeLoop
  service's own port setting): a wrong port fails;
* kafka, postgres and seaweedfs are the shared servers of `edgeloop infra up --secure` (SASL_SSL Kafka, PostgreSQL
  over TLS, SeaweedFS), their secrets put in the .env as an operator would; the topics get a fresh prefix (the
  file's EDGELOOP_TOPIC_PREFIX) and the database a fresh schema (on the search path of the URL);
* mosquitto is the real Mosquitto run on the file's own config (infra/mosquitto/compose.conf, its paths mapped, its
  listener on a free port, the plugin where Debian installs it), with the identities the file's mqtt-identities job
  made;
* a container path becomes a folder here by the service's own mounts: a named volume is a folder of the test
  (shared between the services that mount it), a bind mount its source; a path that no mount covers lands in the
  service's own empty "container" folder, so a wrong path fails. The edgeloop-tls volume starts with the shared
  servers' CA and certificate (the file's "bring your own" way: the tls-certs job keeps them);
* each EdgeLoop service listens on a free port instead of its container port (its port setting is the one variable
  set beyond the file's), as if published;
* each runs as its container's user (the file's `user`, else the image's USER: uid 10001), allowed to read any file
  (this machine's Python lives under /root) but to write only where that uid may, its `:ro` mounts read-only (a
  mount namespace of its own); a named volume mounted empty gets the owner its folder has in the image, as Docker
  copies it up. The broker's uid the mqtt-identities job hands its files to is Debian's mosquitto user here.

Then: the one-shot jobs must exit 0, each long-running service must pass its own healthcheck (the file's, else its
image's HEALTHCHECK, run as a command as that user), in the order `depends_on` gives, the camera's pictures come
back classified by the model the file's first-model job trained and registered, and after the stack stops the jobs
run again as on a second `docker compose up`, keeping what they made.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import importlib
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from edgeloop.infra.secure import KAFKA_USER, SecureLinks
from edgeloop.secure_mqtt import find_dynsec_plugin
from sqlalchemy.engine import make_url

from tests.helpers import delete_topics, free_port

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
LOADER_SOURCE = REPO / "infra" / "compose-config"
STATE = REPO / ".edgeloop"
VENV_BIN = REPO / ".venv" / "bin"
# What the base image (python:3.11-slim) sets besides the Dockerfiles' own ENV; the venv holds what its pip installs.
BASE_ENV = {"PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# Paths of an image that exist here too (a shell's /dev/null); any other unmounted path is the container's own.
SYSTEM_PATHS = ("/dev/", "/proc/", "/sys/", "/usr/", "/bin/", "/sbin/", "/lib/", "/etc/")
# The first model, small (the cached test model's parameters) and from a few photos: the job's real command.
FIRST_MODEL_OPTIONS = "--backbone small-cnn --epochs 2 --image-size 32 --seed 7"
SEED_PHOTOS_PER_CLASS = 40
RESULT_LINE = re.compile(r"^(\S+) -> (\S+) (\d\.\d+)\s.*\((edgeloop-classifier) v(\d+)\)", re.M)


class ComposeMismatch(AssertionError):
    """The file names something that is not there: a port a service does not listen on, a host it cannot reach."""


# -- the file, as Compose loads it --------------------------------------------------------------------------------


def compose_loader() -> Path:
    """infra/compose-config built once per version of its source (a minute the first time, cached after)."""
    sources = [*sorted(LOADER_SOURCE.glob("*.go")), LOADER_SOURCE / "go.mod", LOADER_SOURCE / "go.sum"]
    digest = hashlib.sha256(b"".join(path.name.encode() + path.read_bytes() for path in sources)).hexdigest()[:16]
    # Under ~/.cache like the project's other builds: a fresh clone on this machine reuses it.
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeloop" / "compose-config"
    cache.mkdir(parents=True, exist_ok=True)
    binary = cache / f"compose-config-{digest}"
    with (cache / "compose-config.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            go = shutil.which("go") or "/usr/local/go/bin/go"
            built = subprocess.run(
                [go, "build", "-o", str(binary) + ".new", "."],
                cwd=LOADER_SOURCE,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert built.returncode == 0, f"go build of {LOADER_SOURCE} failed:\n{built.stderr}"
            Path(str(binary) + ".new").replace(binary)
    return binary


def load_compose(project_dir: Path, env_file: Path | None) -> subprocess.CompletedProcess[str]:
    command = [str(compose_loader()), "-project-directory", str(project_dir)]
    if env_file is not None:
        command += ["-env-file", str(env_file)]
    # The loader sees no variable of this machine: only the .env file's.
    return subprocess.run(
        [*command, str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": BASE_ENV["PATH"], "HOME": str(project_dir)},
    )


def loaded(project_dir: Path, env_file: Path) -> dict[str, Any]:
    result = load_compose(project_dir, env_file)
    assert result.returncode == 0, f"Compose's loader refused the file: {result.stderr}"
    return dict(json.loads(result.stdout))


# -- the images, from their Dockerfiles ---------------------------------------------------------------------------


@dataclass
class Image:
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: str | None = None  # a shell command (HEALTHCHECK CMD ...)
    workdir: str = "/"
    directories: list[str] = field(default_factory=list)  # made by the image (WORKDIR, mkdir -p)
    owners: dict[str, int] = field(default_factory=dict)  # a folder the image hands to a user (chown): its uid
    users: dict[str, int] = field(default_factory=lambda: {"root": 0})  # useradd --uid
    user: str = "root"  # USER

    def uid(self, user: str) -> int:
        name = user.split(":")[0]
        return int(name) if name.isdigit() else self.users[name]


def _exec_form(text: str) -> list[str]:
    text = text.strip()
    return list(json.loads(text)) if text.startswith("[") else ["/bin/sh", "-c", text]


def read_dockerfile(path: Path) -> Image:
    image = Image()
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":  # a new stage: the image is its last stage's (a multi-stage build)
            image = Image()
        elif instruction == "ENV":
            words = shlex.split(rest)
            if words and "=" not in words[0]:
                image.env[words[0]] = " ".join(words[1:])
            else:
                image.env.update(word.partition("=")[::2] for word in words)
        elif instruction == "ENTRYPOINT":
            image.entrypoint, image.cmd = _exec_form(rest), []  # a new ENTRYPOINT drops an inherited CMD
        elif instruction == "CMD":
            image.cmd = _exec_form(rest)
        elif instruction == "HEALTHCHECK":
            command = rest.split(" CMD ", 1)[1].strip() if " CMD " in f" {rest}" else None
            if command is not None and command.startswith("["):
                command = shlex.join(json.loads(command))
            image.healthcheck = command
        elif instruction == "WORKDIR":
            image.workdir = rest.strip()
            image.directories.append(image.workdir)
        elif instruction == "RUN":
            for made in re.findall(r"mkdir -p ((?:/[\w./-]+\s*)+)", rest):
                image.directories += made.split()
            for uid, name in re.findall(r"useradd [^&;]*--uid (\d+) (\w+)", rest):
                image.users[name] = int(uid)
            for owner, paths in re.findall(r"chown (?:-R )?(\S+) ((?:/[\w./-]+\s*)+)", rest):
                for folder in paths.split():
                    image.owners[folder] = image.uid(owner)
        elif instruction == "USER":
            image.user = rest.strip()
    return image


# -- where a container's names, ports and paths are here ----------------------------------------------------------


@dataclass
class Plan:
    """One service of the file, as a process here."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    healthcheck: str | None
    depends_on: dict[str, str]
    job: bool  # runs once (exits 0) rather than serving
    published: dict[int, int] = field(default_factory=dict)  # container port -> port here
    uid: int = 0  # the user it runs as (the file's `user`, else the image's USER)
    volumes: list[tuple[Path, int]] = field(default_factory=list)  # a named volume, its owner in the image
    read_only: list[Path] = field(default_factory=list)  # what it mounts `:ro`

    def as_user(self, argv: list[str]) -> list[str]:
        """The command as the container's user: its uid and gid, no other group, and (the only right kept) reading
        any file, since this machine's Python lives under /root; writing only where that uid may. Its `:ro` mounts
        read-only, in a mount namespace of its own."""
        if self.uid != 0:
            ids = ["--reuid", str(self.uid), "--regid", str(self.uid), "--clear-groups"]
            caps = ["--inh-caps", "+dac_read_search", "--ambient-caps", "+dac_read_search"]
            argv = ["setpriv", *ids, *caps, "--", *argv]
        if self.read_only:
            remount = (
                'n=$1; shift; while [ "$n" -gt 0 ]; do mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1"'
                ' || exit 97; shift; n=$((n - 1)); done; exec "$@"'
            )
            paths = [str(path) for path in self.read_only]
            argv = ["unshare", "--mount", "/bin/sh", "-c", remount, "sh", str(len(paths)), *paths, *argv]
        return argv


class Translation:
    """The container world of a loaded compose file, mapped onto this machine."""

    def __init__(self, config: dict[str, Any], root: Path, infra: dict[tuple[str, int], str]) -> None:
        self.config = config
        self.services: dict[str, dict[str, Any]] = config["services"]
        self.root = root
        # (service, container port) -> host:port here. The shared servers come from the caller; the EdgeLoop
        # services' from their own settings (see _listening).
        self.endpoints: dict[tuple[str, int], str] = dict(infra)
        self.listening: dict[str, dict[int, tuple[str, str]]] = {}
        self.published: dict[str, dict[int, int]] = {}
        for name in self.services:
            ports = self._listening(name)
            self.listening[name] = ports
            self.published[name] = {port: free_port() for port in ports}
            for port, here in self.published[name].items():
                self.endpoints[(name, port)] = f"127.0.0.1:{here}"

    # -- images and ports --

    def image(self, name: str) -> Image | None:
        build = self.services[name].get("build")
        if not build:
            return None
        return read_dockerfile(REPO / build["dockerfile"])

    def environment(self, name: str) -> dict[str, str]:
        """The container's environment: the image's ENV, then the file's (which wins)."""
        image = self.image(name)
        env = dict(image.env) if image else {}
        env.update({key: str(value) for key, value in (self.services[name].get("environment") or {}).items()})
        return env

    def _listening(self, name: str) -> dict[int, tuple[str, str]]:
        """{port: (port variable, host variable)} an EdgeLoop service listens on, by its own settings class
        (the package its image's command runs) and the container's environment."""
        image = self.image(name)
        if image is None or not image.cmd or not image.cmd[0].startswith("edgeloop-"):
            return {}
        settings = importlib.import_module(image.cmd[0].replace("-", "_") + ".settings").Settings
        prefix = settings.model_config["env_prefix"]
        env = self.environment(name)
        ports = {}
        for field_name, info in settings.model_fields.items():
            # A server's port: http_port beside http_host (its bind address), grpc_port beside grpc_host.
            if field_name in ("http_port", "grpc_port") and f"{field_name[:-5]}_host" in settings.model_fields:
                variable = f"{prefix}{field_name.upper()}"
                port = int(env.get(variable, info.default))
                host_variable = f"{prefix}{field_name.removesuffix('_port').upper()}_HOST"
                ports[port] = (variable, host_variable)
        return ports

    def endpoint(self, service: str, port: int, where: str) -> str:
        if (service, port) not in self.endpoints:
            listens = sorted(port for (name, port) in self.endpoints if name == service)
            raise ComposeMismatch(f"{where} names {service}:{port}, but {service} listens on {listens or 'nothing'}")
        return self.endpoints[(service, port)]

    # -- volumes and paths --

    def volume(self, source: str) -> Path:
        path = self.root / "volumes" / source
        if not path.exists():
            path.mkdir(parents=True)
            path.chmod(0o755)
        return path

    def mounts(self, name: str) -> list[tuple[str, Path]]:
        """(container path, path here) of the service's volumes, the longest first."""
        found = []
        for mount in self.services[name].get("volumes") or []:
            if mount["type"] == "volume":
                found.append((mount["target"], self.volume(mount["source"])))
            elif mount["type"] == "bind":
                source = Path(mount["source"])
                if not source.exists():
                    raise ComposeMismatch(f"{name} mounts {source}, which does not exist")
                found.append((mount["target"], source))
            else:
                raise ComposeMismatch(f"{name}: a {mount['type']} mount is not run by this test")
        return sorted(found, key=lambda item: -len(item[0]))

    def container(self, name: str) -> Path:
        """The service's own filesystem (what no mount covers), with the folders its image makes, owned as there."""
        path = self.root / "containers" / name
        if not path.exists():
            path.mkdir(parents=True)
            image = self.image(name)
            for directory in image.directories if image else []:
                (path / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
            for directory, uid in image.owners.items() if image else []:
                os.chown(path / directory.lstrip("/"), uid, uid)
        return path

    def path(self, name: str, container_path: str) -> str:
        for target, here in self.mounts(name):
            if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
                return str(here / container_path.removeprefix(target).lstrip("/")).rstrip("/") or "/"
        if container_path.startswith(SYSTEM_PATHS) or container_path in ("/", "/tmp"):
            return container_path
        return str(self.container(name) / container_path.lstrip("/"))

    # -- text: arguments, variables, healthchecks --

    PATH_RE = re.compile(r"(?<![\w.:/$=-])/[\w.*-]*(?:/[\w.*-]+)*/?|(?<==)/[\w.*-]*(?:/[\w.*-]+)*/?")
    HOST_PORT_RE = re.compile(r"(?<![\w.-])([a-z][a-z0-9-]*|127\.0\.0\.1|localhost):(\d+)\b")

    def text(self, name: str, value: str, where: str) -> str:
        def host_port(match: re.Match[str]) -> str:
            host, port = match.group(1), int(match.group(2))
            if host in ("127.0.0.1", "localhost"):  # the container itself
                if port in self.published[name]:
                    return f"127.0.0.1:{self.published[name][port]}"
                if self.listening[name]:
                    raise ComposeMismatch(
                        f"{where} names its own port {port}; {name} listens on {sorted(self.listening[name])}"
                    )
                return match.group(0)
            if host in self.services:
                return self.endpoint(host, port, where)
            return match.group(0)

        value = self.PATH_RE.sub(lambda match: self.path(name, match.group(0)), value)
        return self.HOST_PORT_RE.sub(host_port, value)

    def plan(self, name: str, *, postgres_schema: str, broker_uid: int) -> Plan:
        service, image = self.services[name], self.image(name)
        entrypoint = service.get("entrypoint")
        command = service.get("command")
        if entrypoint is None:
            entrypoint = image.entrypoint if image else []
            if command is None:
                command = image.cmd if image else []
        argv = [*entrypoint, *(command or [])]
        argv = [self.text(name, argument, f"{name}'s command") for argument in argv]
        if "--broker-uid" in argv:  # the broker runs as Debian's mosquitto user here, not the image's 1883
            argv[argv.index("--broker-uid") + 1] = str(broker_uid)
        env = self.env(name, postgres_schema)
        healthcheck = None
        if (service.get("healthcheck") or {}).get("test"):
            test = service["healthcheck"]["test"]
            healthcheck = test[1] if test[0] == "CMD-SHELL" else shlex.join(test[1:])
        elif image is not None:
            healthcheck = image.healthcheck
        if healthcheck is not None:
            healthcheck = self.text(name, healthcheck, f"{name}'s healthcheck")
        for port in (mapping["target"] for mapping in service.get("ports") or []):
            if self.listening[name] and port not in self.listening[name]:
                raise ComposeMismatch(f"{name} publishes port {port}; it listens on {sorted(self.listening[name])}")
        user = str(service.get("user") or (image.user if image else "root"))
        uid = image.uid(user) if image else 0
        # HOME as Docker sets it (the user's entry: useradd --system makes none, so /home/<name> that is not there).
        home = "/root" if uid == 0 else f"/home/{user}"
        env = {**BASE_ENV, "HOME": self.path(name, home), **env}
        read_only = {mount["target"] for mount in service.get("volumes") or [] if mount.get("read_only")}
        # A named volume mounted empty gets the owner of that folder in the image (Docker copies it up).
        volumes = [
            (self.volume(mount["source"]), image.owners[mount["target"]])
            for mount in service.get("volumes") or []
            if mount["type"] == "volume" and image is not None and mount["target"] in image.owners
        ]
        depends = {dep: value["condition"] for dep, value in (service.get("depends_on") or {}).items()}
        workdir = image.workdir if image else "/"
        return Plan(
            name,
            argv,
            env,
            Path(self.path(name, workdir)) if workdir != "/" else self.container(name),
            healthcheck,
            depends,
            job=False,
            published=self.published[name],
            uid=uid,
            volumes=volumes,
            read_only=[here for target, here in self.mounts(name) if target in read_only],
        )

    def env(self, name: str, postgres_schema: str) -> dict[str, str]:
        env = self.environment(name)
        translated = {key: self.text(name, value, f"{name}: {key}") for key, value in env.items()}
        for key, value in env.items():
            if key.endswith("_HOST") and value in self.services:  # EDGELOOP_MQTT_HOST: mosquitto (+ _PORT)
                port_key = key.removesuffix("_HOST") + "_PORT"
                if port_key not in env:
                    raise ComposeMismatch(f"{name}: {key}={value} without {port_key}")
                address = self.endpoint(value, int(env[port_key]), f"{name}: {key}/{port_key}")
                translated[key], translated[port_key] = address.split(":")
            if "@postgres:" in value:
                translated[key] = self._database_url(name, key, value, translated[key], postgres_schema)
        for port, (port_variable, host_variable) in self.listening[name].items():
            if translated.get(host_variable) != "0.0.0.0":
                raise ComposeMismatch(
                    f"{name} listens on {translated.get(host_variable, 'its default host')}:{port}"
                    f" ({host_variable}): the other containers cannot reach it"
                )
            translated[port_variable] = str(self.published[name][port])
        return translated

    def _database_url(self, name: str, key: str, value: str, translated: str, schema: str) -> str:
        """The compose PostgreSQL's user, password and database must be the ones the URL names; here they are
        the shared server's, in a schema of this run."""
        url, server = make_url(value), self.environment("postgres")
        for part, variable in (
            (url.username, "POSTGRES_USER"),
            (url.password, "POSTGRES_PASSWORD"),
            (url.database, "POSTGRES_DB"),
        ):
            if part != server.get(variable):
                raise ComposeMismatch(f"{name}: {key} names {part!r}; the postgres service's {variable} differs")
        query = dict(make_url(translated).query)
        query["options"] = f"-csearch_path={schema}"
        return make_url(translated).set(query=query).render_as_string(hide_password=False)


# -- the shared servers and the broker ----------------------------------------------------------------------------


def shared_endpoints(config: dict[str, Any], kafka_secure: str) -> dict[tuple[str, int], str]:
    """(service, container port) -> where the shared server runs, for the ports the compose services listen on."""
    services = config["services"]
    kafka = services["kafka"]["environment"]
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = dict(item.split("://") for item in kafka["KAFKA_LISTENERS"].split(","))
    endpoints = {}
    for listener, address in advertised.items():
        host, port = address.rsplit(":", 1)
        if host == "kafka" and protocols[listener] == "SASL_SSL":  # the one other containers use
            assert listeners[listener].rsplit(":", 1)[1] == port, f"kafka advertises {address}, listens elsewhere"
            endpoints[("kafka", int(port))] = kafka_secure
    assert f"--entity-name {KAFKA_USER}" in " ".join(services["kafka"]["command"]), "kafka's SCRAM user"
    postgres_command = " ".join(services["postgres"].get("command") or [])
    port = re.search(r"-c port=(\d+)", postgres_command)
    endpoints[("postgres", int(port.group(1)) if port else 5432)] = "127.0.0.1:5432"
    weed = " ".join(services["seaweedfs"]["command"])
    port = re.search(r"-s3\.port=(\d+)", weed)
    endpoints[("seaweedfs", int(port.group(1)) if port else 8333)] = "127.0.0.1:8333"  # `weed mini`'s S3 port
    return endpoints


def broker_config(translation: Translation, port: int) -> tuple[Path, list[str]]:
    """The mosquitto service's config file (a bind mount) with its paths mapped, its listener moved to ``port`` and
    the plugin where it is installed here; and its command."""
    plan_argv = translation.services["mosquitto"]["command"]
    argv = shlex.split(plan_argv) if isinstance(plan_argv, str) else list(plan_argv)
    container_config = argv[argv.index("-c") + 1]
    source = Path(translation.path("mosquitto", container_config))
    text = source.read_text()
    listeners = re.findall(r"^listener (\d+)", text, re.M)
    assert len(listeners) == 1, f"{source}: one listener expected, found {listeners}"
    text = re.sub(r"^listener \d+ \S+", f"listener {port} 127.0.0.1", text, flags=re.M)
    text = text.replace("/usr/lib/mosquitto_dynamic_security.so", str(find_dynsec_plugin()))
    for target, here in translation.mounts("mosquitto"):
        if here != source:
            text = re.sub(rf"(?<=\s){re.escape(target)}(?=/|\s|$)", str(here), text)
    config = translation.root / "mosquitto.conf"
    config.write_text(text)
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    assert mosquitto, "mosquitto is installed by `edgeloop infra up`"
    translation.endpoints[("mosquitto", int(listeners[0]))] = f"127.0.0.1:{port}"
    return config, [mosquitto, "-c", str(config)]


def mosquitto_uid() -> int:
    try:
        return pwd.getpwnam("mosquitto").pw_uid
    except KeyError:
        return os.getuid()


# -- running them -------------------------------------------------------------------------------------------------


@dataclass
class Running:
    plan: Plan
    process: subprocess.Popen[bytes]
    log: Path
    healthy: bool = False
    last_check: float = 0.0

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Stack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.running: dict[str, Running] = {}
        (root / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, plan: Plan) -> None:
        for volume, uid in plan.volumes:
            if not any(volume.iterdir()):
                os.chown(volume, uid, uid)
        log = self.root / "logs" / f"{plan.name}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                plan.as_user(plan.argv),
                env=plan.env,
                cwd=plan.cwd,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running[plan.name] = Running(plan, process, log)

    def check(self, name: str) -> bool:
        """Started, exited 0, or passed its healthcheck (run as Docker runs it: the container's environment)."""
        running = self.running[name]
        if running.healthy or running.plan.healthcheck is None:
            return True
        if time.monotonic() - running.last_check < 1.0:
            return False
        running.last_check = time.monotonic()
        result = subprocess.run(
            running.plan.as_user(["/bin/sh", "-c", running.plan.healthcheck]),
            env=running.plan.env,
            cwd=running.plan.cwd,
            capture_output=True,
            timeout=30,
        )
        running.healthy = result.returncode == 0
        return running.healthy

    def failed(self) -> str | None:
        for name, running in self.running.items():
            code = running.process.poll()
            if code is not None and (code != 0 or not running.plan.job):
                return f"{name} exited with {code}:\n{running.tail()}"
        return None

    def stop(self) -> None:
        for running in self.running.values():
            if running.process.poll() is None:
                os.killpg(running.process.pid, 15)
        deadline = time.monotonic() + 15
        for running in self.running.values():
            try:
                running.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(running.process.pid, 9)
                running.process.wait(5)


def satisfied(stack: Stack, dependency: str, condition: str, shared: set[str]) -> bool:
    if dependency in shared:  # the shared servers are up (the fixtures checked they listen)
        return True
    if dependency not in stack.running:
        return False
    running = stack.running[dependency]
    if condition == "service_completed_successfully":
        return running.process.poll() == 0
    if condition == "service_healthy":
        assert running.plan.healthcheck is not None, f"{dependency} has no healthcheck to be healthy by"
        return stack.check(dependency)
    return True


def up(stack: Stack, plans: dict[str, Plan], shared: set[str], timeout_s: float) -> None:
    """Start every service when its depends_on conditions hold, as `docker compose up` does."""
    deadline = time.monotonic() + timeout_s
    pending = set(plans)
    while pending:
        for name in sorted(pending):
            if all(satisfied(stack, dep, cond, shared) for dep, cond in plans[name].depends_on.items()):
                stack.start(plans[name])
                pending.discard(name)
        failure = stack.failed()
        assert failure is None, failure
        if time.monotonic() > deadline:
            waiting = {name: plans[name].depends_on for name in pending}
            logs = "\n".join(f"--- {name}\n{running.tail(15)}" for name, running in stack.running.items())
            raise AssertionError(f"not started after {timeout_s:.0f} s: {waiting}\n{logs}")
        time.sleep(0.3)


# -- the test's project folder: the repository's files, an .env, the operator's folders ---------------------------


@dataclass
class Project:
    directory: Path
    env_file: Path
    topic_prefix: str


def make_project(root: Path, env: dict[str, str], seed_from: Path, camera_from: Path) -> Project:
    project = root / "project"
    project.mkdir()
    (project / "infra").symlink_to(REPO / "infra")
    (project / "models").mkdir()
    for label in sorted(path.name for path in seed_from.iterdir() if path.is_dir()):
        (project / "seed" / label).mkdir(parents=True)
        for photo in sorted((seed_from / label).iterdir())[:SEED_PHOTOS_PER_CLASS]:
            shutil.copy(photo, project / "seed" / label / photo.name)
    shutil.copytree(camera_from, project / "camera")
    env_file = project / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    return Project(project, env_file, env.get("EDGELOOP_TOPIC_PREFIX", ""))


def seed_tls_volume(translation: Translation) -> None:
    """The edgeloop-tls volume with the shared servers' CA and certificate (compose's "bring your own")."""
    secure = SecureLinks(STATE).directory
    volume = translation.volume("edgeloop-tls")
    for name in ("ca.pem", "ca.key", "server.pem", "kafka-keystore.pem"):
        shutil.copy(secure / name, volume / name)
    shutil.copy(secure / "server.key", volume / "postgres.key")


# -- the tests ----------------------------------------------------------------------------------------------------


def _project_with_secrets(project: Path) -> Path:
    """A project folder as the operator makes it (the infra configs, the secrets in .env, the folders the file
    binds); returns the .env file."""
    (project / "infra").symlink_to(REPO / "infra")
    env_file = project / ".env"
    env_file.write_text(
        "EDGELOOP_KAFKA_PASSWORD=k\nEDGELOOP_POSTGRES_PASSWORD=p\nEDGELOOP_S3_ACCESS_KEY_ID=a\n"
        "EDGELOOP_S3_SECRET_ACCESS_KEY=s\n"
    )
    for folder in ("models", "seed", "camera"):
        (project / folder).mkdir()
    return env_file


def test_the_loader_interpolates_and_refuses_a_missing_secret(tmp_path: Path) -> None:
    """Compose's own interpolation: no .env, and the file's ${VAR:?...} refuses to load, saying what to set."""
    (tmp_path / "infra").symlink_to(REPO / "infra")
    refused = load_compose(tmp_path, None)
    assert refused.returncode != 0 and "set EDGELOOP_KAFKA_PASSWORD and EDGELOOP_POSTGRES_PASSWORD in .env" in (
        refused.stderr
    ), refused.stderr
    env_file = tmp_path / ".env"
    env_file.write_text(
        "EDGELOOP_KAFKA_PASSWORD=k\nEDGELOOP_POSTGRES_PASSWORD=p w\nEDGELOOP_S3_ACCESS_KEY_ID=a\n"
        "EDGELOOP_S3_SECRET_ACCESS_KEY=s\nEDGELOOP_SEED_DATA=/elsewhere\n"
    )
    config = loaded(tmp_path, env_file)
    ingest = config["services"]["ingest"]
    assert ingest["environment"]["EDGELOOP_KAFKA_PASSWORD"] == "k"  # the anchor merged, the variable put in
    assert ingest["environment"]["EDGELOOP_TOPIC_PREFIX"] == ""  # ${VAR:-} with nothing set
    assert "edgeloop:p w@postgres:5432/edgeloop?" in ingest["environment"]["EDGELOOP_DATABASE_URL"]
    trainer_binds = {m["target"]: m["source"] for m in config["services"]["trainer"]["volumes"] if m["type"] == "bind"}
    assert trainer_binds == {"/models": str(tmp_path / "models"), "/seed": "/elsewhere"}


def test_a_wrong_port_path_or_bind_address_in_the_file_fails(tmp_path: Path) -> None:
    """What the running test relies on: a name with a port the service does not listen on is refused, a path no
    mount covers is the container's own (empty) folder, and a service bound to 127.0.0.1 in its container
    cannot be reached."""
    env_file = _project_with_secrets(tmp_path)
    config = loaded(tmp_path, env_file)
    infra = shared_endpoints(config, "127.0.0.1:9095")
    translation = Translation(config, tmp_path / "run", {**infra, ("mosquitto", 8883): "127.0.0.1:1"})
    gateway = translation.env("inference-gateway", "s")
    model_server = translation.published["model-server"]
    assert gateway["EDGELOOP_INFERENCE_GATEWAY_MODEL_SERVER_REST_URL"] == f"http://127.0.0.1:{model_server[8501]}"
    assert gateway["EDGELOOP_KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:9095"
    assert gateway["EDGELOOP_MQTT_PASSWORD_FILE"] == str(
        tmp_path / "run/volumes/mqtt-credentials/inference-gateway.password"
    )
    assert gateway["EDGELOOP_INFERENCE_GATEWAY_HTTP_PORT"] == str(translation.published["inference-gateway"][8082])
    environment = config["services"]["inference-gateway"]["environment"]
    environment["EDGELOOP_INFERENCE_GATEWAY_MODEL_SERVER_REST_URL"] = "http://model-server:8502"
    with pytest.raises(ComposeMismatch, match=r"model-server:8502, but model-server listens on \[8500, 8501\]"):
        translation.env("inference-gateway", "s")
    environment["EDGELOOP_INFERENCE_GATEWAY_MODEL_SERVER_REST_URL"] = "http://model-server:8501"
    environment["EDGELOOP_MQTT_PORT"] = "1883"
    with pytest.raises(ComposeMismatch, match="mosquitto:1883"):
        translation.env("inference-gateway", "s")
    ingest = config["services"]["ingest"]["environment"]
    ingest["EDGELOOP_MQTT_PASSWORD_FILE"] = "/run/edgeloop-mqt/ingest.password"
    assert translation.env("ingest", "s")["EDGELOOP_MQTT_PASSWORD_FILE"] == str(
        tmp_path / "run/containers/ingest/run/edgeloop-mqt/ingest.password"
    )
    ingest["EDGELOOP_INGEST_HTTP_HOST"] = "127.0.0.1"
    with pytest.raises(ComposeMismatch, match="cannot reach it"):
        translation.env("ingest", "s")
    config["services"]["registry"]["ports"][0]["target"] = 8093
    with pytest.raises(ComposeMismatch, match="publishes port 8093"):
        translation.plan("registry", postgres_schema="s", broker_uid=0)


def test_a_service_runs_as_its_images_user_with_its_ro_mounts_read_only(tmp_path: Path) -> None:
    """The model server runs as the image's uid 10001: /models (`:ro`) cannot be written, even where that uid
    owns it, and neither can the folders of its image that are root's; the volume it writes to can."""
    env_file = _project_with_secrets(tmp_path)
    os.chown(tmp_path / "models", 10001, 10001)
    config = loaded(tmp_path, env_file)
    translation = Translation(config, tmp_path / "run", shared_endpoints(config, "127.0.0.1:9095"))
    translation.endpoints[("mosquitto", 8883)] = "127.0.0.1:1"
    plan = translation.plan("model-server", postgres_schema="s", broker_uid=0)
    assert plan.uid == 10001 and plan.read_only
    app = translation.path("model-server", "/app")
    script = f"id -u; touch {tmp_path}/models/x || echo models-ro; touch {app}/x || echo app-root-owned"
    result = subprocess.run(plan.as_user(["/bin/sh", "-c", script]), capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == ["10001", "models-ro", "app-root-owned"], result.stdout + result.stderr
    assert "Read-only file system" in result.stderr
    trainer = translation.plan("trainer", postgres_schema="s", broker_uid=0)
    written = subprocess.run(trainer.as_user(["touch", f"{tmp_path}/models/x"]), capture_output=True, timeout=30)
    assert written.returncode == 0, written.stderr


@pytest.fixture
def run_root() -> Iterator[Path]:
    # Not pytest's tmp_path (0700 up the tree): the broker, switched to its own user, must reach its volumes.
    with tempfile.TemporaryDirectory(prefix="edgeloop-compose-run-") as folder:
        root = Path(folder)
        root.chmod(0o755)
        yield root


@pytest.mark.kafka
@pytest.mark.mqtt
@pytest.mark.postgres
@pytest.mark.s3
@pytest.mark.tf
@pytest.mark.slow
def test_the_compose_services_run_and_a_camera_picture_comes_back_classified(
    run_root: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    fresh_postgres_url: str,
    postgres_url: str,
    s3_environment: dict[str, str],
    catdog_train_dir: Path,
    catdog_captures_dir: Path,
) -> None:
    links = SecureLinks(STATE)
    assert links.enabled(), "the shared servers run with --secure (`edgeloop infra up --secure`)"
    secure = links.read_client_environment()
    shared_postgres = make_url(postgres_url)
    assert shared_postgres.username == "edgeloop"
    # The .env an operator writes (the file's header says how), with the shared servers' secrets, plus this run's
    # topic prefix and a small first model.
    project = make_project(
        run_root,
        {
            "EDGELOOP_KAFKA_PASSWORD": links.credentials().kafka_password,
            "EDGELOOP_POSTGRES_PASSWORD": str(shared_postgres.password),
            "EDGELOOP_S3_ACCESS_KEY_ID": s3_environment["EDGELOOP_S3_ACCESS_KEY_ID"],
            "EDGELOOP_S3_SECRET_ACCESS_KEY": s3_environment["EDGELOOP_S3_SECRET_ACCESS_KEY"],
            "EDGELOOP_TOPIC_PREFIX": topic_prefix,
            "EDGELOOP_FIRST_MODEL_OPTIONS": FIRST_MODEL_OPTIONS,
        },
        seed_from=catdog_train_dir,
        camera_from=catdog_captures_dir,
    )
    config = loaded(project.directory, project.env_file)
    infra = shared_endpoints(config, secure["EDGELOOP_KAFKA_BOOTSTRAP_SERVERS"])
    translation = Translation(config, run_root, infra)
    seed_tls_volume(translation)
    _, broker_argv = broker_config(translation, free_port())
    schema = str(dict(make_url(fresh_postgres_url).query)["options"]).removeprefix("-csearch_path=")

    shared = {"kafka", "postgres", "seaweedfs"}
    plans: dict[str, Plan] = {}
    for name, service in translation.services.items():
        if name in shared:
            continue
        if name == "mosquitto":
            depends = {dep: value["condition"] for dep, value in service["depends_on"].items()}
            plans[name] = Plan(name, broker_argv, {"PATH": BASE_ENV["PATH"]}, run_root, None, depends, job=False)
            continue
        assert "build" in service, f"{name}: an image this test does not know how to run"
        plans[name] = translation.plan(name, postgres_schema=schema, broker_uid=mosquitto_uid())
        # A one-shot job is one something waits for to complete.
        plans[name].job = any(
            (other.get("depends_on") or {}).get(name, {}).get("condition") == "service_completed_successfully"
            for other in translation.services.values()
        )
    assert {"first-model", "camera", "ingest", "inference-gateway", "model-server"} <= set(plans)

    stack = Stack(run_root)
    started = time.monotonic()
    try:
        up(stack, plans, shared, timeout_s=150)
        # The camera's pictures come back classified by the first model (through ingest, Kafka and the gateway).
        camera = stack.running["camera"]
        deadline = time.monotonic() + 60
        while not RESULT_LINE.search(camera.log.read_text(errors="replace")):
            failure = stack.failed()
            assert failure is None, failure
            assert time.monotonic() < deadline, "no classified result came back to the camera:\n" + "\n".join(
                f"--- {name}\n{running.tail(12)}" for name, running in stack.running.items()
            )
            time.sleep(0.5)
        result = RESULT_LINE.search(camera.log.read_text())
        assert result is not None
        photo, label, _, model, version = result.groups()
        assert photo in {path.name for path in catdog_captures_dir.iterdir()}
        assert label in {"cat", "dog"} and (model, version) == ("edgeloop-classifier", "1")
        first_model = stack.running["first-model"]
        assert (project.directory / "models/edgeloop-classifier/1/saved_model.pb").is_file(), first_model.tail()
        # ... and registered, promoted, with the reference statistics drift takes from the registry.
        token = (translation.volume("api-tokens") / "console.token").read_text().strip()
        registry = f"http://127.0.0.1:{translation.published['registry'][8083]}"
        version_one = httpx.get(
            f"{registry}/v1/models/edgeloop-classifier/versions/1", headers={"Authorization": f"Bearer {token}"}
        )
        assert version_one.status_code == 200, version_one.text
        assert version_one.json()["reference_stats"], version_one.json()
        # Every long-running service passes its own healthcheck (`docker compose up --wait`).
        deadline = time.monotonic() + 30
        for name, running in stack.running.items():
            if running.plan.job or running.plan.healthcheck is None:
                continue
            while not stack.check(name):
                assert time.monotonic() < deadline, f"{name} is not healthy:\n{running.tail()}"
                time.sleep(0.5)
        failure = stack.failed()
        assert failure is None, failure
        print(f"compose stack up and a picture classified in {time.monotonic() - started:.1f} s")
        # A second `docker compose up`: the jobs run again on the same volumes, keep what they made, exit 0.
        stack.stop()
        secrets = (".password", ".token", ".pem", ".key")
        made = {path: path.read_bytes() for path in (run_root / "volumes").rglob("*") if path.suffix in secrets}
        assert len(made) > 10
        again = Stack(run_root / "again")
        try:
            for name in ("tls-certs", "api-tokens", "mqtt-identities", "first-model"):
                again.start(plans[name])
                assert again.running[name].process.wait(60) == 0, again.running[name].tail()
        finally:
            again.stop()
        assert "none (all kept)" in again.running["mqtt-identities"].tail()
        assert "kept" in again.running["first-model"].tail()
        assert not (project.directory / "models/edgeloop-classifier/2").exists()
        assert {path: path.read_bytes() for path in made} == made
    finally:
        stack.stop()
        asyncio.run(delete_topics(kafka_bootstrap, topic_prefix))
        if os.environ.get("EDGELOOP_COMPOSE_RUN_LOGS"):  # keep the services' logs (and the translated config)
            kept = Path(os.environ["EDGELOOP_COMPOSE_RUN_LOGS"])
            shutil.copytree(run_root / "logs", kept, dirs_exist_ok=True)
            (kept / "plans.json").write_text(json.dumps({n: [p.argv, p.env] for n, p in plans.items()}, indent=1))

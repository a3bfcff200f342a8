"""Device and service identities on a secured MQTT broker: ``edgeloop device add|remove|list|add-service``.

Every device is a client of Mosquitto's dynamic-security plugin with its own password and its own role
(docs/security.md, "Device identity on MQTT"):

* username ``{site}/{device}`` (ids never contain ``/``, so the pair is unambiguous and no service name can
  look like it); role ``device/{site}/{device}``;
* it may publish only ``dt/edgeloop/{site}/{device}/image`` and ``…/telemetry``, and subscribe only to
  ``dt/edgeloop/{site}/{device}/result`` and ``cmd/edgeloop/{site}/{device}/#``; the plugin's default denies
  everything else.

Services have identities of their own (:data:`SERVICE_KINDS`): ``ingest`` (reads every device's pictures and
telemetry, sends capture commands), ``inference-gateway`` (sends results), ``edge-{site}`` (reads its site's
pictures, sends its site's results).

:class:`DynsecAdmin` makes the changes over the plugin's ``$CONTROL/dynamic-security/v1`` topic as the admin
identity; removing a device deletes its client, which the broker disconnects at once, and refuses from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from edgeloop_common import topics
from edgeloop_common.mqtt_asyncio import AsyncMqttClient, MqttUnavailableError
from edgeloop_common.mqtt_auth import MqttAuth
from edgeloop_common.settings import CommonSettings
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgeloop.secure_mqtt import (
    CONTROL_TOPIC,
    DynsecClient,
    count_refusals,
    generate_password,
    hash_password,
    issue_server_certificate,
    write_dynsec_config,
)

RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
SERVICE_KINDS = ("ingest", "inference-gateway", "edge")


class DeviceIdentityError(Exception):
    """The broker refused a change (the device exists already, is unknown, ...) or an id is invalid."""


class MqttAdminSettings(BaseSettings):
    """The admin identity: ``EDGELOOP_MQTT_ADMIN_USERNAME``, ``EDGELOOP_MQTT_ADMIN_PASSWORD`` (or
    ``EDGELOOP_MQTT_ADMIN_PASSWORD_FILE``, a file holding it)."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_MQTT_ADMIN_", extra="ignore")

    username: str = "edgeloop-admin"
    password: SecretStr = SecretStr("")
    password_file: Path | None = None


def check_id(value: str, what: str) -> str:
    if not _is_id(value):
        raise DeviceIdentityError(f"{value!r} is not a valid {what} id (letters, digits, '_', '.', '-'; 1-64)")
    return value


def _is_id(value: str) -> bool:
    return re.fullmatch(topics.ID_PATTERN, value) is not None


def device_username(site: str, device: str) -> str:
    return f"{check_id(site, 'site')}/{check_id(device, 'device')}"


def device_role(site: str, device: str) -> str:
    return f"device/{site}/{device}"


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def device_acls(site: str, device: str) -> list[dict[str, Any]]:
    """A device's rights: publish its own pictures and telemetry, subscribe to its own results and commands."""
    own = {"site": site, "device": device}
    return [
        _acl("publishClientSend", topics.MQTT_IMAGE.format(**own)),
        _acl("publishClientSend", topics.MQTT_TELEMETRY.format(**own)),
        _acl("subscribeLiteral", topics.MQTT_RESULT.format(**own)),
        _acl("subscribePattern", f"cmd/edgeloop/{site}/{device}/#"),
    ]


def service_username(kind: str, site: str | None = None) -> str:
    if kind not in SERVICE_KINDS:
        raise DeviceIdentityError(f"unknown service {kind!r}: one of {', '.join(SERVICE_KINDS)}")
    if kind == "edge":
        if not site:
            raise DeviceIdentityError("the edge agent's identity is per site: give its site")
        return f"edge-{check_id(site, 'site')}"
    return kind


def service_acls(kind: str, site: str | None = None) -> list[dict[str, Any]]:
    """A service's rights (the topics of docs/architecture.md it reads and writes)."""
    if kind == "ingest":
        return [
            _acl("subscribePattern", topics.MQTT_IMAGE_SUBSCRIPTION),
            _acl("subscribePattern", topics.MQTT_TELEMETRY_SUBSCRIPTION),
            _acl("publishClientSend", topics.MQTT_CAPTURE.format(site="+", device="+")),
        ]
    if kind == "inference-gateway":
        return [_acl("publishClientSend", topics.MQTT_RESULT.format(site="+", device="+"))]
    if kind == "edge":
        service_username(kind, site)
        return [
            _acl("subscribePattern", topics.MQTT_IMAGE.format(site=site, device="+")),
            _acl("publishClientSend", topics.MQTT_RESULT.format(site=site, device="+")),
        ]
    raise DeviceIdentityError(f"unknown service {kind!r}: one of {', '.join(SERVICE_KINDS)}")


@dataclass(frozen=True)
class DeviceIdentity:
    site: str
    device: str
    username: str
    disabled: bool = False


class DynsecAdmin:
    """The admin's connection to the dynamic-security plugin. ``async with DynsecAdmin(...) as admin:``."""

    def __init__(self, host: str, port: int, auth: MqttAuth, *, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._client = AsyncMqttClient(
            host, port, client_id=f"edgeloop-admin-{uuid.uuid4().hex[:8]}", on_message=self._on_message, auth=auth
        )

    async def __aenter__(self) -> DynsecAdmin:
        await self._client.connect(timeout_s=self.timeout_s)
        try:
            await self._client.subscribe(RESPONSE_TOPIC, qos=1, timeout_s=self.timeout_s)
        except BaseException:
            await self._client.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    async def command(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send one command, return the plugin's response (``data`` for a listing); raise on its ``error``."""
        correlation = uuid.uuid4().hex
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = answer
        body = {"commands": [{"command": command, "correlationData": correlation, **fields}]}
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._client.publish(CONTROL_TOPIC, json.dumps(body), qos=1)
                response = await answer
        except TimeoutError as exc:
            raise DeviceIdentityError(f"no answer from the dynamic-security plugin to {command}") from exc
        finally:
            self._waiting.pop(correlation, None)
        if "error" in response:
            raise DeviceIdentityError(f"{command}: {response['error']}")
        return dict(response.get("data") or {})

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            responses = json.loads(payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        for response in responses:
            waiting = self._waiting.get(str(response.get("correlationData")))
            if waiting is not None and not waiting.done():
                waiting.set_result(response)

    # -- devices --

    async def add_device(self, site: str, device: str, password: str) -> str:
        """Create the device's role and client; its username. The device exists already: DeviceIdentityError."""
        username, role = device_username(site, device), device_role(site, device)
        await self.command("createRole", rolename=role, acls=device_acls(site, device))
        try:
            await self.command("createClient", username=username, password=password, roles=[{"rolename": role}])
        except DeviceIdentityError:
            with contextlib.suppress(DeviceIdentityError):
                await self.command("deleteRole", rolename=role)
            raise
        return username

    async def remove_device(self, site: str, device: str) -> None:
        """Delete the device: the broker drops its connection at once and refuses it from now on."""
        await self.command("deleteClient", username=device_username(site, device))
        with contextlib.suppress(DeviceIdentityError):  # a role left over by hand: the client is what counts
            await self.command("deleteRole", rolename=device_role(site, device))

    async def list_devices(self) -> list[DeviceIdentity]:
        data = await self.command("listClients", verbose=True)
        devices = []
        for client in data.get("clients", []):
            site, _, device = str(client.get("username", "")).partition("/")
            if device and _is_id(site) and _is_id(device):
                devices.append(DeviceIdentity(site, device, client["username"], bool(client.get("disabled"))))
        return sorted(devices, key=lambda each: (each.site, each.device))

    # -- services --

    async def add_service(self, kind: str, password: str, *, site: str | None = None) -> str:
        """Create (or replace the rights of) a service's identity; its username."""
        username = service_username(kind, site)
        role = f"service/{username}"
        acls = service_acls(kind, site)
        try:
            await self.command("createRole", rolename=role, acls=acls)
        except DeviceIdentityError:
            # The role exists: add what this version grants. Never delete a role a client holds: Mosquitto 2.0.11
            # then crashes (segfault) at the client's next ACL check -- seen in tests/test_device_identity.py.
            for acl in acls:
                with contextlib.suppress(DeviceIdentityError):  # that ACL is there already
                    await self.command("addRoleACL", rolename=role, **acl)
        try:
            await self.command("createClient", username=username, password=password, roles=[{"rolename": role}])
        except DeviceIdentityError:  # exists: new password, same role
            await self.command("setClientPassword", username=username, password=password)
            with contextlib.suppress(DeviceIdentityError):  # holds it already
                await self.command("addClientRole", username=username, rolename=role)
        return username


# -- identities made before the broker starts (docker-compose.yml's mqtt-identities job) --


def service_kind(username: str) -> tuple[str, str | None]:
    """``ingest`` -> ("ingest", None); ``edge-site-a`` -> ("edge", "site-a")."""
    if username.startswith("edge-"):
        site = username.removeprefix("edge-")
        service_username("edge", site)
        return "edge", site
    service_username(username)
    return username, None


@dataclass(frozen=True)
class BootstrapResult:
    made: tuple[str, ...]
    """Identities whose password was made now (the others were kept)."""
    dynsec_written: bool
    broker_certificate_made: bool


def bootstrap_identities(
    *,
    dynsec_file: Path,
    passwords_dir: Path,
    admin_password_file: Path,
    services: tuple[str, ...],
    admin_username: str = "edgeloop-admin",
    tls_dir: Path | None = None,
    broker_hosts: tuple[str, ...] = (),
    owner: int | None = None,
    broker_uid: int | None = None,
    devices: tuple[tuple[str, str], ...] = (),
    devices_dir: Path | None = None,
) -> BootstrapResult:
    """The broker's first identities, before it starts: the admin's password (``admin_password_file``), a password
    per service (``passwords_dir/<username>.password``, 0600, given to ``owner``), the plugin's file holding them
    all hashed (given to ``broker_uid``, who rewrites it), and with ``tls_dir`` the broker's certificate
    (``mosquitto.pem``/``mosquitto.key``) signed by the CA there (``ca.pem``, ``ca.key``). What exists is kept: a
    second run adds only what is missing (a new service), so the devices added since stay.

    ``devices`` ((site, device) pairs): device identities made the same way, each with its own topics' rights and
    its password in ``devices_dir/<site>/<device>.password`` (a folder apart from the services': a device, e.g.
    compose's simulated camera, mounts only its own)."""
    for username in services:
        service_kind(username)  # an unknown service: DeviceIdentityError before anything is written
    for site, device in devices:
        device_username(site, device)  # an invalid id: DeviceIdentityError before anything is written
    if devices and devices_dir is None:
        raise DeviceIdentityError("device identities need a folder for their passwords (devices_dir)")
    passwords_dir.mkdir(parents=True, exist_ok=True)
    admin_password_file.parent.mkdir(parents=True, exist_ok=True)
    admin_password_file.parent.chmod(0o700)  # the admin's password is for the operator, never a service
    admin_new = not admin_password_file.exists()
    admin_password = _kept_or_new(admin_password_file)
    made = []
    passwords = {}
    for username in services:
        path = passwords_dir / f"{username}.password"
        if not path.exists():
            made.append(username)
        passwords[username] = _kept_or_new(path)
    device_clients = []
    for site, device in devices:
        assert devices_dir is not None
        (devices_dir / site).mkdir(parents=True, exist_ok=True)
        username = device_username(site, device)
        if not (devices_dir / site / f"{device}.password").exists():
            made.append(username)
        device_clients.append(
            DynsecClient(
                username=username,
                password=_kept_or_new(devices_dir / site / f"{device}.password"),
                rolename=device_role(site, device),
                acls=tuple(device_acls(site, device)),
                text_name=f"device {device} at {site}",
            )
        )
    renewed = {name for name in made} | ({admin_username} if admin_new else set())
    clients = tuple(
        DynsecClient(
            username=name,
            password=passwords[name],
            rolename=f"service/{name}",
            acls=tuple(service_acls(*service_kind(name))),
            text_name=f"EdgeLoop {name} service",
        )
        for name in services
    ) + tuple(device_clients)
    written = _write_dynsec(dynsec_file, admin_username, admin_password, clients, renewed)
    certificate_made = False
    if tls_dir is not None:
        cert_file, key_file = tls_dir / "mosquitto.pem", tls_dir / "mosquitto.key"
        if not (cert_file.exists() and key_file.exists()):
            ca_key = tls_dir / "ca.key"
            if not ca_key.exists():
                raise DeviceIdentityError(
                    f"{tls_dir} holds no ca.key to sign the broker's certificate: put mosquitto.pem and "
                    "mosquitto.key (a certificate for the broker's host name, signed by ca.pem) there"
                )
            issue_server_certificate(tls_dir / "ca.pem", ca_key, broker_hosts or ("mosquitto",), cert_file, key_file)
            cert_file.chmod(0o644)
            certificate_made = True
        if broker_uid is not None:
            os.chown(key_file, broker_uid, broker_uid)  # the broker reads its key; nobody else
    if owner is not None:
        for path in [passwords_dir, *passwords_dir.iterdir()]:
            os.chown(path, owner, owner)
        if devices_dir is not None and devices:
            for path in [devices_dir, *devices_dir.rglob("*")]:
                os.chown(path, owner, owner)
    if broker_uid is not None:  # the plugin rewrites its file (write, rename): the folder is the broker's too
        for path in [dynsec_file.parent, dynsec_file]:
            os.chown(path, broker_uid, broker_uid)
    return BootstrapResult(tuple(made), written, certificate_made)


def _site_device(name: str) -> tuple[str, str]:
    site, slash, device = name.partition("/")
    if not slash:
        raise DeviceIdentityError(f"{name!r}: a device is named SITE/DEVICE")
    return site, device


def _kept_or_new(path: Path) -> str:
    if path.exists():
        password = path.read_text().strip()
        if not password:
            raise DeviceIdentityError(f"{path} is empty: remove it to have a new password made")
        return password
    password = generate_password()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
    return password


def _write_dynsec(
    path: Path, admin_username: str, admin_password: str, clients: tuple[DynsecClient, ...], renewed: set[str]
) -> bool:
    """Write the plugin's file, or add to the one there what it lacks: a listed client it does not hold, and the
    new password of one whose password file was made now. False when nothing changed."""
    if not path.exists():
        write_dynsec_config(path, admin_username, admin_password, clients)
        return True
    config = json.loads(path.read_text())
    by_name = {client.get("username"): client for client in config.setdefault("clients", [])}
    roles = {role.get("rolename") for role in config.setdefault("roles", [])}
    changed = False
    if admin_username in renewed and admin_username in by_name:
        by_name[admin_username].update(hash_password(admin_password))
        changed = True
    for client in clients:
        if client.rolename not in roles:
            config["roles"].append({"rolename": client.rolename, "acls": list(client.acls)})
            changed = True
        if client.username not in by_name:
            config["clients"].append(
                {"username": client.username, "textName": client.text_name, "roles": [{"rolename": client.rolename}]}
                | hash_password(client.password)
            )
            changed = True
        elif client.username in renewed:
            by_name[client.username].update(hash_password(client.password))
            changed = True
    if changed:  # replaced whole (write, rename), as the plugin itself does
        fresh = path.with_name(path.name + ".new")
        fresh.write_text(json.dumps(config, indent=2))
        fresh.chmod(0o600)
        fresh.replace(path)
    return changed


# -- the commands (registered under `edgeloop device` by edgeloop.main) --


def _admin_connection(admin_password_file: Path | None) -> tuple[str, int, MqttAuth]:
    common, admin = CommonSettings(), MqttAdminSettings()
    password_file = admin_password_file or (admin.password_file if not admin.password.get_secret_value() else None)
    password = password_file.read_text().strip() if password_file else admin.password.get_secret_value()
    if not password:
        raise DeviceIdentityError(
            "the broker's admin password is needed: EDGELOOP_MQTT_ADMIN_PASSWORD or --admin-password-file"
        )
    tls = common.mqtt_auth()
    auth = MqttAuth(username=admin.username, password=password, tls=tls.tls, ca_file=tls.ca_file)
    return common.mqtt_host, common.mqtt_port, auth


def _run(admin_password_file: Path | None, action: Any) -> Any:
    async def main() -> Any:
        host, port, auth = _admin_connection(admin_password_file)
        async with DynsecAdmin(host, port, auth) as admin:
            return await action(admin)

    try:
        return asyncio.run(main())
    except (DeviceIdentityError, MqttUnavailableError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _password(password_file: Path | None) -> tuple[str, bool]:
    """The password from the file, or a generated one (True: print it, it is shown only once)."""
    if password_file is not None:
        password = password_file.read_text().strip()
        if not password:
            raise typer.BadParameter(f"{password_file} is empty")
        return password, False
    return generate_password(), True


AdminPasswordFile = Annotated[
    Path | None,
    typer.Option(
        "--admin-password-file", help="File holding the broker admin's password [EDGELOOP_MQTT_ADMIN_PASSWORD]."
    ),
]
PasswordFile = Annotated[
    Path | None,
    typer.Option("--password-file", help="File holding the new password; default: generate one and print it."),
]


def add(
    site: Annotated[str, typer.Argument(help="Site id.")],
    device: Annotated[str, typer.Argument(help="Device id.")],
    password_file: PasswordFile = None,
    admin_password_file: AdminPasswordFile = None,
) -> None:
    """Give a device its identity on the secured broker (username SITE/DEVICE) and its own topics' rights."""
    password, generated = _password(password_file)
    username = _run(admin_password_file, lambda admin: admin.add_device(site, device, password))
    typer.echo(f"device {username} added")
    if generated:
        typer.echo(f"password (shown once): {password}")


def remove(
    site: Annotated[str, typer.Argument(help="Site id.")],
    device: Annotated[str, typer.Argument(help="Device id.")],
    admin_password_file: AdminPasswordFile = None,
) -> None:
    """Remove a device: the broker drops its connection at once and refuses it from now on."""
    _run(admin_password_file, lambda admin: admin.remove_device(site, device))
    typer.echo(f"device {site}/{device} removed")


def list_(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
    admin_password_file: AdminPasswordFile = None,
) -> None:
    """The devices the broker knows."""
    devices = _run(admin_password_file, lambda admin: admin.list_devices())
    if as_json:
        typer.echo(json.dumps([{"site": d.site, "device": d.device, "disabled": d.disabled} for d in devices]))
        return
    for each in devices:
        typer.echo(f"{each.site}\t{each.device}{'  (disabled)' if each.disabled else ''}")


def add_service(
    kind: Annotated[str, typer.Argument(help=f"One of {', '.join(SERVICE_KINDS)}.")],
    site: Annotated[str | None, typer.Option("--site", help="The edge agent's site.")] = None,
    password_file: PasswordFile = None,
    admin_password_file: AdminPasswordFile = None,
) -> None:
    """Create (or renew) a service's identity with its rights (ingest, inference-gateway, edge --site S)."""
    password, generated = _password(password_file)
    username = _run(admin_password_file, lambda admin: admin.add_service(kind, password, site=site))
    typer.echo(f"service identity {username} ready")
    if generated:
        typer.echo(f"password (shown once): {password}")


def refusals(log: Annotated[Path, typer.Option("--log", help="The secured broker's log file.")]) -> None:
    """What the broker refused, counted from its log: connections, and publishes its ACL denied."""
    counts = count_refusals(log.read_text(errors="replace"))
    typer.echo(f"connections refused: {counts.connections}\npublishes denied: {counts.publishes}")


def bootstrap(
    passwords_dir: Annotated[Path, typer.Argument(help="Where each service's <username>.password goes.")],
    services: Annotated[
        str, typer.Option("--services", help="Comma-separated: ingest, inference-gateway, edge-SITE.")
    ] = "ingest,inference-gateway",
    dynsec_file: Annotated[
        Path, typer.Option("--dynsec-file", help="The dynamic-security plugin's file (plugin_opt_config_file).")
    ] = Path("/mosquitto/data/dynamic-security.json"),
    admin_password_file: Annotated[
        Path, typer.Option("--admin-password-file", help="Where the admin's password is kept (not for services).")
    ] = Path("/run/edgeloop-mqtt-admin/admin.password"),
    tls_dir: Annotated[
        Path | None,
        typer.Option("--tls-dir", help="Folder with ca.pem and ca.key: the broker's mosquitto.pem/.key made there."),
    ] = None,
    broker_hosts: Annotated[
        str, typer.Option("--broker-hosts", help="Comma-separated names of the broker's certificate.")
    ] = "mosquitto,localhost,127.0.0.1",
    owner: Annotated[int, typer.Option("--owner", help="Give the password files to this uid, e.g. 10001.")] = -1,
    broker_uid: Annotated[
        int, typer.Option("--broker-uid", help="Give the plugin's file and the broker's key to this uid (1883).")
    ] = -1,
    devices: Annotated[
        str,
        typer.Option(
            "--devices", help="Comma-separated SITE/DEVICE identities to make too (e.g. a simulated camera's)."
        ),
    ] = "",
    devices_dir: Annotated[
        Path | None,
        typer.Option("--devices-dir", help="With --devices: where each device's SITE/DEVICE.password goes."),
    ] = None,
) -> None:
    """The secured broker's first identities, before it starts (docker-compose.yml's mqtt-identities job): the
    admin, a password per service, the plugin's file, the broker's TLS certificate. Kept across runs."""
    try:
        result = bootstrap_identities(
            dynsec_file=dynsec_file,
            passwords_dir=passwords_dir,
            admin_password_file=admin_password_file,
            services=tuple(name.strip() for name in services.split(",") if name.strip()),
            tls_dir=tls_dir,
            broker_hosts=tuple(host.strip() for host in broker_hosts.split(",") if host.strip()),
            owner=owner if owner >= 0 else None,
            broker_uid=broker_uid if broker_uid >= 0 else None,
            devices=tuple(_site_device(name.strip()) for name in devices.split(",") if name.strip()),
            devices_dir=devices_dir,
        )
    except (DeviceIdentityError, OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    made = ", ".join(result.made) or "none (all kept)"
    typer.echo(
        f"mqtt identities: passwords made for {made}; the broker's file {dynsec_file} "
        f"{'written' if result.dynsec_written else 'kept'}"
    )
    if result.broker_certificate_made:
        typer.echo(f"mqtt: the broker's certificate made in {tls_dir} (mosquitto.pem, mosquitto.key)")


def register(app: typer.Typer) -> None:
    """Add the identity commands to ``edgeloop device``."""
    app.command("bootstrap")(bootstrap)
    app.command("add")(add)
    app.command("remove")(remove)
    app.command("list")(list_)
    app.command("add-service")(add_service)
    app.command("refusals")(refusals)

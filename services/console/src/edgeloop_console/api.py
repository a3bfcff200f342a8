"""The console's pages and actions: server-rendered HTML, each page a plain link, each action a POST form.

Every route but sign-in needs a session; every POST needs the session's CSRF token, and every action (a POST
but sign-out) a role that may act (operator, admin): a viewer sees no action and is refused if it posts anyway.
A page reads the services it shows when it is asked for, as the signed-in user (its API token); a service that
does not answer becomes a notice on the page, not an error page.
Actions redirect (303) to the page they belong to with a flash message: the service's answer, or its refusal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote, urlencode

from edgeloop_common.api_auth import TokenRefusedError, TokenStore, own_token
from edgeloop_common.http_errors import StatusForError
from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from edgeloop_console import service as views
from edgeloop_console.adapters.services import ServiceClients, ServiceError
from edgeloop_console.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    FLASH_COOKIE,
    SESSION_COOKIE,
    SIGN_IN_ROLES,
    Session,
    Signer,
    safe_next,
    same_origin,
)
from edgeloop_console.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["console"])

# Domain errors -> HTTP status (installed by app.py). Pages turn services' errors into notices: none to map.
STATUS_FOR_ERROR: StatusForError = {}

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
T = TypeVar("T")

NAV = (
    ("/", "Overview"),
    ("/models", "Models"),
    ("/pictures", "Pictures"),
    ("/labeling", "Labeling"),
    ("/devices", "Devices"),
    ("/drift", "Drift and training"),
)
# The overview's charts: the window and its buckets, by the ?window= of the page
CHART_WINDOWS = {"24h": (24, 3600), "7d": (7 * 24, 6 * 3600)}
SERVED_BY = ("edge", "cloud")
CAPTURE_POLL_TRIES = 30  # polls (1 s apart) for the picture a capture asked for


class SignInRequiredError(Exception):
    def __init__(self, path: str) -> None:
        self.path = path


class CsrfRefusedError(Exception):
    pass


class RoleRefusedError(Exception):
    def __init__(self, role: str) -> None:
        self.role = role


# -- dependencies ---------------------------------------------------------------------------------------------


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_signer(request: Request) -> Signer:
    signer: Signer = request.app.state.signer
    return signer


def require_session(request: Request, signer: Annotated[Signer, Depends(get_signer)]) -> Session:
    session = signer.session(request.cookies.get(SESSION_COOKIE))
    if session is not None and session.token_id:
        session = _still_valid(request.app.state.token_store, session)
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequiredError(target)
    request.state.session = session
    return session


def _still_valid(store: TokenStore | None, session: Session) -> Session | None:
    """The session with its token's current role, or None once the token is removed (signed out at once)."""
    if store is None:
        return None
    try:
        principal = store.authenticate(session.api_token)
    except TokenRefusedError as refused:
        log.info("console session of token %s ended: %s", session.token_id, refused.reason)
        return None
    if principal.role not in SIGN_IN_ROLES:
        return None
    return replace(session, role=principal.role, name=principal.name)


def get_clients(request: Request, session: Annotated[Session, Depends(require_session)]) -> ServiceClients:
    """The service clients, calling as the signed-in user (its token: the services enforce its role)."""
    clients: ServiceClients = request.app.state.clients
    return clients.as_user(session.api_token)


async def require_csrf(
    request: Request,
    session: Annotated[Session, Depends(require_session)],
    signer: Annotated[Signer, Depends(get_signer)],
) -> Session:
    """A POST from this console: same origin, and the session's CSRF token in the form or the header."""
    if not same_origin(request.headers.get("origin"), request.headers.get("host")):
        raise CsrfRefusedError()
    offered = request.headers.get(CSRF_HEADER)
    if offered is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        offered = value if isinstance(value, str) else None
    if not signer.csrf_ok(session, offered):
        raise CsrfRefusedError()
    return session


async def require_action(session: Annotated[Session, Depends(require_csrf)]) -> Session:
    """An action (label, capture, promote, deploy, roll back): a CSRF-checked POST by a role that may act."""
    if not session.can_act:
        raise RoleRefusedError(session.role)
    return session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SignerDep = Annotated[Signer, Depends(get_signer)]
Clients = Annotated[ServiceClients, Depends(get_clients)]
SessionDep = Annotated[Session, Depends(require_session)]
CsrfDep = Annotated[Session, Depends(require_csrf)]
PostDep = Annotated[Session, Depends(require_action)]


def install_page_handlers(app: FastAPI) -> None:
    @app.exception_handler(SignInRequiredError)
    async def sign_in_first(request: Request, exc: SignInRequiredError) -> Response:
        target = "/signin?" + urlencode({"next": exc.path})
        if request.headers.get("hx-request"):  # htmx: a full-page redirect, not a sign-in form inside a fragment
            return Response(status_code=401, headers={"HX-Redirect": target})
        if request.url.path.endswith("/image"):
            return Response("sign in first", status_code=401, media_type="text/plain")
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(RoleRefusedError)
    async def role_refused(request: Request, exc: RoleRefusedError) -> Response:
        log.warning("POST %s refused: the %s role may not act", request.url.path, exc.role)
        return HTMLResponse(
            f"<!doctype html><title>Refused</title><p>Your role ({exc.role}) may look, not act: "
            'ask for an operator\'s token. <a href="/">Back to the console</a></p>',
            status_code=403,
        )

    @app.exception_handler(CsrfRefusedError)
    async def csrf_refused(request: Request, exc: CsrfRefusedError) -> Response:
        log.warning("POST %s refused: missing or wrong CSRF token, or another origin", request.url.path)
        return HTMLResponse(
            "<!doctype html><title>Refused</title><p>This form is stale or did not come from the console: "
            '<a href="/">reload the console</a> and try again.</p>',
            status_code=403,
        )


# -- rendering ------------------------------------------------------------------------------------------------


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    session: Session | None = getattr(request.state, "session", None)
    signer = get_signer(request)
    flash = signer.read_flash(request.cookies.get(FLASH_COOKIE))
    response = templates.TemplateResponse(
        request,
        name,
        {
            "nav": NAV,
            "path": request.url.path,
            "csrf_token": session.csrf_token if session else "",
            "role": session.role if session else "",
            "can_act": bool(session and session.can_act),
            "flash": flash,
            **context,
        },
        status_code=status_code,
    )
    if request.cookies.get(FLASH_COOKIE):
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def redirect_with(request: Request, target: str, kind: str, text: str) -> RedirectResponse:
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        FLASH_COOKIE,
        get_signer(request).flash(kind, text),
        max_age=60,
        path="/",
        httponly=True,
        samesite="strict",
        secure=get_settings(request).secure_cookies,
    )
    return response


async def attempt(call: Awaitable[T], problems: list[str]) -> T | None:
    """The call's answer, or None with the reason added to the page's notices."""
    try:
        return await call
    except ServiceError as exc:
        problems.append(str(exc))
        return None


# -- sign-in --------------------------------------------------------------------------------------------------


@router.get("/signin", response_class=HTMLResponse)
async def signin_page(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "signin.html", {"next": safe_next(next), "error": None})


@router.post("/signin", response_class=HTMLResponse)
async def signin(
    request: Request,
    signer: SignerDep,
    settings: SettingsDep,
    token: Annotated[str, Form(max_length=4096)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    who = _signing_in(request, signer, settings, token)
    if who is None or not same_origin(request.headers.get("origin"), request.headers.get("host")):
        await asyncio.sleep(0.5)  # slows guessing down
        log.warning("console sign-in refused from %s", request.client.host if request.client else "?")
        context = {"next": safe_next(next), "error": "That token does not sign in here."}
        return render(request, "signin.html", context, status_code=401)
    cookie, session = signer.new_session(
        role=who["role"], name=who["name"], token_id=who.get("token_id", ""), api_token=who["api_token"]
    )
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=settings.session_max_age_s,
        path="/",
        httponly=True,
        samesite="strict",
        secure=settings.secure_cookies,
    )
    log.info("console sign-in: %s (%s, token %s)", session.name, session.role, session.token_id or "admin token")
    return response


def _signing_in(request: Request, signer: Signer, settings: Settings, token: str) -> dict[str, str] | None:
    """Who the token signs in (role, name, token id, the token the services get), or None."""
    if signer.token_matches(token):
        return {"role": "admin", "name": "admin token", "api_token": own_token(settings.common)}
    store: TokenStore | None = request.app.state.token_store
    if store is None or not token:
        return None
    try:
        principal = store.authenticate(token)
    except TokenRefusedError as refused:
        log.warning("console sign-in with token %s refused: %s", refused.token_id or "-", refused.reason)
        return None
    if principal.role not in SIGN_IN_ROLES:
        log.warning("console sign-in with token %s refused: a %s token", principal.token_id, principal.role)
        return None
    return {"role": principal.role, "name": principal.name, "token_id": principal.token_id, "api_token": token}


@router.post("/signout")
async def signout(_: CsrfDep) -> Response:
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- overview -------------------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def overview_page(request: Request, _: SessionDep, clients: Clients, window: str = "24h") -> HTMLResponse:
    problems: list[str] = []
    window = window if window in CHART_WINDOWS else "24h"
    hours, bucket_s = CHART_WINDOWS[window]
    deployments, drift, activity, dead_letters = await asyncio.gather(
        attempt(clients.deployments(), problems),
        attempt(clients.drift(alarms_limit=100), problems),
        attempt(clients.activity(hours=hours, bucket_s=bucket_s), problems),
        attempt(clients.dead_letters(), problems),
    )
    sites = views.overview(deployments or [], drift, activity, dead_letters)
    context = {
        "sites": sites,
        "dead_letter_count": (dead_letters or {}).get("count"),
        "unsited_dead_letters": views.unsited(dead_letters),
        "problems": problems,
        "drifted": views.drifted_features,
        "window": window,
        "windows": list(CHART_WINDOWS),
    }
    return render(request, "overview.html", context)


# -- models ---------------------------------------------------------------------------------------------------


@router.get("/models", response_class=HTMLResponse)
async def models_page(
    request: Request, _: SessionDep, clients: Clients, settings: SettingsDep, model: str | None = None
) -> HTMLResponse:
    problems: list[str] = []
    name = model or settings.model_name
    models, versions, aliases, deployments = await asyncio.gather(
        attempt(clients.models(), problems),
        attempt(clients.versions(name), problems),
        attempt(clients.aliases(name), problems),
        attempt(clients.deployments(), problems),
    )
    rows = views.version_rows(versions or [], aliases or [], deployments or [], name)
    classes = sorted({c for row in rows for c in (*row.train_counts, *row.eval_counts)})
    context = {
        "model": name,
        "models": models or [],
        "rows": rows,
        "classes": classes,
        "aliases": aliases or [],
        "production": views.production_version(aliases or []),
        "deployments": [d for d in deployments or [] if d.get("model_name") == name],
        "problems": problems,
    }
    return render(request, "models.html", context)


CONFIRM_ACTIONS = {"promote", "rollback", "deploy", "delete", "rollback-deployment"}


@router.get("/models/{model}/confirm", response_class=HTMLResponse)
async def confirm_page(
    request: Request,
    model: str,
    _: SessionDep,
    clients: Clients,
    action: str,
    version: Annotated[int | None, Query(ge=1)] = None,
    node_group: str | None = None,
) -> Response:
    if action not in CONFIRM_ACTIONS:
        return redirect_with(request, _models_url(model), "error", f"unknown action {action!r}")
    problems: list[str] = []
    groups: list[str] = []
    if action == "deploy":
        deployments = await attempt(clients.deployments(), problems) or []
        groups = sorted({d["node_group"] for d in deployments})
    context = {
        "model": model,
        "action": action,
        "version": version,
        "node_group": node_group,
        "groups": groups,
        "problems": problems,
    }
    return render(request, "confirm.html", context)


def _models_url(model: str) -> str:
    return "/models?" + urlencode({"model": model})


@router.post("/models/{model}/promote")
async def promote(
    request: Request,
    model: str,
    _: PostDep,
    clients: Clients,
    settings: SettingsDep,
    version: Annotated[int, Form(ge=1)],
    reason: Annotated[str, Form(min_length=1, max_length=2000)],
) -> Response:
    try:
        answer = await clients.promote(model, version, reason=reason, actor=settings.labeled_by)
    except ServiceError as exc:
        return redirect_with(request, _models_url(model), "error", f"Promotion of version {version} failed: {exc}")
    if answer["promoted"]:
        text = f"Version {version} is production now (was {answer.get('previous_version') or 'none'}). "
        return redirect_with(request, _models_url(model), "ok", text + answer["decision"])
    text = f"The registry refused to promote version {version}: {answer['decision']}"
    return redirect_with(request, _models_url(model), "refused", text)


@router.post("/models/{model}/rollback")
async def roll_back(
    request: Request,
    model: str,
    _: PostDep,
    clients: Clients,
    settings: SettingsDep,
    reason: Annotated[str, Form(min_length=1, max_length=2000)],
) -> Response:
    try:
        answer = await clients.roll_back(model, reason=reason, actor=settings.labeled_by)
    except ServiceError as exc:
        return redirect_with(request, _models_url(model), "error", f"Roll back refused: {exc}")
    text = f"Production rolled back to version {answer['version']} (was {answer.get('previous_version')})."
    return redirect_with(request, _models_url(model), "ok", text)


@router.post("/models/{model}/deploy")
async def deploy(
    request: Request,
    model: str,
    _: PostDep,
    clients: Clients,
    version: Annotated[int, Form(ge=1)],
    node_group: Annotated[str, Form(min_length=1, max_length=64)],
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    try:
        answer = await clients.deploy(model, version, node_group, reason=reason or "deployed from the console")
    except ServiceError as exc:
        return redirect_with(request, _models_url(model), "error", f"Deploy refused: {exc}")
    rollout = answer["rollout"]
    text = f"Rolling version {version} out to {node_group} (rollout {rollout['rollout_id']}, {rollout['phase']})."
    return redirect_with(request, _models_url(model), "ok", text)


@router.post("/models/{model}/deployments/{node_group}/delete")
async def delete_deployment(request: Request, model: str, node_group: str, _: PostDep, clients: Clients) -> Response:
    try:
        await clients.delete_deployment(model, node_group)
    except ServiceError as exc:
        return redirect_with(request, _models_url(model), "error", f"Delete refused: {exc}")
    return redirect_with(request, _models_url(model), "ok", f"{model} no longer served in {node_group}.")


@router.post("/models/{model}/deployments/{node_group}/rollback")
async def roll_back_deployment(
    request: Request,
    model: str,
    node_group: str,
    _: PostDep,
    clients: Clients,
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    try:
        answer = await clients.roll_back_deployment(model, node_group, reason=reason or "rolled back from the console")
    except ServiceError as exc:
        return redirect_with(request, _models_url(model), "error", f"Roll back of {node_group} refused: {exc}")
    text = f"{node_group} rolls back to version {answer['rollout']['version']}."
    return redirect_with(request, _models_url(model), "ok", text)


# -- pictures -------------------------------------------------------------------------------------------------


@router.get("/pictures", response_class=HTMLResponse)
async def pictures_page(
    request: Request,
    _: SessionDep,
    clients: Clients,
    settings: SettingsDep,
    site: str = "",
    device: str = "",
    predicted: str = "",
    label: str = "",
    hard: str = "",
    served: str = "",
    unlabelled: str = "",
    after: str = "",
    limit: Annotated[int | None, Query(ge=1, le=200)] = None,
) -> HTMLResponse:
    problems: list[str] = []
    filters = {
        "site_id": site,
        "device_id": device,
        "predicted_label": predicted,
        "label": label,
        "hard_example": {"yes": True, "no": False}.get(hard),
        "served_by": served if served in SERVED_BY else None,
        "labeled": False if unlabelled else None,
    }
    page = await attempt(clients.samples(**filters, limit=limit or settings.page_size, after=after), problems)
    query = {"site": site, "device": device, "predicted": predicted, "label": label, "hard": hard, "served": served}
    query |= {"unlabelled": unlabelled, "limit": str(limit or "")}
    kept = {k: v for k, v in query.items() if v}
    next_url = "/pictures?" + urlencode({**kept, "after": page["next"]}) if page and page.get("next") else None
    context = {
        "samples": (page or {}).get("samples", []),
        "filters": query,
        "next_url": next_url,
        "first_url": "/pictures?" + urlencode(kept) if after else None,
        "problems": problems,
        "ranked": views.ranked_scores,
    }
    return render(request, "pictures.html", context)


@router.get("/pictures/{sample_id}/image")
async def picture_image(request: Request, sample_id: str, _: SessionDep, clients: Clients) -> Response:
    """The picture, proxied from ingest: the browser never talks to a service itself."""
    try:
        image = await clients.sample_image(sample_id)
    except ServiceError as exc:
        return Response(exc.reason, status_code=exc.status or 502, media_type="text/plain")
    headers = {"Cache-Control": "private, max-age=3600"}
    if image.etag:
        headers["ETag"] = image.etag
    return Response(image.data, media_type=image.content_type, headers=headers)


# -- labeling -------------------------------------------------------------------------------------------------


async def _classes(clients: ServiceClients, settings: Settings, sample: dict[str, Any] | None) -> list[str]:
    registry: list[str] = []
    if not settings.class_list():
        name = (sample or {}).get("model_name") or settings.model_name
        try:
            versions, aliases = await asyncio.gather(clients.versions(name), clients.aliases(name))
            registry = views.classes_of_versions(versions, views.production_version(aliases))
        except ServiceError:
            registry = []
    return views.label_classes(settings.class_list(), registry, sample)


@router.get("/labeling", response_class=HTMLResponse)
async def labeling_page(
    request: Request,
    _: SessionDep,
    clients: Clients,
    settings: SettingsDep,
    site: str = "",
    after: str = "",
    sample: str = "",
    done: str = "",
) -> HTMLResponse:
    problems: list[str] = []
    history = views.parse_history(done)
    current: dict[str, Any] | None = None
    next_cursor: str | None = None
    counting = attempt(clients.labeling_queue_count(site_id=site or None), problems)
    if sample:  # Undo: the picture labeled last, to label again
        current, waiting = await asyncio.gather(attempt(clients.sample(sample), problems), counting)
    else:
        queue = attempt(clients.labeling_queue(site_id=site or None, limit=1, after=after or None), problems)
        page, waiting = await asyncio.gather(queue, counting)
        if page and page["samples"]:
            current = page["samples"][0]
            next_cursor = page.get("next")
    context = {
        "sample": current,
        "classes": await _classes(clients, settings, current),
        "waiting": waiting,
        "site": site,
        "after": after,
        "skip_url": "/labeling?" + urlencode({"site": site, "after": next_cursor, "done": done})
        if next_cursor
        else None,
        "undo_url": "/labeling?"
        + urlencode({"site": site, "after": after, "sample": history[-1], "done": ",".join(history[:-1])})
        if history
        else None,
        "done": ",".join(history),
        "problems": problems,
        "ranked": views.ranked_scores,
        "relabel": bool(sample),
    }
    return render(request, "labeling.html", context)


def _undo_url(site: str, after: str, history: list[str]) -> str | None:
    """Show the picture labeled last again, to label it anew (ingest keeps a label until it is replaced)."""
    if not history:
        return None
    query = {"site": site, "after": after, "sample": history[-1], "done": ",".join(history[:-1])}
    return "/labeling?" + urlencode(query)


@router.post("/labeling/label")
async def label_sample(
    request: Request,
    _: PostDep,
    clients: Clients,
    settings: SettingsDep,
    sample_id: Annotated[str, Form(min_length=1, max_length=64)],
    label: Annotated[str, Form(min_length=1, max_length=64)],
    site: Annotated[str, Form(max_length=64)] = "",
    after: Annotated[str, Form(max_length=512)] = "",
    done: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    history = views.parse_history(done)
    try:
        await clients.label(sample_id, label, settings.labeled_by)
    except ServiceError as exc:
        target = "/labeling?" + urlencode({"site": site, "after": after, "done": ",".join(history)})
        return redirect_with(request, target, "error", f"Label not saved: {exc}")
    history = views.push_history(history, sample_id)
    target = "/labeling?" + urlencode({"site": site, "after": after, "done": ",".join(history)})
    return redirect_with(request, target, "ok", f"Labeled {label}.")


# -- devices --------------------------------------------------------------------------------------------------


@router.get("/devices", response_class=HTMLResponse)
async def devices_page(request: Request, _: SessionDep, clients: Clients) -> HTMLResponse:
    problems: list[str] = []
    devices = await attempt(clients.devices(), problems) or []
    latest = await asyncio.gather(
        *(_latest(clients, d["site_id"], d["device_id"], d["last_received_at"]) for d in devices)
    )
    for device, sample in zip(devices, latest, strict=True):
        device["latest"] = sample
    context = {"sites": views.devices_by_site(devices), "problems": problems, "ranked": views.ranked_scores}
    return render(request, "devices.html", context)


async def _latest(clients: ServiceClients, site: str, device: str, since: str) -> dict[str, Any] | None:
    """The newest picture of the device, read as the page of pictures received since the newest one (bounded)."""
    try:
        page = await clients.samples(site_id=site, device_id=device, since=since, limit=5)
    except ServiceError:
        return None
    return page["samples"][-1] if page["samples"] else None


@router.post("/devices/{site}/{device}/capture", response_class=HTMLResponse)
async def take_picture(
    request: Request, site: str, device: str, _: PostDep, clients: Clients, settings: SettingsDep
) -> Response:
    htmx = bool(request.headers.get("hx-request"))
    try:
        answer = await clients.capture(site, device, settings.labeled_by)
    except ServiceError as exc:
        if htmx:
            return render(request, "partials/capture.html", {"error": str(exc), "site": site, "device": device})
        return redirect_with(request, "/devices", "error", f"Take picture failed: {exc}")
    if not htmx:
        return redirect_with(request, "/devices", "ok", f"Asked {site}/{device} for a picture; reload to see it.")
    return render(request, "partials/capture.html", _capture_context(site, device, answer["requested_at"], 0, None))


def _capture_context(site: str, device: str, since: str, tries: int, sample: dict[str, Any] | None) -> dict[str, Any]:
    answered = sample is not None and sample.get("predicted_label") is not None
    poll = None
    if not answered and tries < CAPTURE_POLL_TRIES:
        path = f"/devices/{quote(site, safe='')}/{quote(device, safe='')}/latest"
        poll = path + "?" + urlencode({"since": since, "tries": tries + 1})
    return {
        "site": site,
        "device": device,
        "since": since,
        "sample": sample,
        "answered": answered,
        "poll_url": poll,
        "gave_up": not answered and poll is None,
        "error": None,
        "ranked": views.ranked_scores,
    }


@router.get("/devices/{site}/{device}/latest", response_class=HTMLResponse)
async def capture_result(
    request: Request,
    site: str,
    device: str,
    _: SessionDep,
    clients: Clients,
    since: datetime,
    tries: Annotated[int, Query(ge=0, le=1000)] = 0,
) -> HTMLResponse:
    """The picture the capture asked for (the first one received since), polled by the page until answered."""
    sample = None
    try:
        page = await clients.samples(site_id=site, device_id=device, since=since.isoformat(), limit=1)
        sample = page["samples"][0] if page["samples"] else None
    except ServiceError as exc:
        log.info("capture result of %s/%s not readable yet: %s", site, device, exc)
    context = _capture_context(site, device, since.isoformat(), tries, sample)
    return render(request, "partials/capture.html", context)


# -- drift and training ---------------------------------------------------------------------------------------


@router.get("/drift", response_class=HTMLResponse)
async def drift_page(request: Request, _: SessionDep, clients: Clients) -> HTMLResponse:
    problems: list[str] = []
    drift, trainings = await asyncio.gather(
        attempt(clients.drift(alarms_limit=50), problems), attempt(clients.trainings(limit=20), problems)
    )
    context = {
        "drift": drift,
        "trainings": trainings or [],
        "problems": problems,
        "drifted": views.drifted_features,
    }
    return render(request, "drift.html", context)

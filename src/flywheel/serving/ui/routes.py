"""Dashboard routes: overview, models, review, users, jobs; sign-in with an API key.

Access is the scope table's (:mod:`flywheel.serving.scopes`), checked before a page
does any work: the overview, models and jobs need a signed-in key of any scope; the
review page, answering from it, and the stored inputs and overlays it shows need a
feedback (or admin) key; the users page, which lists every user's trust and privacy
ledger, needs an admin key, as ``GET /v1/users`` does, and so do promote, rollback,
quarantine and forget. Every form also carries the session's CSRF token. The cookie
holds a random token (HttpOnly, SameSite=Strict; Secure over HTTPS); the server keeps
only its hash, mapped to the API key, which is checked live on each request — revoking
the key ends its sessions. Stored inputs are served with their own media type, never
as HTML, under a CSP that forbids everything.
"""

from __future__ import annotations

import hmac
import io
import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image
from starlette.concurrency import run_in_threadpool

from flywheel.errors import AuthError, FlywheelError
from flywheel.keys import SESSION_HOURS
from flywheel.project import Project
from flywheel.serving.jobs import JobRunner
from flywheel.serving.scopes import COOKIE, Refusal, auth_failed, session, throttled

__all__ = ["COOKIE", "router", "static_files"]

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
LOGIN_COOKIE = "flywheel_login"
#: inputs are shown as what they are; nothing a user uploaded can run as a page
SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Content-Disposition": "inline",
    # not kept by browsers: a forgotten user's input must not outlive the forget there
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


def static_files() -> StaticFiles:
    return StaticFiles(directory=HERE / "static")


def _project(request: Request) -> Project:
    project: Project = request.app.state.project
    return project


def _signed_in(request: Request) -> dict[str, Any]:
    """The session :func:`~flywheel.serving.scopes.authorize` let in (its row says one)."""
    sess = session(request)
    if sess is None:
        raise Refusal(RedirectResponse("/ui/login", status_code=303))
    return sess


def _page(request: Request, name: str, **ctx: Any) -> Response:
    sess = _signed_in(request)
    project = _project(request)
    return TEMPLATES.TemplateResponse(
        request,
        name,
        {
            **ctx,
            "session": sess,
            "admin": "admin" in sess["scopes"],
            "project_name": project.settings.project_dir.name,
            "task": project.task.name,
            "production": project.production_version(),
        },
    )


def _forged(request: Request, csrf: str) -> Response | None:
    """The refusal of a form whose CSRF token is not its session's, else None (who may
    act at all is the scope table's: :mod:`flywheel.serving.scopes`)."""
    if not hmac.compare_digest(csrf, _signed_in(request)["csrf"]):
        return HTMLResponse("the form's CSRF token does not match this session", 403)
    return None


def _back(path: str, message: str = "") -> RedirectResponse:
    return RedirectResponse(path + (f"?msg={quote(message)}" if message else ""), 303)


# -- sign-in ------------------------------------------------------------------------------


@router.get("/ui/login")
def login_form(request: Request, next: str = "/", error: str = "") -> Response:
    # Login CSRF: the form carries a token that must match a cookie only this site set
    # (double submit), so another site cannot sign a browser into its own key.
    token = secrets.token_urlsafe(24)
    resp = TEMPLATES.TemplateResponse(
        request,
        "login.html",
        {"next": next, "error": error, "session": None, "login_csrf": token},
    )
    resp.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="strict", max_age=3600, path="/ui/login"
    )
    return resp


@router.post("/ui/login")
def login(
    request: Request,
    key: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    if not next.startswith("/") or next.startswith("//"):
        next = "/"  # only paths on this server: no open redirect
    if wait := throttled(request):
        return HTMLResponse(
            f"too many failed sign-ins from this address: try again in {wait} s",
            429,
            headers={"Retry-After": str(wait)},
        )
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(csrf, expected):
        return RedirectResponse(
            f"/ui/login?next={quote(next)}&error={quote('the sign-in form expired; try again')}",
            status_code=303,
        )
    try:
        token, _csrf, _scopes = _project(request).open_ui_session(key.strip())
    except AuthError as exc:
        auth_failed(request)
        return RedirectResponse(
            f"/ui/login?next={quote(next)}&error={quote(str(exc))}", status_code=303
        )
    resp = RedirectResponse(next, status_code=303)
    resp.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=SESSION_HOURS * 3600,
        path="/",
    )
    return resp


@router.post("/ui/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    sess = session(request)
    token = request.cookies.get(COOKIE)
    if sess is not None and token:
        if not hmac.compare_digest(csrf, sess["csrf"]):  # another site's form: no sign-out
            return HTMLResponse("the form's CSRF token does not match this session", 403)
        _project(request).end_ui_session(token)
    resp = RedirectResponse("/ui/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


# -- pages --------------------------------------------------------------------------------


@router.get("/")
def overview(request: Request, minutes: int = 24 * 60) -> Response:
    project = _project(request)
    stats = project.stats(minutes=max(1, min(minutes, 60 * 24 * 31)))
    prod = project.production_version()
    metrics = project.version_info(prod).metrics if prod is not None else {}
    versions = [v for v in stats["versions"] if v.get("holdout_accuracy") is not None]
    charts = {
        "accuracy": {
            "kind": "line",
            "title": "accuracy per version: held out (blue), live from feedback (orange)",
            "x": [f"v{v['version']}" for v in versions],
            "y": [v["holdout_accuracy"] for v in versions],
            "series2": [v.get("live_accuracy") for v in versions],
        },
        "calls_time": _calls_over_time(stats["calls"]["per_minute"], minutes),
        "calls_label": {
            "kind": "bar",
            "title": "calls per predicted label",
            "x": list(stats["calls"]["per_label"]),
            "y": list(stats["calls"]["per_label"].values()),
        },
        "calls_version": {
            "kind": "bar",
            "title": "calls per model version",
            "x": [f"v{k}" for k in stats["calls"]["per_version"]],
            "y": list(stats["calls"]["per_version"].values()),
        },
    }
    if "per_class" in metrics:
        charts["per_class"] = {
            "kind": "bar",
            "title": f"recall per class (production v{prod}, held out)",
            "x": list(metrics["per_class"]),
            "y": [c["recall"] for c in metrics["per_class"].values()],
        }
        charts["confusion"] = {
            "kind": "matrix",
            "title": f"confusion matrix (production v{prod}; rows: truth)",
            "x": metrics["labels"],
            "y": metrics["labels"],
            "z": metrics["confusion_matrix"],
        }
    charts |= _monitoring_charts(project.monitoring(60))
    fb = stats["feedback"]
    judged = fb["agreed"] + fb["disagreed"]
    return _page(
        request,
        "overview.html",
        charts=charts,
        stats=stats,
        agreement=None if judged == 0 else fb["agreed"] / judged,
    )


#: (the longest span a bin width is chosen for, the bin, how its label reads)
TIME_BINS = (
    (timedelta(hours=3), timedelta(minutes=1), "%H:%M"),
    (timedelta(days=3), timedelta(hours=1), "%m-%d %H:00"),
    (timedelta(days=400), timedelta(days=1), "%Y-%m-%d"),
)


def _calls_over_time(per_minute: dict[str, int], minutes: int) -> dict[str, Any]:
    """Calls per bin over the span the calls cover, every bin drawn (none left out when
    no call came): minutes up to 3 hours, hours up to 3 days, days beyond (UTC)."""
    chart: dict[str, Any] = {"kind": "bar", "time": True, "x": [], "y": [], "stamps": []}
    span_h = f"{minutes // 60} h" if minutes >= 60 else f"{minutes} min"
    if not per_minute:
        chart["title"] = f"calls over time (last {span_h})"
        chart["empty"] = "no calls yet: send one to POST /v1/predict (see /docs)"
        return chart
    times = {datetime.fromisoformat(k): n for k, n in per_minute.items()}
    first, last = min(times), max(times)
    _, step, fmt = next((b for b in TIME_BINS if last - first <= b[0]), TIME_BINS[-1])
    epoch = datetime(2000, 1, 1)
    floor = lambda t: epoch + ((t - epoch) // step) * step  # noqa: E731
    counts: dict[datetime, int] = {}
    for t, n in times.items():
        counts[floor(t)] = counts.get(floor(t), 0) + n
    t = floor(first)
    while t <= last:
        chart["x"].append(t.strftime(fmt))
        chart["stamps"].append(t.isoformat(timespec="minutes") + "Z")
        chart["y"].append(counts.get(t, 0))
        t += step
    unit = {60: "minute", 3600: "hour", 86400: "day"}[int(step.total_seconds())]
    chart["title"] = f"calls per {unit}, UTC (last {span_h}: ?minutes=N for another range)"
    return chart


def _monitoring_charts(m: dict[str, Any]) -> dict[str, Any]:
    """Drift score against its threshold, and estimated against observed accuracy, per
    monitoring window (none before the first window closes)."""
    windows = m["windows"]
    if not windows:
        return {}
    xs = [f"#{w['window']} {w['last_at'][5:16].replace('T', ' ')}" for w in windows]
    scores = [w["drift_score"] for w in windows]
    top = max([2.0, *(s for s in scores if s is not None)])
    return {
        "drift": {
            "kind": "line",
            "title": f"drift per window of {m['window']} calls: the largest test score over "
            "its threshold (an alarm above the dashed line)",
            "x": xs,
            "y": scores,
            "ymax": top,
            "rule": 1.0,
            "names": ["drift score / threshold", ""],
        },
        "window_accuracy": {
            "kind": "line",
            "title": "accuracy per window: estimated without labels (blue), observed from the "
            "answers so far (orange)",
            "x": xs,
            "y": [w["estimated_accuracy"] for w in windows],
            "series2": [w["observed_accuracy"] for w in windows],
            "names": ["estimated", "observed"],
        },
    }


@router.get("/ui/models")
def models_page(request: Request, msg: str = "") -> Response:
    project = _project(request)
    feedback_rows = {d.version: d.n_feedback for d in project.datasets()}
    return _page(
        request,
        "models.html",
        versions=project.models()[::-1],
        feedback_rows=feedback_rows,
        state=project.production_state(),
        msg=msg,
    )


@router.post("/ui/models/{version}/promote")
def promote(
    request: Request,
    version: Annotated[int, PathParam(ge=1, le=2**31 - 1)],
    csrf: Annotated[str, Form()] = "",
) -> Response:
    refused = _forged(request, csrf)
    if refused is not None:
        return refused
    try:
        _project(request).promote(version, reason="promoted from the dashboard")
    except FlywheelError as exc:
        return _back("/ui/models", f"not promoted: {exc}")
    return _back("/ui/models", f"v{version} is in production")


@router.post("/ui/rollback")
def rollback(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    refused = _forged(request, csrf)
    if refused is not None:
        return refused
    try:
        frm, to = _project(request).rollback(reason="rolled back from the dashboard")
    except FlywheelError as exc:
        return _back("/ui/models", f"no rollback: {exc}")
    return _back("/ui/models", f"rolled back from v{frm} to v{to}")


@router.get("/ui/review")
def review_page(request: Request, msg: str = "", limit: int = 12) -> Response:
    project = _project(request)
    try:
        items = project.review_queue(limit=max(1, min(limit, 60)))
    except FlywheelError as exc:
        items, msg = [], str(exc)
    modality = project.task.modality
    for it in items:
        if modality == "text":
            it["text"] = _input_text(project, it["prediction_id"])
    labels: list[str] = []
    prod = project.production_version()
    if prod is not None:
        labels = list(project.version_info(prod).metrics.get("labels", []))
    return _page(request, "review.html", items=items, labels=labels, modality=modality, msg=msg)


@router.post("/ui/review/{prediction_id}")
def review_answer(
    request: Request,
    prediction_id: str,
    label: Annotated[str, Form()],
    csrf: Annotated[str, Form()] = "",
) -> Response:
    refused = _forged(request, csrf)
    if refused is not None:
        return refused
    sess = session(request)
    reviewer = "reviewer:" + re.sub(r"[^A-Za-z0-9._:@-]", "-", sess["key"])[:100] if sess else None
    try:
        _project(request).record_feedback(prediction_id, label=label, user_id=reviewer)
    except FlywheelError as exc:
        return _back("/ui/review", f"not stored: {exc}")
    return _back("/ui/review", f"stored: {label!r} for {prediction_id[:8]}")


@router.get("/ui/users")
def users_page(request: Request, msg: str = "") -> Response:
    project = _project(request)
    ledger = {r["user_id"]: r for r in project.privacy_ledger()}
    return _page(
        request,
        "users.html",
        users=project.users(),
        ledger=ledger,
        budget=project.settings.dp_user_budget,
        msg=msg,
    )


@router.post("/ui/users/{user_id}/{action}")
def user_action(
    request: Request, user_id: str, action: str, csrf: Annotated[str, Form()] = ""
) -> Response:
    refused = _forged(request, csrf)
    if refused is not None:
        return refused
    project = _project(request)
    try:
        if action == "quarantine":
            project.quarantine(user_id, "quarantined from the dashboard")
            return _back("/ui/users", f"{user_id} quarantined")
        if action == "release":
            project.release(user_id)
            return _back("/ui/users", f"{user_id} released")
        if action == "forget":
            runner: JobRunner = request.app.state.runner
            out = runner.forget(user_id)
            job = out["retrain_job"]
            return _back(  # the message names no one: it ends up in access logs
                "/ui/users",
                f"forgot the user (audit #{out['audit_id']}); versions withdrawn: "
                f"{out['versions_affected'] or 'none'}"
                + (f"; retraining as job {job}" if job else ""),
            )
    except FlywheelError as exc:
        return _back("/ui/users", f"{action} failed: {exc}")
    return HTMLResponse(f"unknown action {action!r}", 404)


@router.get("/ui/jobs")
def jobs_page(request: Request, msg: str = "") -> Response:
    project = _project(request)
    jobs = project.jobs()
    return _page(
        request,
        "jobs.html",
        jobs=jobs,
        refresh=3 if any(j["status"] in ("queued", "running") for j in jobs) else None,
        policy=project.retrain_policy()[1],
        can_train=project.production_version() is not None,
        msg=msg,
    )


@router.post("/ui/retrain")
def retrain(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    """Queue a retrain with the project's settings (as POST /v1/retrain); the jobs page
    shows it, its epochs as they come."""
    refused = _forged(request, csrf)
    if refused is not None:
        return refused
    try:
        job_id = request.app.state.runner.submit_retrain({})
    except FlywheelError as exc:
        return _back("/ui/jobs", f"no retrain queued: {exc}")
    return _back("/ui/jobs", f"retrain queued as job {job_id[:8]}")


# -- inputs and overlays (session-authenticated) ------------------------------------------


def _input_text(project: Project, prediction_id: str) -> str:
    try:
        return _stored_input(project, prediction_id)[0].decode("utf-8", "replace")
    except FlywheelError:
        return ""


def _stored_input(project: Project, prediction_id: str) -> tuple[bytes, str]:
    """A logged prediction's input and the media type it is served as (never HTML)."""
    content = project.stored_input(prediction_id)
    modality = project.task.modality
    if modality == "image":
        fmt = (Image.open(io.BytesIO(content)).format or "png").lower()
        media = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif"}.get(
            fmt, "application/octet-stream"
        )
    elif modality == "audio":
        media = "audio/wav"
    else:
        media = "text/plain; charset=utf-8"
    return content, media


@router.get("/ui/input/{prediction_id}")
async def stored_input(request: Request, prediction_id: str) -> Response:
    try:
        content, media = await run_in_threadpool(_stored_input, _project(request), prediction_id)
    except FlywheelError as exc:
        return Response(str(exc), status_code=404, media_type="text/plain")
    return Response(content, media_type=media, headers=SAFE_HEADERS)


@router.get("/ui/explain/{prediction_id}.png")
async def explanation_overlay(request: Request, prediction_id: str) -> Response:
    try:
        png = await run_in_threadpool(_project(request).explanation_png, prediction_id)
    except FlywheelError as exc:
        return Response(str(exc), status_code=404, media_type="text/plain")
    return Response(png, media_type="image/png", headers=SAFE_HEADERS)

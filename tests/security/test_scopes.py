"""Least privilege: every route of the app and the dashboard, called by every kind of
caller (no key, a predict, a feedback and an admin key; as a bearer key or a signed-in
session), on a loopback server and one bound beyond it, answers as its row of the one
scope table says — and the table itself says what the policy is (the open doors are
predict and feedback, on loopback only; what is derived from someone's input needs a
reviewer's key). Then the doors themselves: a keyless answer only about the caller's own
predictions, the Host header checked (DNS rebinding), other sites' pages refused, CORS
off unless configured."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import routing
from fastapi.testclient import TestClient
from starlette.routing import Mount

from flywheel import Project
from flywheel.serving import create_app
from flywheel.serving.scopes import ANY, TABLE, Rule, rule_for
from flywheel.settings import Settings
from tests.factories import digit_png, login_csrf, make_project, sign_in

KINDS = ("none", "predict", "feedback", "admin")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    p = make_project(tmp_path_factory.mktemp("scopes") / "p")
    yield p
    p.close()


@pytest.fixture(scope="module")
def keys(project: Project) -> dict[str, str]:
    return {kind: project.create_key([kind], name=f"as-{kind}")[0] for kind in KINDS[1:]}


@pytest.fixture(scope="module")
def owned(project: Project) -> str:
    """A prediction made for the user 'owner'."""
    return project.predict(digit_png(300), user_id="owner").prediction_id


def _routes(app: Any) -> set[tuple[str, str]]:
    """Every (method, path template) the app answers, dashboard and docs included."""
    found = set()
    for route in routing.iter_route_contexts(app.routes):
        if isinstance(getattr(route, "original_route", route), Mount):
            continue  # /ui/static: the dashboard's CSS and scripts, the same for all
        for method in route.methods or ():
            if method != "HEAD":
                found.add((method, route.path))
    return found


#: a request to each route that passes the door and then changes nothing: an unknown id,
#: a version that is not there, a body the route refuses (after the check — a body that
#: does not parse would be refused before it)
def _requests(pid: str) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    png = {"files": {"file": ("d.png", digit_png(301), "image/png")}}
    nobody = "/v1/users/nobody"
    return {
        ("POST", "/v1/predict"): ("/v1/predict", png),
        ("POST", "/v1/feedback"): ("/v1/feedback", {"json": {"prediction_id": "nope"}}),
        ("POST", "/v1/review-queue"): ("/v1/review-queue", {"params": {"limit": 0}}),
        ("GET", "/v1/review-queue"): ("/v1/review-queue", {"params": {"limit": 0}}),
        ("POST", "/v1/explain"): ("/v1/explain", {"json": {"prediction_id": "nope"}}),
        ("GET", "/v1/explain/{prediction_id}.png"): ("/v1/explain/nope.png", {}),
        ("GET", "/v1/models"): ("/v1/models", {}),
        ("GET", "/v1/stats"): ("/v1/stats", {}),
        ("GET", "/v1/monitoring"): ("/v1/monitoring", {}),
        ("GET", "/metrics"): ("/metrics", {}),
        ("POST", "/v1/models/{version}/promote"): ("/v1/models/99/promote", {}),
        ("POST", "/v1/rollback"): ("/v1/rollback", {}),
        ("POST", "/v1/retrain"): ("/v1/retrain", {"json": {"epochs": "many"}}),
        ("GET", "/v1/jobs"): ("/v1/jobs", {}),
        ("GET", "/v1/webhooks/deliveries"): ("/v1/webhooks/deliveries", {}),
        ("GET", "/v1/jobs/{job_id}"): ("/v1/jobs/nope", {}),
        ("GET", "/v1/users"): ("/v1/users", {}),
        ("DELETE", "/v1/users/{user_id}"): (nobody, {}),
        ("POST", "/v1/users/{user_id}/quarantine"): (f"{nobody}/quarantine", {"json": {}}),
        ("DELETE", "/v1/users/{user_id}/quarantine"): (f"{nobody}/quarantine", {}),
        ("GET", "/v1/users/{user_id}/privacy"): (f"{nobody}/privacy", {}),
        ("GET", "/v1/privacy/ledger"): ("/v1/privacy/ledger", {}),
        ("GET", "/v1/keys"): ("/v1/keys", {}),
        ("POST", "/v1/keys"): ("/v1/keys", {"json": {"scopes": []}}),
        ("DELETE", "/v1/keys/{key}"): ("/v1/keys/nope", {}),
        ("GET", "/label-studio/health"): ("/label-studio/health", {}),
        ("POST", "/label-studio/health"): ("/label-studio/health", {}),
        ("POST", "/label-studio/setup"): ("/label-studio/setup", {"json": {"schema": "<View/>"}}),
        ("GET", "/label-studio/versions"): ("/label-studio/versions", {}),
        ("POST", "/label-studio/predict"): (
            "/label-studio/predict",
            {"json": {"tasks": [], "label_config": "<View/>"}},
        ),
        ("POST", "/label-studio/webhook"): (
            "/label-studio/webhook",
            {"json": {"action": "TASKS_CREATED"}},
        ),
        ("POST", "/label-studio/train"): ("/label-studio/train", {"json": {"annotations": "none"}}),
        ("GET", "/healthz"): ("/healthz", {}),
        ("GET", "/v2"): ("/v2", {}),
        ("GET", "/v2/health/live"): ("/v2/health/live", {}),
        ("GET", "/v2/health/ready"): ("/v2/health/ready", {}),
        ("GET", "/v2/models/{model_name}"): ("/v2/models/nope", {}),
        ("GET", "/v2/models/{model_name}/ready"): ("/v2/models/nope/ready", {}),
        ("GET", "/v2/models/{model_name}/versions/{model_version}"): (
            "/v2/models/nope/versions/1",
            {},
        ),
        ("GET", "/v2/models/{model_name}/versions/{model_version}/ready"): (
            "/v2/models/nope/versions/1/ready",
            {},
        ),
        ("POST", "/v2/models/{model_name}/infer"): ("/v2/models/nope/infer", {"json": {}}),
        ("POST", "/v2/models/{model_name}/versions/{model_version}/infer"): (
            "/v2/models/nope/versions/1/infer",
            {"json": {}},
        ),
        ("GET", "/openapi.json"): ("/openapi.json", {}),
        ("GET", "/docs"): ("/docs", {}),
        ("GET", "/docs/oauth2-redirect"): ("/docs/oauth2-redirect", {}),
        ("GET", "/redoc"): ("/redoc", {}),
        ("GET", "/ui/login"): ("/ui/login", {}),
        ("POST", "/ui/login"): ("/ui/login", {"data": {"key": "fw_nope", "csrf": "x"}}),
        ("POST", "/ui/logout"): ("/ui/logout", {"data": {"csrf": "forged"}}),
        ("GET", "/"): ("/", {}),
        ("GET", "/ui/models"): ("/ui/models", {}),
        ("GET", "/ui/jobs"): ("/ui/jobs", {}),
        ("GET", "/ui/review"): ("/ui/review", {"params": {"limit": 1}}),
        ("POST", "/ui/review/{prediction_id}"): (f"/ui/review/{pid}", {"data": {"label": "x"}}),
        ("GET", "/ui/input/{prediction_id}"): ("/ui/input/nope", {}),
        ("GET", "/ui/explain/{prediction_id}.png"): ("/ui/explain/nope.png", {}),
        ("GET", "/ui/users"): ("/ui/users", {}),
        ("POST", "/ui/users/{user_id}/{action}"): ("/ui/users/nobody/release", {"data": {}}),
        ("POST", "/ui/models/{version}/promote"): ("/ui/models/99/promote", {"data": {}}),
        ("POST", "/ui/rollback"): ("/ui/rollback", {"data": {}}),
        ("POST", "/ui/retrain"): ("/ui/retrain", {"data": {}}),
    }


def _allowed(rule: Rule, kind: str, loopback: bool, settings: Settings) -> bool:
    if rule.scope is None:
        return True
    if kind == "none":
        return bool(loopback and rule.opens and getattr(settings, rule.opens))
    return rule.admits([kind])


def _refused(response: Any, rule: Rule, kind: str) -> bool:
    """Whether the answer is the door's refusal (for the caller it met)."""
    location = response.headers.get("location", "")
    if response.status_code == 303 and location.startswith("/ui/login?next="):
        return rule.session  # the sign-in page, for a dashboard route only
    if rule.session and kind == "none":
        return response.status_code == 401  # an image or a download: a bare 401
    if response.status_code == 401:
        return kind == "none" and response.headers.get("www-authenticate") == "Bearer"
    if response.status_code == 403:
        return "needs" in response.text or "lacks the" in response.text
    return False


def test_the_table_is_the_policy() -> None:
    """What the table says, said again independently of it."""
    opened = {route for route, rule in TABLE.items() if rule.opens}
    v2 = {(m, p) for m, p in TABLE if p.startswith("/v2/models/")}  # the protocol's predict
    assert opened == {("POST", "/v1/predict"), ("POST", "/v1/feedback"), *v2}
    assert all(TABLE[route].scope == "predict" for route in v2)
    for (method, path), rule in TABLE.items():
        others_input = any(w in path for w in ("review", "explain", "/input/"))
        if others_input:
            assert rule.scope in {"feedback", "admin"}, (method, path)
        if path.startswith(("/v1/users", "/v1/privacy", "/v1/jobs", "/v1/keys", "/ui/users")):
            assert rule.scope == "admin", (method, path)
        if method in {"POST", "DELETE"} and rule.scope == ANY:
            pytest.fail(f"{method} {path} changes something with a key of any scope")
        if rule.scope is None:
            assert path in {"/healthz", "/openapi.json", "/redoc", "/v2"} or path.startswith(
                ("/docs", "/ui/login", "/ui/logout", "/v2/health/")
            ), (method, path)
        assert rule_for(method, path) is rule
    assert rule_for("HEAD", "/healthz") is TABLE[("GET", "/healthz")]


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_every_route_answers_every_caller_as_its_row_says(
    project: Project, keys: dict[str, str], owned: str, bind: str
) -> None:
    settings = Settings.load(project.settings.project_dir, host=bind)
    loopback = bind == "127.0.0.1"
    served = Project(settings)
    app = create_app(settings, served)
    requests = _requests(owned)
    routes = _routes(app)
    assert routes == set(TABLE), "every route has its row, and every row its route"
    assert routes == set(requests), "every route has a harmless request in this test"
    wrong: list[str] = []
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for kind in KINDS:
            csrf = ""
            if kind != "none":
                csrf = sign_in(client, keys[kind])
            else:
                client.cookies.clear()
            bearer = {} if kind == "none" else {"Authorization": f"Bearer {keys[kind]}"}
            for (method, template), (url, kwargs) in sorted(requests.items()):
                rule = TABLE[(method, template)]
                kw = dict(kwargs)
                if rule.session and "data" in kw:
                    kw["data"] = {"csrf": csrf, **kw["data"]}
                headers = {} if rule.session else bearer
                r = client.request(method, url, headers=headers, follow_redirects=False, **kw)
                assert r.status_code < 500, (method, url, kind, r.text)
                allowed = _allowed(rule, kind, loopback, settings)
                if _refused(r, rule, kind) == allowed:
                    wrong.append(f"{kind} {method} {url}: {r.status_code} {r.text[:80]}")
    served.close()
    assert wrong == []


def test_without_a_key_feedback_is_only_about_the_callers_own_predictions(
    project: Project, keys: dict[str, str]
) -> None:
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        png: Callable[[int], dict[str, Any]] = lambda i: {  # noqa: E731
            "files": {"file": ("d.png", digit_png(i), "image/png")}
        }
        alices = c.post("/v1/predict", headers={"X-User-Id": "alice"}, **png(310)).json()
        nobodys = c.post("/v1/predict", **png(311)).json()

        def answer(pid: str, **headers: str) -> Any:
            return c.post("/v1/feedback", json={"prediction_id": pid, "correct": True}, **headers)

        unknown = answer("no-such-id", headers={"X-User-Id": "bob"})
        # Bob's answer about Alice's prediction: as if there were none (nothing told).
        r = answer(alices["prediction_id"], headers={"X-User-Id": "bob"})
        assert r.status_code == 404
        assert r.json()["detail"] == unknown.json()["detail"].replace(
            "no-such-id", alices["prediction_id"]
        )
        assert answer(alices["prediction_id"]).status_code == 404  # nor without an id
        assert answer(nobodys["prediction_id"], headers={"X-User-Id": "bob"}).status_code == 404
        # Alice's own, and one made without an id answered without one.
        assert answer(alices["prediction_id"], headers={"X-User-Id": "alice"}).status_code == 201
        assert answer(nobodys["prediction_id"]).status_code == 201
        # A reviewer's key answers about anyone's.
        reviewer = {"Authorization": f"Bearer {keys['feedback']}", "X-User-Id": "rev"}
        assert answer(alices["prediction_id"], headers=reviewer).status_code == 201
        # A key that is sent is checked, even on an open route.
        bad = answer(alices["prediction_id"], headers={"Authorization": "Bearer fw_nope"})
        assert bad.status_code == 401


def _client(project: Project, **settings: Any) -> TestClient:
    st = Settings.load(project.settings.project_dir, **settings)
    return TestClient(create_app(st, Project(st)), base_url="http://127.0.0.1")


def test_the_host_header_is_checked(project: Project) -> None:
    with _client(project) as c:
        for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host
        # A page of rebinding.example whose name now points at 127.0.0.1.
        for host in ("rebinding.example", "rebinding.example:8000", "127.0.0.2", ""):
            r = c.get("/healthz", headers={"Host": host})
            assert r.status_code == 421, host
            assert "allowed_hosts" in r.json()["detail"]
        files = {"file": ("d.png", digit_png(0), "image/png")}
        r = c.post("/v1/predict", headers={"Host": "rebinding.example"}, files=files)
        assert r.status_code == 421
    with _client(project, allowed_hosts=["flywheel.internal", "*.corp.example"]) as c:
        for host, status in [
            ("flywheel.internal", 200),
            ("api.corp.example:443", 200),
            ("corp.example", 421),
            ("evil.example", 421),
            ("127.0.0.1", 200),
        ]:
            assert c.get("/healthz", headers={"Host": host}).status_code == status, host
    # Bound to one address: that address and allowed_hosts, not the loopback names.
    with _client(project, host="10.1.2.3", allowed_hosts=["api.example"]) as c:
        assert c.get("/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "api.example"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "localhost"}).status_code == 421


def test_other_sites_pages_are_refused_and_cors_is_off_unless_configured(
    project: Project, keys: dict[str, str]
) -> None:
    files = {"file": ("d.png", digit_png(0), "image/png")}
    with _client(project) as c:
        # A page of another site posting to the open predict route (no preflight needed).
        r = c.post("/v1/predict", headers={"Origin": "https://evil.example"}, files=files)
        assert r.status_code == 403 and "cors_origins" in r.json()["detail"]
        assert c.post("/v1/predict", headers={"Origin": "null"}, files=files).status_code == 403
        # The server's own pages (the dashboard, /docs) are of its origin.
        r = c.post("/v1/predict", headers={"Origin": "http://127.0.0.1"}, files=files)
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers
        r = c.options(
            "/v1/predict",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    with _client(project, cors_origins=["https://app.example"]) as c:
        pre = c.options(
            "/v1/predict",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,x-user-id",
            },
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://app.example"
        r = c.post("/v1/predict", headers={"Origin": "https://app.example"}, files=files)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.post("/v1/predict", headers={"Origin": "https://evil.example"}, files=files)
        assert r.status_code == 403


def test_bad_host_and_origin_settings_are_named(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="allowed_hosts: 'http://x' is not a host name"):
        Settings(project_dir=tmp_path, allowed_hosts=["http://x"])
    with pytest.raises(ValidationError, match=r"cors_origins: 'https://a\.example/' is not an"):
        Settings(project_dir=tmp_path, cors_origins=["https://a.example/"])


def test_the_openapi_document_carries_the_table(project: Project) -> None:
    spec = create_app(project.settings, project).openapi()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    ops = spec["paths"]
    assert ops["/healthz"]["get"]["security"] == []
    assert ops["/v1/predict"]["post"]["security"] == [{"bearer": []}, {}]
    assert ops["/v1/explain"]["post"]["security"] == [{"bearer": []}]
    assert ops["/v1/explain"]["post"]["x-flywheel-scope"] == "feedback"
    assert ops["/v1/users"]["get"]["x-flywheel-scope"] == "admin"


def test_failed_authentications_are_throttled_per_address(
    project: Project, keys: dict[str, str]
) -> None:
    st = Settings.load(project.settings.project_dir, auth_failures_per_minute=5)
    app = create_app(st, Project(st))
    now = [1000.0]
    app.state.throttle.clock = lambda: now[0]
    good = {"Authorization": f"Bearer {keys['predict']}"}
    with (
        TestClient(app, base_url="http://127.0.0.1", client=("10.0.0.7", 5000)) as guesser,
        TestClient(app, base_url="http://127.0.0.1", client=("10.0.0.8", 5000)) as other,
    ):
        for i in range(5):
            bad = {"Authorization": f"Bearer fw_guess_{i}"}
            assert guesser.get("/v1/models", headers=bad).status_code == 401
            now[0] += 1
        r = guesser.get("/v1/models", headers={"Authorization": "Bearer fw_guess_6"})
        assert r.status_code == 429 and r.headers["retry-after"] == "55"
        # Even the right key waits (finding it is no faster), and so does a sign-in ...
        assert guesser.get("/v1/models", headers=good).status_code == 429
        r = guesser.post("/ui/login", data={"key": keys["admin"], "csrf": "x"})
        assert r.status_code == 429 and "try again in 55 s" in r.text
        # ... but not the open routes, nor another address.
        files = {"file": ("d.png", digit_png(0), "image/png")}
        assert guesser.post("/v1/predict", files=files).status_code == 200
        assert other.get("/v1/models", headers=good).status_code == 200
        # A minute after the first failure, the address may try again.
        now[0] = 1000.0 + 60.0
        assert guesser.get("/v1/models", headers=good).status_code == 200
        # A malformed header and a failed sign-in count too; a missing key does not.
        for _ in range(10):
            assert other.get("/v1/models").status_code == 401
        assert other.get("/v1/models", headers={"Authorization": "Basic x"}).status_code == 401
        for _ in range(4):
            r = other.post(
                "/ui/login",
                data={"key": "fw_nope", "csrf": login_csrf(other)},
                follow_redirects=False,
            )
            assert r.status_code == 303 and "unknown" in r.headers["location"]
        assert other.get("/v1/models", headers=good).status_code == 429

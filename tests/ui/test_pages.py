"""The dashboard's access rules and safety without a browser: sign-in, sessions that end
with their key, CSRF, admin-only actions, inputs never served as HTML."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from flywheel import Project
from flywheel.data import ListSource, RawExample
from flywheel.serving import create_app
from tests.factories import digit_png, login_csrf, sign_in


@pytest.fixture(scope="function")
def client(project: Project) -> Iterator[TestClient]:
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        yield c


def test_every_page_needs_a_key_and_a_bad_key_is_told(client: TestClient, project: Project) -> None:
    for path in ("/", "/ui/models", "/ui/review", "/ui/users", "/ui/jobs"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next=")
    r = client.post(
        "/ui/login", data={"key": "fw_nope", "csrf": login_csrf(client)}, follow_redirects=True
    )
    assert "unknown API key" in r.text
    # No open redirect: only paths on this server.
    key, _ = project.create_key(["predict"])
    r = client.post(
        "/ui/login",
        data={"key": key, "next": "//evil.example/x", "csrf": login_csrf(client)},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/"
    # Login CSRF: a form posted from elsewhere (no token of this site's cookie) fails.
    r = client.post("/ui/login", data={"key": key, "csrf": "forged"}, follow_redirects=False)
    assert "expired" in r.headers["location"] and "set-cookie" not in r.headers


def test_actions_need_admin_and_the_sessions_csrf_token(
    client: TestClient, project: Project
) -> None:
    p = project.predict(digit_png(300))
    reader, _ = project.create_key(["feedback"], name="reader")
    csrf = sign_in(client, reader)
    for path in ("/", "/ui/models", "/ui/review", "/ui/jobs"):
        assert client.get(path).status_code == 200
    # Every user's trust and ledger are for admins (as GET /v1/users is).
    assert client.get("/ui/users").status_code == 403
    # A predict key (the kind shipped inside clients) sees no one's inputs.
    shipped, _ = project.create_key(["predict"], name="app")
    sign_in(client, shipped)
    assert client.get("/ui/review").status_code == 403
    assert client.get(f"/ui/input/{p.prediction_id}").status_code == 403
    assert client.get("/").status_code == 200
    csrf = sign_in(client, reader)
    r = client.post("/ui/models/1/promote", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 403 and "needs an admin key" in r.text
    # Answering from the review page is for whoever may see it (a feedback key) ...
    r = client.post(
        f"/ui/review/{p.prediction_id}",
        data={"label": "3", "csrf": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303 and "stored" in r.headers["location"]
    # ... not for a predict key.
    csrf = sign_in(client, shipped)
    r = client.post(f"/ui/review/{p.prediction_id}", data={"label": "4", "csrf": csrf})
    assert r.status_code == 403 and "needs a key with the 'feedback' scope" in r.text
    with project.db.session() as s:
        from flywheel.store.schema import Feedback

        stored = s.scalars(select(Feedback).where(Feedback.prediction_id == p.prediction_id))
        assert [f.label for f in stored] == ["3"]
    admin, info = project.create_key(["admin"], name="boss")
    csrf = sign_in(client, admin)
    r = client.post(f"/ui/review/{p.prediction_id}", data={"label": "3", "csrf": "forged"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = client.post(
        f"/ui/review/{p.prediction_id}",
        data={"label": "3", "csrf": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303 and "stored" in r.headers["location"]
    # Revoking the key ends its sessions at once.
    from flywheel.store.schema import ApiKey, utcnow

    with project.db.session() as s:
        row = s.get(ApiKey, info["id"])
        assert row is not None
        row.revoked_at = utcnow()
    assert client.get("/ui/models", follow_redirects=False).status_code == 303


def test_uploaded_text_is_never_served_as_html(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    rows = [
        RawExample(f"{w} message number {i}".encode(), w, split=sp)
        for i in range(12)
        for w, sp in (
            ("spam", "train" if i < 9 else "holdout"),
            ("ham", "train" if i < 9 else "holdout"),
        )
    ]
    project = Project.init(
        tmp_path / "t", ListSource("t", rows), task="text-classification", settings={"epochs": 2}
    )
    project.train()
    evil = b"<script>alert(1)</script><img src=x onerror=alert(2)>"
    p = project.predict(evil)
    key, _ = project.create_key(["admin"])
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        sign_in(c, key)
        r = c.get(f"/ui/input/{p.prediction_id}")
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in r.headers["content-security-policy"]
        page = c.get("/ui/review").text
        assert "<script>alert(1)</script>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    project.close()


def test_no_action_is_offered_that_cannot_run_and_retrain_now_queues_a_job(
    client: TestClient, project: Project
) -> None:
    """One version in production: nothing to roll back to, so no button; "retrain now"
    (admin, CSRF) queues a retrain job the jobs page lists with its epochs."""
    admin, _ = project.create_key(["admin"], name="boss")
    csrf = sign_in(client, admin)
    page = client.get("/ui/models").text
    assert 'id="rollback"' not in page
    assert "has no earlier version to roll back to" in page
    jobs = client.get("/ui/jobs").text
    assert 'id="retrain"' in jobs and 'action="/ui/retrain"' in jobs
    assert client.post("/ui/retrain", data={"csrf": "forged"}).status_code == 403
    r = client.post("/ui/retrain", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and "retrain%20queued%20as%20job" in r.headers["location"]
    job_id = next(iter(client.app.state.runner.futures))  # type: ignore[attr-defined]
    client.app.state.runner.futures[job_id].result(300)  # type: ignore[attr-defined]
    job = project.job(job_id)
    assert (job["kind"], job["trigger"]) == ("retrain", "manual")
    page = client.get("/ui/jobs").text
    assert job_id[:8] in page
    # After a promotion there is an earlier version: the button names it.
    v2 = project.train(project.train_config(seed=3)).model.version
    project.promote(v2)
    page = client.get("/ui/models").text
    assert 'id="rollback"' in page and "roll production back to v1" in page

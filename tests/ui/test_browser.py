"""The dashboard in a real browser (Playwright driving Debian's chromium, headless) on a
project that went through two demo cycles: the charts carry the store's data, a label
given on the review page is stored, promote and rollback move the production alias,
and an action without an admin key is refused. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from flywheel import Project
from flywheel.data import SourceOptions, resolve_source
from flywheel.demo import DemoConfig, run_demo
from flywheel.serving.server import BackgroundServer
from flywheel.store.schema import Feedback

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if CHROMIUM is None:
    pytest.skip(
        "no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)",
        allow_module_level=True,
    )
ARTIFACTS = Path(os.environ.get("FLYWHEEL_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ui") / "demo"
    run_demo(DemoConfig(cycles=2, epochs=4, requests_per_cycle=150, seed=0), project_dir=root)
    project = Project.open(root)
    admin, _ = project.create_key(["admin"], name="admin-browser")
    reader, _ = project.create_key(["predict"], name="reader")
    with BackgroundServer(project) as server:
        yield {"project": project, "url": server.url, "admin": admin, "reader": reader}
    project.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _signed_in(browser: Any, served: dict[str, Any], key: str) -> Any:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(served["url"] + "/")
    assert "/ui/login" in page.url  # every page needs a key
    page.fill("#key", key)
    page.click("#sign-in")
    page.wait_for_url(served["url"] + "/")
    return page


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_overview_charts_carry_the_stores_data(browser: Any, served: dict[str, Any]) -> None:
    page = _signed_in(browser, served, served["admin"])
    page.wait_for_selector("body[data-charts-drawn='true']")
    charts = page.evaluate("JSON.parse(document.getElementById('charts-data').textContent)")
    project: Project = served["project"]
    stats = project.stats(minutes=24 * 60)
    versions = [v for v in stats["versions"] if v["holdout_accuracy"] is not None]
    assert charts["accuracy"]["x"] == ["v1", "v2", "v3"]
    assert charts["accuracy"]["y"] == [v["holdout_accuracy"] for v in versions]
    assert sum(charts["calls_label"]["y"]) == stats["calls"]["total"] == 300
    # Calls over time: a bin for every minute the calls span, empty ones too (UTC).
    over_time = charts["calls_time"]
    assert sum(over_time["y"]) == 300 and over_time["title"].startswith("calls per minute")
    stamps = [datetime.fromisoformat(t.replace("Z", "")) for t in over_time["stamps"]]
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(stamps))
    assert over_time["x"] == [t.strftime("%H:%M") for t in stamps]
    prod = project.version_info(project.production_version() or 0).metrics
    assert charts["confusion"]["z"] == prod["confusion_matrix"]
    # Each chart is drawn: one mark per data point, carrying its value.
    marks = page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('figure.chart')].map("
        "f => [f.dataset.chart, Number((f.querySelector('svg') || {dataset: {}}).dataset.marks)"
        " || 0]))"
    )
    assert marks["accuracy"] == 3 and marks["calls_label"] == len(charts["calls_label"]["x"])
    assert marks["confusion"] == len(prod["labels"]) ** 2
    drawn = page.eval_on_selector_all(
        "#chart-accuracy circle.point:not(.live)", "cs => cs.map(c => Number(c.dataset.y))"
    )
    assert drawn == pytest.approx(charts["accuracy"]["y"])
    assert page.inner_text("#production-version") == f"v{project.production_version()}"
    _shot(page, "overview")


def test_a_label_given_on_the_review_page_is_stored(browser: Any, served: dict[str, Any]) -> None:
    page = _signed_in(browser, served, served["admin"])
    page.goto(served["url"] + "/ui/review")
    card = page.locator("article.item").first
    pid = card.get_attribute("data-prediction")
    assert pid
    # The input and its attribution heat-map are shown.
    assert card.locator("img.thumb").first.evaluate("i => i.complete && i.naturalWidth > 0")
    page.wait_for_function(
        "pid => { const i = document.querySelector(`article[data-prediction='${pid}'] img.heat`);"
        " return i && i.complete && i.naturalWidth > 0; }",
        arg=pid,
    )
    _shot(page, "review")
    card.locator("form.labels button[value='7']").click()
    page.wait_for_selector("#msg")
    assert "stored" in page.inner_text("#msg")
    project: Project = served["project"]
    with project.db.session() as s:
        rows = s.scalars(select(Feedback).where(Feedback.prediction_id == pid)).all()
    assert [r.label for r in rows] == ["7"]
    assert rows[0].user_id == project.pseudonym("reviewer:admin-browser")


def test_promote_and_rollback_move_the_production_alias(
    browser: Any, served: dict[str, Any]
) -> None:
    project: Project = served["project"]
    before = project.production_version()
    page = _signed_in(browser, served, served["admin"])
    page.goto(served["url"] + "/ui/models")
    _shot(page, "models")
    target = 1 if before != 1 else 2
    page.locator(f"tr[data-version='{target}'] button.promote").click()
    page.wait_for_selector("#msg")
    assert project.production_version() == target
    assert "production" in page.inner_text(f"tr[data-version='{target}'] td.aliases")
    page.click("#rollback")
    page.wait_for_selector("#msg")
    assert project.production_version() == before
    assert f"to v{before}" in page.inner_text("#msg")


def test_an_action_without_the_admin_key_is_refused(browser: Any, served: dict[str, Any]) -> None:
    project: Project = served["project"]
    before = project.production_version()
    page = _signed_in(browser, served, served["reader"])
    page.goto(served["url"] + "/ui/models")
    assert page.locator("button.promote").count() == 0  # not offered
    csrf = page.get_attribute("input[name='csrf']", "value")
    r = page.request.post(served["url"] + "/ui/models/1/promote", form={"csrf": csrf})
    assert r.status == 403 and "needs an admin key" in r.text()
    assert project.production_version() == before
    # Without the session's CSRF token even an admin's form is refused.
    admin = _signed_in(browser, served, served["admin"])
    r = admin.request.post(served["url"] + "/ui/models/1/promote", form={"csrf": "forged"})
    assert r.status == 403 and project.production_version() == before
    # The cookie is HttpOnly and SameSite=Strict.
    cookie = next(c for c in admin.context.cookies() if c["name"] == "flywheel_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    for name in ("users", "jobs"):
        admin.goto(served["url"] + f"/ui/{name}")
        _shot(admin, name)


def test_forget_from_the_users_page(browser: Any, served: dict[str, Any]) -> None:
    project: Project = served["project"]
    victim = project.pseudonym("user-05")
    page = _signed_in(browser, served, served["admin"])
    page.goto(served["url"] + "/ui/users")
    row = page.locator(f"tr[data-user='{victim}']")
    assert row.count() == 1
    dialogs: list[str] = []

    def accept(d: Any) -> None:
        dialogs.append(d.message)
        d.accept()

    page.on("dialog", accept)  # the page asks first
    row.locator("form.forget button").click()
    page.wait_for_selector("#msg")
    assert dialogs and "cannot be undone" in dialogs[0]
    assert "forgot" in page.inner_text("#msg")
    assert page.locator(f"tr[data-user='{victim}']").count() == 0
    audit = project.audit_log("forget")
    assert len(audit) == 1 and audit[0]["detail"]["counts_after"]["predictions"] == 0


def _watched(page: Any, origin: str) -> tuple[list[str], list[str]]:
    """The page's console errors (a refused script or style is one) and any request to
    another origin that was not stopped before it left (by the page's policy)."""
    errors: list[str] = []
    elsewhere: list[str] = []

    def ours(url: str) -> bool:
        return url.startswith((origin, "data:", "blob:"))

    def failed(r: Any) -> None:
        if not ours(r.url) and r.failure not in ("csp", "net::ERR_BLOCKED_BY_CSP"):
            elsewhere.append(f"{r.url} ({r.failure})")

    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfinished", lambda r: None if ours(r.url) else elsewhere.append(r.url))
    page.on("requestfailed", failed)
    return errors, elsewhere


def test_every_page_runs_under_its_policy_and_fetches_nothing_elsewhere(
    browser: Any, served: dict[str, Any]
) -> None:
    page = _signed_in(browser, served, served["admin"])
    errors, elsewhere = _watched(page, served["url"])
    for path in ("/", "/ui/models", "/ui/review", "/ui/users", "/ui/jobs"):
        response = page.goto(served["url"] + path)
        assert response is not None and response.status == 200
        headers = response.headers
        assert headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src 'self';" in headers["content-security-policy"]
        assert headers["cache-control"] == "no-store"
    page.wait_for_selector("body")
    assert errors == [] and elsewhere == []


def test_the_api_docs_are_served_from_the_package(browser: Any, served: dict[str, Any]) -> None:
    page = browser.new_context().new_page()
    errors, elsewhere = _watched(page, served["url"])
    page.goto(served["url"] + "/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "flywheel" in page.inner_text(".swagger-ui .info .title")
    assert page.locator(".opblock").count() >= 20  # every operation is listed
    _shot(page, "docs")
    page.goto(served["url"] + "/redoc")
    page.wait_for_selector("h1")
    assert "flywheel" in page.inner_text("h1")
    # ReDoc's "by Redocly" badge points at its CDN: the policy stops it, nothing is sent.
    blocked = [e for e in errors if "cdn.redoc.ly" in e and "Content Security Policy" in e]
    assert [e for e in errors if e not in blocked] == [] and elsewhere == []


CIFAR = (
    Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "cifar10-mini" / "train"
)

#: every pair of tick labels in one chart whose boxes intersect (more than half a pixel)
OVERLAPS = """
() => {
  const out = [];
  for (const svg of document.querySelectorAll("figure.chart svg")) {
    const boxes = [...svg.querySelectorAll("text.tick")].map((t) => [t, t.getBoundingClientRect()]);
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
      const [a, r] = boxes[i], [b, q] = boxes[j];
      const w = Math.min(r.right, q.right) - Math.max(r.left, q.left);
      const h = Math.min(r.bottom, q.bottom) - Math.max(r.top, q.top);
      const chart = svg.closest("figure").dataset.chart;
      if (w > 0.5 && h > 0.5) out.push([chart, a.textContent, b.textContent]);
    }
  }
  return out;
}
"""


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A project of ten real CIFAR-10 classes (12 photos each, copied to a temp folder:
    the long names are the point) with one model and 120 calls."""
    if not CIFAR.is_dir():
        pytest.skip(f"cifar10-mini is not at {CIFAR} (see ../shared/datasets/README.md)")
    data = tmp_path_factory.mktemp("cifar-data")
    for cls in sorted(p.name for p in CIFAR.iterdir() if p.is_dir()):
        (data / cls).mkdir()
        for photo in sorted((CIFAR / cls).glob("*.jpg"))[:12]:
            shutil.copy(photo, data / cls / photo.name)
    source, task = resolve_source(str(data), SourceOptions())
    root = tmp_path_factory.mktemp("cifar") / "p"
    project = Project.init(root, source, task=task, settings={"epochs": 1, "refit": False})
    project.train()
    for photo in sorted(data.glob("*/*.jpg"))[:120]:
        project.predict(photo.read_bytes())
    admin, _ = project.create_key(["admin"], name="admin-browser")
    with BackgroundServer(project) as server:
        yield {"project": project, "url": server.url, "admin": admin}
    project.close()


@pytest.mark.parametrize("width", [1400, 900])
def test_no_two_axis_labels_overlap_with_long_class_names(
    browser: Any, cifar: dict[str, Any], width: int
) -> None:
    page = browser.new_context(viewport={"width": width, "height": 1000}).new_page()
    page.goto(cifar["url"] + "/ui/login")
    page.fill("#key", cifar["admin"])
    page.click("#sign-in")
    page.wait_for_selector("body[data-charts-drawn='true']")
    assert page.evaluate(OVERLAPS) == []
    # Every class is named on the matrix, whole or cut with its full name on hover.
    full = page.eval_on_selector_all(
        "#chart-confusion text.xtick", "ts => ts.map(t => t.dataset.full)"
    )
    assert full == cifar["project"].serving_model().labels
    # The charts use the page's width: two or more columns on a wide screen.
    lefts = page.eval_on_selector_all(
        "figure.chart",
        "fs => [...new Set(fs.map(f => Math.round(f.getBoundingClientRect().left)))]",
    )
    assert len(lefts) >= (3 if width >= 1400 else 1), lefts
    _shot(page, f"overview-cifar-{width}")

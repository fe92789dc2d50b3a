"""Screenshots of every dashboard page for the README, on the default demo project.

    .venv/bin/python tools/screenshots.py [--out docs/screenshots]
    .venv/bin/python tools/screenshots.py --data ../shared/datasets/cifar10-mini/train \
        --out docs/screenshots/cifar10-mini                  # real photos, long class names

Runs `flywheel demo` (three cycles) — or, with ``--data``, makes a project of class
folders (``--per-class`` photos of each, copied to a temp folder), trains it, sends the
other photos as calls from five users who answer 60% of them, and retrains once —
serves the project, signs in with a fresh admin key in headless chromium (Debian's
package) and saves one PNG per page.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

from flywheel import Project
from flywheel.data import SourceOptions, resolve_source
from flywheel.demo import DemoConfig, run_demo
from flywheel.serving.server import BackgroundServer

PAGES = {
    "overview": "/",
    "models": "/ui/models",
    "review": "/ui/review",
    "users": "/ui/users",
    "jobs": "/ui/jobs",
}


def folder_project(root: Path, data: Path, per_class: int, epochs: int) -> Project:
    """A project of ``per_class`` photos of each class folder under ``data``; the next
    ``per_class`` of each are sent as calls by five users, 60% of them answered with
    the folder's label; one retrain."""
    rng = np.random.default_rng(0)
    base = root.parent / "data"
    calls = []
    for cls in sorted(p.name for p in data.iterdir() if p.is_dir()):
        photos = sorted((data / cls).iterdir())
        (base / cls).mkdir(parents=True)
        for photo in photos[:per_class]:
            shutil.copy(photo, base / cls / photo.name)
        calls += [(photo, cls) for photo in photos[per_class : 2 * per_class]]
    source, task = resolve_source(str(base), SourceOptions())
    project = Project.init(root, source, task=task, settings={"epochs": epochs})
    project.train()
    for k in rng.permutation(len(calls)):
        photo, cls = calls[k]
        user = f"user-{k % 5}"
        r = project.predict(photo.read_bytes(), user_id=user)
        if rng.random() < 0.6:
            project.record_feedback(r.prediction_id, label=cls, user_id=user)
    project.retrain()
    return project


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    ap.add_argument("--data", type=Path, help="class folders instead of the demo")
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp()) / "demo"
    if args.data is None:
        run_demo(DemoConfig(), project_dir=root)
        project = Project.open(root)
    else:
        project = folder_project(root, args.data, args.per_class, args.epochs)
    key, _ = project.create_key(["admin"], name="readme")
    args.out.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or "chromium"
    with BackgroundServer(project) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
        page.goto(server.url + "/ui/login")
        page.fill("#key", key)
        page.click("#sign-in")
        page.wait_for_url(server.url + "/")
        for name, path in PAGES.items():
            page.goto(server.url + path)
            if name == "overview":
                page.wait_for_selector("body[data-charts-drawn='true']")
            if name == "review":  # a function, not a string: the page's CSP forbids eval
                page.wait_for_function(
                    "() => [...document.querySelectorAll('img.heat')].slice(0, 4)"
                    ".every(i => i.complete && i.naturalWidth > 0)"
                )
            page.screenshot(path=str(args.out / f"{name}.png"), full_page=False)
            print(args.out / f"{name}.png")
        browser.close()
    project.close()


if __name__ == "__main__":
    main()

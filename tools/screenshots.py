"""Screenshots of every dashboard page for the README, on the default demo project.

    .venv/bin/python tools/screenshots.py [--out docs/screenshots]

Runs `flywheel demo` (three cycles), serves the project, signs in with a fresh admin
key in headless chromium (Debian's package) and saves one PNG per page.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from flywheel import Project
from flywheel.demo import DemoConfig, run_demo
from flywheel.serving.server import BackgroundServer

PAGES = {
    "overview": "/",
    "models": "/ui/models",
    "review": "/ui/review",
    "users": "/ui/users",
    "jobs": "/ui/jobs",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp()) / "demo"
    run_demo(DemoConfig(), project_dir=root)
    project = Project.open(root)
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
            if name == "review":
                page.wait_for_function(
                    "[...document.querySelectorAll('img.heat')].slice(0, 4)"
                    ".every(i => i.complete && i.naturalWidth > 0)"
                )
            page.screenshot(path=str(args.out / f"{name}.png"), full_page=False)
            print(args.out / f"{name}.png")
        browser.close()
    project.close()


if __name__ == "__main__":
    main()

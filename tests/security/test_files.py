"""What flywheel writes is its user's alone: run as the CLI does (a real process, its
own umask), every file of a project that went around the loop — the database, users'
inputs, models, the user-id key chain, the access log — is 0600 and every folder 0700;
opened from Python under a permissive umask, the project folder and database still are.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from flywheel import Project
from tests.factories import make_project


def _loose(root: Path) -> list[str]:
    """Paths under ``root`` (itself included) that another local user could read."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return found


def test_the_cli_creates_nothing_another_user_can_read(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    code = "import sys; from flywheel.cli import main; sys.argv = sys.argv[1:]; main()"
    args = ["flywheel", "demo", "--cycles", "1", "--epochs", "2", "--keep", str(root), "--json"]
    subprocess.run(
        [sys.executable, "-c", code, *args],
        check=True,
        capture_output=True,
        timeout=600,
        umask=0o022,  # the usual one: the CLI tightens it itself
    )
    made = {p.name for p in root.rglob("*")}
    assert {"flywheel.db", "model.safetensors", "spec.json", "access.jsonl"} <= made
    assert "user-keys.json" in made
    assert _loose(root) == []


def test_a_project_opened_from_python_keeps_its_folder_and_database_private(
    tmp_path: Path,
) -> None:
    old = os.umask(0o022)
    try:
        project = make_project(tmp_path / "p", train=False)
        project.close()
        root = project.settings.project_dir
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        assert stat.S_IMODE((root / "flywheel.db").stat().st_mode) == 0o600
        root.chmod(0o755)  # loosened by hand: tightened again on the next open
        Project.open(root).close()
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
    finally:
        os.umask(old)

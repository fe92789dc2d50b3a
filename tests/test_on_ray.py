"""The Ray tests (tests/on_ray) run in a network namespace of their own with only loopback,
on a real two-node cluster: Ray binds the machine's interface address otherwise, and
traffic here may only go to loopback. This test runs them there and fails with their
output when any fails, or when none ran (pytest's exit 5)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _why_not() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install 'flywheel-ml[ray]')"
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return "a network namespace of its own needs root, unshare and ip"
    probe = subprocess.run([str(ROOT / "tools" / "in-netns"), "true"], capture_output=True)
    if probe.returncode != 0:
        return f"tools/in-netns cannot make a namespace: {probe.stderr.decode()[-300:]}"
    return None


def test_the_ray_tests_pass_on_a_two_node_cluster(tmp_path: Path) -> None:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    junit = tmp_path / "junit.xml"
    env = {**os.environ, "FLYWHEEL_ON_RAY": "1"}
    cmd = [str(ROOT / "tools" / "in-netns"), sys.executable, "-m", "pytest", "tests/on_ray",
           "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    out = (run.stdout + run.stderr)[-12000:]
    assert run.returncode == 0, f"the Ray tests failed (exit {run.returncode}):\n{out}"
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite is not None
    ran = int(suite.get("tests", 0)) - int(suite.get("skipped", 0))
    assert ran >= 3 and int(suite.get("failures", 0)) == int(suite.get("errors", 0)) == 0, out

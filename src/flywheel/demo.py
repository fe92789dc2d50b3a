"""The embedded default run: the whole loop on scikit-learn's digits, over real HTTP.

A first model learns from a small labelled slice. Simulated users then ask the
running server about unlabelled images and answer with the true label for a
share of them; each cycle ends with a retrain through the API, gated against
the champion on the fixed held-out split and on the evaluation split that the
answers grow (``eval_share``). The table shows accuracy on the held-out split,
the one measure that stays the same across cycles.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from flywheel.data import HOLDOUT, TRAIN, ListSource, RawExample, digits_arrays, encode_png
from flywheel.errors import FlywheelError
from flywheel.privacy.keychain import seed_user_key
from flywheel.project import Project
from flywheel.serving import BackgroundServer

__all__ = ["CycleReport", "DemoConfig", "DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    cycles: int = 3
    holdout_fraction: float = 0.2
    labelled_fraction: float = 0.05
    users: int = 20
    feedback_share: float = 0.7
    requests_per_cycle: int | None = None  # default: the unlabelled pool split over the cycles
    epochs: int = 30
    concurrency: int = 4
    seed: int = 0


@dataclass(frozen=True)
class CycleReport:
    cycle: int
    predictions: int
    feedback_sent: int
    feedback_used: int
    dataset_version: int
    accuracy: float
    champion_accuracy: float | None
    promoted: bool
    model_version: int
    reason: str


@dataclass
class DemoResult:
    project_dir: str
    cycles: list[CycleReport] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        keys = ("cycle", "feedback_used", "accuracy", "champion_accuracy", "promoted")
        return {
            "project_dir": self.project_dir,
            "cycles": [
                {k: asdict(c)[k] for k in keys}
                | {
                    "model_version": c.model_version,
                    "dataset_version": c.dataset_version,
                    "predictions": c.predictions,
                    "feedback_sent": c.feedback_sent,
                    "reason": c.reason,
                }
                for c in self.cycles
            ],
        }


Event = Callable[[str, dict[str, Any]], None]


def _split(labels: np.ndarray, cfg: DemoConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the held-out split, the labelled slice, and the unlabelled pool."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    pool, holdout = train_test_split(
        idx, test_size=cfg.holdout_fraction, random_state=cfg.seed, stratify=labels
    )
    rest, labelled = train_test_split(
        pool, test_size=cfg.labelled_fraction, random_state=cfg.seed, stratify=labels[pool]
    )
    return np.sort(holdout), np.sort(labelled), rest


def _wait_for_job(client: httpx.Client, job_id: str, timeout_s: float = 1800) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["status"] in ("succeeded", "failed"):
            return job
        if time.monotonic() > deadline:
            raise FlywheelError(f"retrain job {job_id} did not finish within {timeout_s:.0f} s")
        time.sleep(0.25)


def run_demo(
    cfg: DemoConfig | None = None,
    *,
    project_dir: str | Path | None = None,
    on_event: Event | None = None,
) -> DemoResult:
    cfg = cfg or DemoConfig()
    emit = on_event or (lambda _kind, _data: None)
    images, labels = digits_arrays()
    holdout, labelled, pool = _split(labels, cfg)
    root = Path(project_dir) if project_dir else Path(tempfile.mkdtemp(prefix="flywheel-demo-"))
    if project_dir is None:
        root = root / "project"
    project = _make_project(root, images, labels, holdout, labelled, cfg)
    emit(
        "init",
        {
            "project_dir": str(root),
            "holdout": len(holdout),
            "labelled": len(labelled),
            "pool": len(pool),
        },
    )
    result = DemoResult(str(root))
    first = project.train(on_epoch=lambda r: emit("epoch", asdict(r)))
    result.cycles.append(
        CycleReport(
            0,
            0,
            0,
            0,
            first.model.dataset_version,
            first.decision.challenger_score,
            None,
            first.promoted,
            first.model.version,
            first.decision.reason,
        )
    )
    emit("cycle", asdict(result.cycles[-1]))

    admin_key, _ = project.create_key(["admin"], name="demo-admin")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(pool)
    per_cycle = cfg.requests_per_cycle or len(order) // max(cfg.cycles, 1)
    users = _Users([f"user-{i:02d}" for i in range(cfg.users)], images, labels)
    with BackgroundServer(project) as server:
        headers = {"Authorization": f"Bearer {admin_key}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            for cycle in range(1, cfg.cycles + 1):
                batch = order[(cycle - 1) * per_cycle : cycle * per_cycle]
                who = rng.integers(0, cfg.users, size=len(batch))
                answers = rng.random(len(batch)) < cfg.feedback_share
                with ThreadPoolExecutor(cfg.concurrency) as pool_exec:
                    asks = (
                        (client, int(i), int(u), bool(a))
                        for i, u, a in zip(batch, who, answers, strict=True)
                    )
                    sent = sum(pool_exec.map(lambda args: users.ask(*args), asks))
                emit("traffic", {"cycle": cycle, "predictions": len(batch), "feedback": sent})
                report = _retrain(client, cycle, len(batch), sent)
                result.cycles.append(report)
                emit("cycle", asdict(report))
    project.close()
    return result


def _make_project(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    holdout: np.ndarray,
    labelled: np.ndarray,
    cfg: DemoConfig,
) -> Project:
    """The demo's project: the held-out split and the small labelled slice."""
    base = [RawExample(encode_png(images[i]), str(labels[i]), split=HOLDOUT) for i in holdout]
    base += [RawExample(encode_png(images[i]), str(labels[i]), split=TRAIN) for i in labelled]
    project = Project.init(
        root,
        ListSource("digits (demo: held-out split + labelled slice)", base),
        # the access log to a file: the demo prints its own progress on the terminal
        settings={
            "epochs": cfg.epochs,
            "seed": cfg.seed,
            "image_size": 8,
            "access_log": "logs/access.jsonl",
        },
    )
    # The simulated users' pseudonyms come from a key fixed by the seed, so that a
    # rerun files them in the same order (a real project's key is random).
    key = hashlib.sha256(f"flywheel-demo-{cfg.seed}".encode()).digest()
    seed_user_key(project.settings.user_keys, key)
    return project


@dataclass(frozen=True)
class _Users:
    """The simulated users: each asks about a digit and, when it answers, says its label."""

    ids: list[str]
    images: np.ndarray
    labels: np.ndarray

    def ask(self, client: httpx.Client, i: int, who: int, answers: bool) -> bool:
        user = {"X-User-Id": self.ids[who]}
        files = {"file": (f"digit-{i}.png", encode_png(self.images[i]), "image/png")}
        pred = client.post("/v1/predict", files=files, headers=user)
        pred.raise_for_status()
        if not answers:
            return False
        body = {"prediction_id": pred.json()["prediction_id"], "label": str(self.labels[i])}
        client.post("/v1/feedback", json=body, headers=user).raise_for_status()
        return True


def _retrain(client: httpx.Client, cycle: int, predictions: int, sent: int) -> CycleReport:
    """A retrain through the API, awaited; its outcome as a cycle of the table."""
    job_id = client.post("/v1/retrain", json={}).raise_for_status().json()["job_id"]
    job = _wait_for_job(client, job_id)
    if job["status"] != "succeeded":
        raise FlywheelError(f"retrain job {job_id} failed: {job['error']}")
    r = job["result"]
    if r["skipped"]:
        raise FlywheelError(f"retrain of cycle {cycle} was skipped: {r['reason']}")
    return CycleReport(
        cycle,
        predictions,
        sent,
        r["feedback_used"],
        r["dataset_version"],
        r["metrics"]["accuracy"],  # the held-out split's, as for cycle 0
        held["champion"] if (held := r["splits"].get("holdout")) else r["champion_accuracy"],
        r["promoted"],
        r["model_version"],
        r["reason"],
    )

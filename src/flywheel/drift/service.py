"""Monitoring windows: production's calls in windows of ``drift_window``, each tested
for drift against the project's untrained rows and given a label-free accuracy
estimate; the accuracy its answers show is filled in as they arrive."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from flywheel.context import Context
from flywheel.data import EVALUATION, HOLDOUT, TRAIN
from flywheel.data.service import DatasetService
from flywheel.drift import repo
from flywheel.drift.stats import (
    MIN_REFERENCE,
    Reference,
    build_reference,
    fit_confidence_temperature,
    penultimate,
    scaled_confidence,
)
from flywheel.events import repo as events
from flywheel.registry import LoadedModel, VersionInfo
from flywheel.registry.service import RegistryService
from flywheel.store.schema import DriftWindow, Prediction, utcnow

__all__ = ["DriftService"]

#: windows closed per update at most (a backlog is worked through over several)
MAX_PER_UPDATE = 50
#: windows whose observed accuracy an update refreshes (answers arrive after a window)
REFRESH = 50
#: answered calls that calibrate the label-free estimate alone; fewer are pooled with
#: the reference rows
CALIBRATION_ALONE = 100
#: production calls a reference drawn from them holds at most
PRODUCTION_REFERENCE = 1000


@dataclass
class _Baseline:
    """What a model version's windows are compared with."""

    version: int
    rows: int  # reference rows
    kind: str  # "rows": held out + evaluation (+ training); "production": recent calls
    source: str
    temperature: float | None  # fitted on the labelled reference rows
    drift: Reference | None
    why: str | None  # why there is no drift test (too few rows), if there is none
    #: the labelled reference rows' probabilities and whether the model had them right,
    #: pooled into the estimate's calibration while few calls are answered
    probs: np.ndarray | None = None
    right: np.ndarray | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model_version": self.version,
            "rows": self.rows,
            "kind": self.kind,
            "source": self.source,
            "temperature": self.temperature,
            "tests": None if self.drift is None else list(self.drift.tests),
            "calibration_rounds": None if self.drift is None else self.drift.rounds,
            "unavailable": self.why,
        }


class DriftService:
    def __init__(self, ctx: Context, registry: RegistryService, data: DatasetService) -> None:
        self.ctx = ctx
        self.registry = registry
        self.data = data
        self._baselines: dict[int, _Baseline] = {}
        self._lock = threading.Lock()
        self._mark: tuple[Any, ...] | None = None

    # -- the reference -----------------------------------------------------------------

    def baseline(self, version: int) -> _Baseline:
        with self._lock:
            if version not in self._baselines:
                self._baselines = {version: self._build(version)}  # keep the newest only
            return self._baselines[version]

    def _build(self, version: int) -> _Baseline:
        """The reference rows: the project's held-out and evaluation rows (and training
        rows, for tabular features) — unless the version replaced one whose traffic had
        moved (its newest windows alarmed) after that move began: then the new normal,
        production's calls from those windows, is what a new change is measured against
        (and a version that replaced one judged that way inherits it), so that an alarm
        means a change the model was not retrained after."""
        st = self.ctx.settings
        loaded = self.registry.cache.get(version)
        info = self.registry.version(version)
        rows = self.data.rows(info.dataset_version, HOLDOUT) + self.data.rows(
            info.dataset_version, EVALUATION
        )
        source = "held-out and evaluation rows"
        if loaded.is_regression:  # features are not learned: training rows are fair too
            rows += self.data.rows(info.dataset_version, TRAIN)
            source += ", and training rows (tabular features)"
        arrays = self.data.arrays(rows, loaded.spec)
        probs = right = temperature = None
        if not loaded.is_regression:
            probs = loaded.outputs(arrays.x)
            right = probs.argmax(1) == np.asarray(arrays.y)
            if len(rows) >= 10:
                temperature = fit_confidence_temperature(probs, right)
        moved = self._production_rows(version, info, loaded)
        kind, y = "rows", None if probs is None else arrays.y
        if moved is not None:
            x, source = moved
            kind, y = "production", None
        else:
            x = arrays.x
        emb = _embed(loaded, x)
        ref_probs = None if loaded.is_regression else loaded.outputs(x)
        drift, why = None, None
        try:
            drift = build_reference(
                emb,
                loaded.outputs(x) if ref_probs is None else np.zeros(len(emb)),
                probabilities=ref_probs,
                y=y,
                window=st.drift_window,
                alpha=st.drift_alpha,
                seed=version,
                # the new normal may have served one window before the retrain, part of
                # it trained on: as many as a short window then
                min_rows=st.drift_min_window if kind == "production" else None,
            )
        except ValueError as exc:
            why = f"no drift test yet: {exc}; the evaluation split grows with trusted answers"
        return _Baseline(version, len(emb), kind, source, temperature, drift, why, probs, right)

    def _production_rows(
        self, version: int, info: VersionInfo, loaded: LoadedModel
    ) -> tuple[np.ndarray, str] | None:
        """The inputs of the calls that are the new normal for ``version`` and where
        they came from, or None (see ``_build``)."""
        with self.ctx.db.session() as s:
            run = repo.previous_run(s, version)
            if not run or run[-1].created_at >= info.created_at:
                return None  # no windows before it, or it was trained before they began
            inherited = (run[0].tests.get("reference") or {}).get("kind") == "production"
            if not (run[0].alarm or inherited):
                return None
            calls: list[Prediction] = []
            used: list[int] = []
            for w in run:
                if w.created_at >= info.created_at:
                    continue  # closed while the version was being trained
                calls += repo.calls_in(s, w)
                used.append(w.id)
                if len(calls) >= PRODUCTION_REFERENCE:
                    break
            s.expunge_all()
        trained = {r[0] for r in self.data.rows(info.dataset_version, TRAIN)}
        # answered calls it was trained on would sit closer to it than new traffic does
        present = [
            c for c in calls if c.input_hash not in trained and self.ctx.blobs.exists(c.input_hash)
        ]
        if len(present) < self.ctx.settings.drift_min_window:
            return None
        x = self.ctx.codec.decode_batch(
            [self.ctx.blobs.get(c.input_hash) for c in present], loaded.spec.preprocessing
        )
        state = "alarmed" if run[0].alarm else "were judged against the traffic"
        source = (
            f"production's calls in windows {min(used)}-{max(used)} of version "
            f"{run[0].model_version}, which {state} before this version was trained"
        )
        return x, source

    def _temperature(
        self, version: int, base: _Baseline, first: Prediction, labels: list[str]
    ) -> tuple[float | None, str | None]:
        """The label-free estimate's temperature for a window starting at ``first``: fitted
        on the version's calls answered before it (live traffic as it comes; the held-out
        rows are harder than live traffic, which repeats what the model was trained on),
        pooled with the labelled reference rows while fewer than ``CALIBRATION_ALONE``."""
        with self.ctx.db.session() as s:
            answered = repo.answered_calls(s, version, (first.created_at, first.id))
        n = len(answered)
        probs = np.array(
            [[float(p.get(lab, 0.0)) for lab in labels] for p, _, _ in answered], np.float64
        ).reshape(n, len(labels))
        right = np.array([r for _, _, r in answered], bool)
        if n < CALIBRATION_ALONE and base.probs is not None and len(base.probs) >= 10:
            probs = np.vstack([probs, base.probs])
            right = np.concatenate([right, base.right])
            what = f"{n} answered calls and {len(base.probs)} reference rows"
        else:
            what = f"{n} answered calls"
        if len(probs) < 10:
            return base.temperature, None
        return fit_confidence_temperature(probs, right), what

    # -- closing windows -------------------------------------------------------------

    def update(self) -> list[dict[str, Any]]:
        """Close every window of production's calls that is due (``drift_window`` calls,
        or ``drift_window_s`` old with ``drift_min_window``), refresh the observed
        accuracy of recent windows; the windows closed, as JSON."""
        self.ctx.settle()
        version = self.registry.production()
        closed: list[dict[str, Any]] = []
        if version is None:
            return closed
        for _ in range(MAX_PER_UPDATE):
            calls = self._due(version)
            if not calls:
                break
            closed.append(self._close(version, calls))
        with self.ctx.db.session() as s:
            mark = repo.answers_mark(s)
            if closed or mark != self._mark:  # only when an answer may have changed
                for w in repo.windows(s, REFRESH):
                    repo.update_observed(w, *repo.answers(s, w))
        self._mark = mark
        return closed

    def _due(self, version: int) -> list[Prediction]:
        st = self.ctx.settings
        with self.ctx.db.session() as s:
            last = repo.last_window(s, version)
            after = None if last is None else (last.last_at, last.last_id)
            calls = repo.calls_after(s, version, after, st.drift_window)
            s.expunge_all()
        if len(calls) >= st.drift_window:
            return calls
        if st.drift_window_s is None or len(calls) < st.drift_min_window:
            return []
        if utcnow() - calls[0].created_at >= timedelta(seconds=st.drift_window_s):
            return calls
        return []

    def _close(self, version: int, calls: list[Prediction]) -> dict[str, Any]:
        base = self.baseline(version)
        loaded = self.registry.cache.get(version)
        present = [c for c in calls if self.ctx.blobs.exists(c.input_hash)]  # forgotten: gone
        estimated, alarm = None, False
        tests: dict[str, Any] = {"reference": base.to_json()}
        probs = np.zeros((0, 0))
        if not loaded.is_regression:
            probs = _probabilities(present, loaded.labels)
            temperature, calibration = self._temperature(version, base, calls[0], loaded.labels)
            if temperature is not None and len(probs):
                estimated = float(scaled_confidence(probs, temperature).mean())
                tests["calibration"] = {"temperature": temperature, "rows": calibration}
        if base.drift is not None and len(present) >= self.ctx.settings.drift_min_window:
            x = self.ctx.codec.decode_batch(
                [self.ctx.blobs.get(c.input_hash) for c in present], loaded.spec.preprocessing
            )
            emb = _embed(loaded, x)
            if loaded.is_regression:
                values = np.array([c.value for c in present], np.float64)
                result = base.drift.score(emb, None, values)
            else:
                conf = scaled_confidence(probs, base.drift.temperature or 1.0)  # as its reference
                result = base.drift.score(emb, probs.argmax(1), conf)
                tests["estimates"] = {"confidence": estimated, "atc": base.drift.atc(conf)}
            alarm = result.alarm
            tests |= {
                "scores": result.scores,
                "thresholds": result.thresholds,
                "p_values": result.p_values,
                "drift_score": result.drift_score,
                "judged_calls": len(present),
            }
        elif base.drift is not None:
            tests["unavailable"] = (
                f"{len(present)} of the window's inputs are still stored; a test needs "
                f"{self.ctx.settings.drift_min_window}"
            )
        with self.ctx.db.session() as s:
            w = repo.add_window(
                s, model_version=version, calls=len(calls), first_at=calls[0].created_at,
                last_at=calls[-1].created_at, first_id=calls[0].id, last_id=calls[-1].id,
                tests=tests, alarm=alarm, estimated_accuracy=estimated, created_at=utcnow(),
            )  # fmt: skip
            out = window_json(w)
            if alarm:
                events.record(
                    s, self.ctx.settings.webhooks, "drift.alarm",
                    {k: out[k] for k in ("window", "model_version", "calls", "first_at",
                                         "last_at", "scores", "thresholds", "p_values",
                                         "estimated_accuracy")},
                )  # fmt: skip
        return out

    # -- reading ---------------------------------------------------------------------

    def windows(self, limit: int = 100, *, update: bool = False) -> dict[str, Any]:
        """The newest ``limit`` windows, oldest first, with the accuracy their answers
        show now; and what production's windows are compared with. With ``update`` the
        windows due are closed first (``closed``: their numbers)."""
        closed = self.update() if update else []
        version = self.registry.production()
        with self.ctx.db.session() as s:
            rows = repo.windows(s, limit)
            out = []
            for w in rows:
                d = window_json(w)
                answered, right = repo.answers(s, w)
                d["answered"] = answered
                d["observed_accuracy"] = right / answered if answered else None
                d["estimate_error"] = _error(d)
                out.append(d)
        with self._lock:
            base = self._baselines.get(version) if version is not None else None
        st = self.ctx.settings
        return {
            "window": st.drift_window,
            "window_s": st.drift_window_s,
            "alpha": st.drift_alpha,
            "min_reference": max(st.drift_window, MIN_REFERENCE),
            "reference": None if base is None else base.to_json(),
            "closed": [w["window"] for w in closed],
            "windows": out,
        }


def _embed(loaded: LoadedModel, x: np.ndarray) -> np.ndarray:
    """Penultimate-layer embeddings; for tabular rows, the features themselves; for an
    imported graph (no layers to read), its probabilities."""
    if loaded.is_regression:
        return np.asarray(x, np.float64).reshape(len(x), -1)
    if loaded.imported:
        return loaded.outputs(x).astype(np.float64)
    return penultimate(loaded.model, x)


def _probabilities(calls: list[Prediction], labels: list[str]) -> np.ndarray:
    return np.array(
        [[float(c.probabilities.get(lab, 0.0)) for lab in labels] for c in calls], np.float64
    ).reshape(len(calls), len(labels))


def _error(d: dict[str, Any]) -> float | None:
    est, obs = d["estimated_accuracy"], d["observed_accuracy"]
    return None if est is None or obs is None else est - obs


def window_json(w: DriftWindow) -> dict[str, Any]:
    tests = dict(w.tests)
    return {
        "window": w.id,
        "model_version": w.model_version,
        "calls": w.calls,
        "first_at": w.first_at.isoformat(),
        "last_at": w.last_at.isoformat(),
        "scores": tests.get("scores"),
        "thresholds": tests.get("thresholds"),
        "p_values": tests.get("p_values"),
        "drift_score": tests.get("drift_score"),
        "alarm": w.alarm,
        "unavailable": tests.get("unavailable") or tests.get("reference", {}).get("unavailable"),
        "estimated_accuracy": w.estimated_accuracy,
        "estimates": tests.get("estimates"),
        "calibration": tests.get("calibration"),
        "observed_accuracy": w.observed_accuracy,
        "answered": w.answered,
        "estimate_error": None,
    }

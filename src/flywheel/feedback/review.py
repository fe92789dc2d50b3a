"""The review queue's service: the logged predictions most worth a user's answer, with
golden probes (inputs whose label is known) among them, every item handed out on
record."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from flywheel.context import Context
from flywheel.data import repo as data_repo
from flywheel.errors import InputError, ProjectError
from flywheel.feedback import repo
from flywheel.feedback.queue import STRATEGIES, Candidate, rank
from flywheel.outputs import read_output
from flywheel.registry.cache import ModelCache
from flywheel.store.schema import Prediction, ReviewItem

__all__ = ["ReviewService"]


class ReviewService:
    def __init__(self, ctx: Context, cache: ModelCache) -> None:
        self.ctx = ctx
        self.cache = cache

    def queue(
        self,
        *,
        limit: int = 20,
        strategy: str | None = None,
        spread: bool = False,
        seed: int = 0,
    ) -> list[dict[str, Any]]:
        """The logged predictions most worth a user's answer, not yet answered.

        A share (``golden_share``) of the items are golden probes: training examples
        whose label is known, predicted afresh, so that answers to them measure trust.
        Every item handed out is recorded; feedback on it is marked as queue feedback.
        """
        self.ctx.settle()
        st = self.ctx.settings
        if self.ctx.task.is_regression:
            raise InputError(
                "the review queue ranks class probabilities; this is a regression project"
            )
        strategy = strategy or st.review_strategy
        if strategy not in STRATEGIES:
            raise InputError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        if limit < 1 or limit > 500:
            raise InputError(f"limit must be between 1 and 500; got {limit}")
        with self.ctx.db.session() as s:
            recent = repo.recent_unanswered(s, st.review_window)
            # Never ask about an input whose label is already known or already given.
            known = repo.known_inputs(s, {h for _, _, h in recent})
        candidates = [
            Candidate(pid, probs, h)
            for pid, probs, h in recent
            # an input the retention job deleted cannot be shown to anyone
            if probs and h not in known and self.ctx.blobs.exists(h)
        ]
        share = st.golden_share
        room = min(limit - 1, round(limit * share)) if limit > 1 else 0
        picked = rank(candidates, strategy=strategy, limit=limit - room, spread=spread, seed=seed)
        # Golden probes in proportion to the real items: a queue of nothing but probes
        # would give them away.
        n_golden = min(room, round(len(picked) * share / (1 - share))) if share < 1 else 0
        items = [i.to_json() for i in picked]
        probes = self._golden_probes(n_golden, seed, strategy) if n_golden else []
        with self.ctx.db.session() as s:  # one transaction: the probes and what is handed out
            for prediction, item, _ in probes:
                s.add(prediction)
                s.flush()
                s.add(item)
            for i in picked:
                if s.get(ReviewItem, i.prediction_id) is None:
                    s.add(
                        ReviewItem(
                            prediction_id=i.prediction_id,
                            strategy=strategy,
                            score=i.score,
                            reason=i.reason,
                        )
                    )
        # Golden probes sit among the others, so a user cannot tell them apart.
        rng = np.random.default_rng(seed + len(items))
        for _, _, g in probes:
            items.insert(int(rng.integers(0, len(items) + 1)), g)
        return items

    def _golden_probes(
        self, n: int, seed: int, strategy: str
    ) -> list[tuple[Prediction, ReviewItem, dict[str, Any]]]:
        """``n`` training examples whose label is known, predicted afresh: the rows that
        record them (for the caller's transaction) and their items."""
        loaded = self.cache.current().loaded
        with self.ctx.db.session() as s:
            dv = data_repo.latest(s)
            if dv is None:
                raise ProjectError(
                    "the project has no dataset version", path=self.ctx.settings.project_dir
                )
            pool = data_repo.probe_pool(s, dv.id)
            used = repo.probes_used(s)
        if not pool:
            return []
        rng = np.random.default_rng(seed * 7919 + used)
        out: list[tuple[Prediction, ReviewItem, dict[str, Any]]] = []
        for k in rng.choice(len(pool), size=min(n, len(pool)), replace=False):
            example_id, digest = pool[int(k)]
            content = self.ctx.blobs.get(digest)
            probs = loaded.outputs(loaded.decode(content)[None])[0]
            pid = str(uuid.uuid4())
            label, probabilities, _ = read_output(loaded.labels, probs)
            assert probabilities is not None  # the queue is for classes
            # Scored and explained like any other item, so a user cannot tell it apart.
            (item,) = rank([Candidate(pid, probabilities, digest)], strategy=strategy, limit=1)
            prediction = Prediction(
                id=pid,
                model_version=loaded.version,
                user_id=None,
                input_hash=digest,
                label=label,
                probabilities=probabilities,
                latency_ms=0.0,
            )
            review = ReviewItem(
                prediction_id=pid,
                strategy=strategy,
                score=item.score,
                reason=item.reason,
                golden_example_id=int(example_id),
            )
            out.append((prediction, review, item.to_json()))
        return out

"""The review queue's service: the logged predictions most worth a user's answer, with
golden probes (inputs whose label is known) among them, every item handed out on
record.

Trust needs overlap: an answer that nobody else gave, about an input whose label
nobody knows, says nothing about its user. So a queue asked for by a named user
carries more golden probes until that user has answered ``golden_early`` of them,
and a share (``second_opinion_share``) of second opinions: inputs exactly one other
user answered, asked again. A user who always answers wrongly is then told apart
within a few answers even when nobody else happens to send the same items.
"""

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
from flywheel.privacy.identity import IdentityService
from flywheel.registry.cache import ModelCache
from flywheel.store import ensure_user
from flywheel.store.schema import Prediction, ReviewItem

__all__ = ["ReviewService"]


class ReviewService:
    def __init__(self, ctx: Context, cache: ModelCache, identity: IdentityService) -> None:
        self.ctx = ctx
        self.cache = cache
        self.identity = identity

    def queue(
        self,
        *,
        limit: int = 20,
        strategy: str | None = None,
        spread: bool = False,
        seed: int = 0,
        user_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The logged predictions most worth a user's answer, not yet answered.

        A share (``golden_share``) of the items are golden probes: training examples
        whose label is known, predicted afresh, so that answers to them measure trust.
        For a named ``user_id``: up to half the items are probes until the user has
        answered ``golden_early`` of them, and a share (``second_opinion_share``) are
        inputs one other user answered alone. Every item handed out is recorded;
        feedback on it is marked as queue feedback.
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
        asker = self.identity.pseudonym(user_id)
        with self.ctx.db.session() as s:
            recent = repo.recent_unanswered(s, st.review_window)
            # Never ask about an input whose label is already known or already given.
            known = repo.known_inputs(s, {h for _, _, h in recent})
            golden_done = 0 if asker is None else repo.golden_answered(s, asker)
            lone = [] if asker is None else repo.lone_answers(s, asker, st.review_window)
        candidates = [
            Candidate(pid, probs, h)
            for pid, probs, h in recent
            # an input the retention job deleted cannot be shown to anyone
            if probs and h not in known and self.ctx.blobs.exists(h)
        ]
        share = st.golden_share
        early = asker is not None and golden_done < st.golden_early
        room = min(limit - 1, round(limit * share)) if limit > 1 else 0
        if early:
            room = max(room, min(limit // 2, st.golden_early - golden_done))
        seconds = [] if asker is None else lone[: round((limit - room) * st.second_opinion_share)]
        picked = rank(
            candidates,
            strategy=strategy,
            limit=limit - room - len(seconds),
            spread=spread,
            seed=seed,
        )
        # Golden probes in proportion to the real items: a queue of nothing but probes
        # would give them away (a new user's: one for each real item, at most).
        real = len(picked) + len(seconds)
        if early:
            n_golden = min(room, real)
        else:
            n_golden = min(room, round(real * share / (1 - share))) if share < 1 else 0
        items = [i.to_json() for i in picked]
        probes = self._golden_probes(n_golden, seed, strategy, asker) if n_golden else []
        probes += self._asked_again(seconds, strategy, asker)
        with self.ctx.db.session() as s:  # one transaction: the probes and what is handed out
            if asker is not None and probes:
                ensure_user(s, asker)
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
        # Golden probes and second opinions sit among the others, so that a user cannot
        # tell them apart.
        rng = np.random.default_rng(seed + len(items))
        for _, _, g in probes:
            items.insert(int(rng.integers(0, len(items) + 1)), g)
        return items

    def _golden_probes(
        self, n: int, seed: int, strategy: str, asker: str | None
    ) -> list[tuple[Prediction, ReviewItem, dict[str, Any]]]:
        """``n`` training examples whose label is known, predicted afresh: the rows that
        record them (for the caller's transaction) and their items."""
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
        picks = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
        return [self._ask(pool[int(k)][1], strategy, asker, pool[int(k)][0]) for k in picks]

    def _asked_again(
        self, digests: list[str], strategy: str, asker: str | None
    ) -> list[tuple[Prediction, ReviewItem, dict[str, Any]]]:
        """Second opinions: inputs one other user answered alone, predicted afresh."""
        return [self._ask(h, strategy, asker) for h in digests if self.ctx.blobs.exists(h)]

    def _ask(
        self, digest: str, strategy: str, asker: str | None, golden: int | None = None
    ) -> tuple[Prediction, ReviewItem, dict[str, Any]]:
        """A fresh prediction on a stored input, to hand out (golden: its example id)."""
        loaded = self.cache.current().loaded
        probs = loaded.outputs(loaded.decode(self.ctx.blobs.get(digest))[None])[0]
        pid = str(uuid.uuid4())
        label, probabilities, _ = read_output(loaded.labels, probs)
        assert probabilities is not None  # the queue is for classes
        # Scored and explained like any other item, so a user cannot tell it apart.
        (item,) = rank([Candidate(pid, probabilities, digest)], strategy=strategy, limit=1)
        prediction = Prediction(
            id=pid,
            model_version=loaded.version,
            user_id=asker,
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
            golden_example_id=golden,
        )
        return prediction, review, item.to_json()

"""Explanations' service: attributions of a logged prediction by the version that made
it, cached per input, version and target (the overlay PNG in the blob folder)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.context import Context
from flywheel.errors import NotFoundError
from flywheel.explain.attributions import explain, overlay_png
from flywheel.registry.cache import ModelCache
from flywheel.store.schema import Explanation, Prediction

__all__ = ["ExplainService"]


class ExplainService:
    def __init__(self, ctx: Context, cache: ModelCache) -> None:
        self.ctx = ctx
        self.cache = cache

    def explain(self, prediction_id: str, target: str | None = None) -> dict[str, Any]:
        """Why the model answered what it did (Captum), cached per input, model version
        and target class; the PNG overlay (images, audio) goes to the blob folder."""
        version, detail, png = self._explanation(prediction_id, target)
        return {
            "prediction_id": prediction_id,
            "model_version": version,
            **detail,
            "overlay": png is not None,
        }

    def png(self, prediction_id: str, target: str | None = None) -> bytes:
        """The PNG overlay of ``explain`` (computed if not cached)."""
        _, _, png = self._explanation(prediction_id, target)
        if png is None:
            raise NotFoundError("overlay (this task's explanations have none) for", prediction_id)
        return self.ctx.blobs.get(png)

    def _explanation(
        self, prediction_id: str, target: str | None
    ) -> tuple[int, dict[str, Any], str | None]:
        """(model version, the explanation's JSON, its overlay's blob) — cached or made."""
        self.ctx.wait_written(prediction_id)
        with self.ctx.db.session() as s:
            pred = s.get(Prediction, prediction_id)
            if pred is None:
                raise NotFoundError("prediction", prediction_id)
            input_hash, version, label = pred.input_hash, pred.model_version, pred.label
            key = target if target is not None else (label or "")
            if (hit := _cached(s, input_hash, version, key)) is not None:
                return version, dict(hit.detail), hit.png_hash
        blobs = self.ctx.blobs
        if not blobs.exists(input_hash):
            raise NotFoundError("stored input of prediction", prediction_id)
        loaded = self.cache.get(version)
        content = blobs.get(input_hash)
        ex = explain(loaded, content, target=key or None)
        png = None
        if ex.map is not None:
            png = blobs.put(overlay_png(ex, content, self.ctx.task.modality))
        with self.ctx.db.session() as s:
            if s.get(Prediction, prediction_id) is None:  # forgotten while we computed
                if png is not None:
                    blobs.delete(png)
                raise NotFoundError("prediction", prediction_id)
            if (hit := _cached(s, input_hash, version, key)) is not None:
                return version, dict(hit.detail), hit.png_hash  # two requests at once
            s.add(
                Explanation(
                    input_hash=input_hash,
                    model_version=version,
                    target=key,
                    detail=ex.to_json(),
                    png_hash=png,
                )
            )
        return version, ex.to_json(), png


def _cached(s: Session, input_hash: str, version: int, target: str) -> Explanation | None:
    return s.scalar(
        select(Explanation).where(
            Explanation.input_hash == input_hash,
            Explanation.model_version == version,
            Explanation.target == target,
        )
    )

"""The records of the loop's traffic: a prediction as answered, an answer about it as
received and as stored, and who contributed a dataset version's new rows."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from flywheel.errors import ConflictError, InputError, NotFoundError
from flywheel.outputs import read_output

__all__ = [
    "IDEMPOTENCY_KEY_MAX",
    "FeedbackIn",
    "FeedbackResult",
    "KeyedAnswers",
    "PredictionResult",
    "ValueRange",
    "answer",
    "check_feedback",
    "contribution",
    "fingerprint",
    "idempotency_id",
    "idempotency_key",
]


@dataclass(frozen=True)
class PredictionResult:
    prediction_id: str
    model_version: int
    latency_ms: float
    label: str | None = None  # classification
    probabilities: dict[str, float] | None = None
    value: float | None = None  # regression


def answer(
    version: int,
    labels: Sequence[str],
    output: np.ndarray,
    *,
    content: bytes,
    user_id: str | None,
    latency_ms: float,
) -> tuple[PredictionResult, dict[str, Any]]:
    """(the client's answer, the prediction log's row) of one row of a model version's
    outputs, for the input ``content`` (as kept) from ``user_id`` (a pseudonym).

    An answer that is not a finite number (features far beyond anything the model was
    trained on can overflow it) is refused: JSON has no NaN, and neither does the log.
    """
    if not np.isfinite(output).all():
        raise InputError(
            "the model's answer to this input is not a finite number; are its values far "
            "outside what the model was trained on?"
        )
    pid = str(uuid.uuid4())
    label, probabilities, value = read_output(labels, output)
    result = PredictionResult(pid, version, latency_ms, label, probabilities, value)
    row = {
        "id": pid,
        "model_version": version,
        "user_id": user_id,
        "content": content,
        "label": label,
        "value": value,
        "probabilities": probabilities or {},
        "latency_ms": latency_ms,
        "created_at": datetime.now(UTC),
    }
    return result, row


@dataclass(frozen=True)
class FeedbackIn:
    """One user's answer about a prediction, as received."""

    prediction_id: str
    label: str | None = None
    correct: bool | None = None
    value: float | None = None
    user_id: str | None = None
    #: only about a prediction made for the same user (a caller without a key): any
    #: other is answered as unknown, so that its existence is not told either
    only_own: bool = False
    #: the client's key of this answer, unique in the store (:func:`idempotency_id`, a
    #: Label Studio annotation's id): the same key again with the same answer is
    #: answered with the stored one, with another answer refused
    external_id: str | None = None


@dataclass(frozen=True)
class FeedbackResult:
    feedback_id: str
    prediction_id: str
    label: str | None
    value: float | None = None
    agreed: bool | None = None  # did the user agree with the prediction (None: not judged)
    #: the answer stored before under the same ``external_id``, not stored again
    replayed: bool = False


@dataclass(frozen=True)
class ValueRange:
    """The true values a regression model's feedback may give: within ``z`` standard
    deviations of its training targets' mean."""

    mean: float
    std: float
    z: float

    def check(self, value: float) -> None:
        if abs(value - self.mean) > self.z * self.std:
            raise InputError(
                f"'value' {value!r} is out of range: more than {self.z:g} standard deviations "
                f"from the mean of the model's training targets ({self.mean:.4g} ± "
                f"{self.z:g} × {self.std:.4g}); a value that far out is refused "
                "(setting max_value_z)"
            )


def check_feedback(pred: Any, it: FeedbackIn, values: ValueRange | None = None) -> FeedbackResult:
    """Check one answer against its prediction's row (``pred``: its label, value,
    probabilities and model version; None: unknown prediction) and, for regression, the
    range of true values its model version takes."""
    label, correct, value = it.label, it.correct, it.value
    if pred is None:
        raise NotFoundError("prediction", it.prediction_id)
    if pred.value is not None or pred.label is None:  # a regression prediction
        if label is not None:
            raise InputError(
                "this prediction is a regression value: send 'value' (the true value), not 'label'"
            )
        if value is not None and not np.isfinite(value):
            raise InputError(f"'value' must be a finite number; got {value!r}")
        if value is not None and values is not None:
            values.check(value)
        agreed = correct if value is None else None
    else:
        if value is not None:
            raise InputError(
                "this prediction is a class: send 'label' (the true label), not 'value'"
            )
        labels = list(pred.probabilities)
        if label is not None and label not in labels:
            raise InputError(
                f"label {label!r} is not one of model v{pred.model_version}'s labels: "
                f"{', '.join(labels)}"
            )
        if correct is True and label is not None and label != pred.label:
            raise InputError(
                f"'correct': true contradicts label {label!r}: the prediction was {pred.label!r}"
            )
        agreed = correct if correct is not None else label == pred.label
    return FeedbackResult(str(uuid.uuid4()), it.prediction_id, label, value, agreed)


def contribution(
    users: Sequence[str | None],
    first_seen: dict[str, datetime],
    since: datetime,
    *,
    first_feedback: bool,
) -> dict[str, Any]:
    """Who gave a dataset version's new rows (``users``, one per row): the largest single
    share, and the share from users first seen after ``since`` (the parent version).

    Before any feedback has been used (``first_feedback``) every user is new: the gate
    then has nothing to compare with, so it reports the share but does not flag it.
    """
    named = [u for u in users if u is not None]
    counts = Counter(named)
    top_user, top = counts.most_common(1)[0] if counts else (None, 0)
    fresh = sum(1 for u in named if first_seen.get(u) and first_seen[u] > since)
    n = len(users)
    return {
        "first_feedback": first_feedback,
        "rows": n,
        "users": len(counts),
        "top_user": top_user,
        "top_user_share": round(top / n, 4) if n else 0.0,
        "new_user_share": round(fresh / n, 4) if n else 0.0,
    }


#: the longest ``Idempotency-Key``: the column holds 200 characters, the scope's prefix 30
IDEMPOTENCY_KEY_MAX = 170
_IDEM = "idem:"


def idempotency_key(raw: str) -> str:
    """An ``Idempotency-Key`` header's key: 1 to :data:`IDEMPOTENCY_KEY_MAX` printable
    ASCII characters without spaces, bare or quoted (the IETF draft writes it as a
    structured-field string, ``"8e03978e-..."``; Stripe's clients send it bare: the two
    are the same key). Anything else is an ``InputError`` (422)."""
    key = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    if not key or len(key) > IDEMPOTENCY_KEY_MAX or not all("!" <= c <= "~" for c in key):
        shown = raw if len(raw) <= 40 else f"{raw[:40]}... ({len(raw)} characters)"
        raise InputError(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters "
            f"without spaces (a UUID is usual); got {shown!r}"
        )
    return key


def idempotency_id(key: str, scope: str) -> str:
    """The stored ``external_id`` of an ``Idempotency-Key`` sent by ``scope`` (who sent
    it: a key's name, a keyless caller's pseudonym): ``idem:<digest of scope>:<key>``.
    The digest keeps scopes apart whatever characters they hold, so that two callers can
    neither collide nor probe each other's keys, and stays clear of other kinds of ids
    (``label-studio:...``)."""
    digest = hashlib.sha256(scope.encode("utf-8")).hexdigest()[:24]
    return f"{_IDEM}{digest}:{key}"


def _named(external_id: str) -> str:
    """How an error names a stored key: the client's own ``Idempotency-Key``, or the id."""
    if external_id.startswith(_IDEM):
        return f"Idempotency-Key {external_id.split(':', 2)[2]!r}"
    return f"external id {external_id!r}"


def fingerprint(it: FeedbackIn) -> str:
    """The SHA-256 of what an answer asks (its fields, the user as a pseudonym): the same
    key may only come back with the same fingerprint. Read from the parsed answer, so
    that JSON's spacing and key order do not matter."""
    body = {
        "prediction_id": it.prediction_id,
        "label": it.label,
        "correct": it.correct,
        "value": it.value,
        "user_id": it.user_id,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


class KeyedAnswers:
    """The answers stored under a key, as one batch sees them: those already in the
    store (``stored``: rows with ``id``, ``external_id``, ``body_sha256``,
    ``prediction_id``, ``label``, ``value``, ``correct``) and those the batch adds."""

    def __init__(self, stored: Iterable[Any] = ()) -> None:
        #: key → (the fingerprint stored with it, the answer to replay)
        self._seen: dict[str, tuple[str, FeedbackResult]] = {}
        for row in stored:
            result = FeedbackResult(
                row.id, row.prediction_id, row.label, row.value, row.correct, replayed=True
            )
            self._seen[row.external_id] = (row.body_sha256 or "", result)

    def replay(self, it: FeedbackIn, digest: str) -> FeedbackResult | ConflictError | None:
        """The stored answer under ``it``'s key (None: the key is new; a ``ConflictError``:
        it was stored with another body)."""
        if it.external_id is None or it.external_id not in self._seen:
            return None
        stored_digest, result = self._seen[it.external_id]
        if stored_digest != digest:
            return ConflictError(
                f"{_named(it.external_id)} was used before for another answer (feedback "
                f"{result.feedback_id}, about prediction {result.prediction_id}): a retry "
                "must send the same body; a new answer needs a new key"
            )
        return result

    def add(self, it: FeedbackIn, digest: str, result: FeedbackResult) -> None:
        """``result`` is stored under ``it``'s key by this batch."""
        if it.external_id is not None:
            self._seen[it.external_id] = (digest, replace(result, replayed=True))

"""End users' service: trust re-estimated from what the system can check, the list of
users with the counts behind it, and quarantine. Each public method commits what it
writes in one transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from flywheel.context import Context
from flywheel.data import repo as data_repo
from flywheel.errors import ProjectError
from flywheel.feedback import repo
from flywheel.feedback.trust import Vote, estimate_trust
from flywheel.privacy.identity import IdentityService
from flywheel.privacy.pseudonym import find_user
from flywheel.store import lock_training_rows
from flywheel.store.schema import User, utcnow

__all__ = ["UserService"]


class UserService:
    def __init__(self, ctx: Context, identity: IdentityService) -> None:
        self.ctx = ctx
        self.identity = identity

    def update_trust(self) -> dict[str, dict[str, Any]]:
        """Re-estimate every user's trust from what the system can check, and store it.

        Votes are users' labels per input; golden probes (queue items whose label is
        known) are clamped; confident production predictions act as one more voter.
        Users below ``quarantine_below`` after ``quarantine_min_answers`` answers are
        quarantined, unless an admin released them.
        """
        self.ctx.settle()
        st = self.ctx.settings
        with self.ctx.db.session() as s:
            lock_training_rows(s)  # no forget deletes a user row loaded here meanwhile
            dv = data_repo.latest(s)
            if dv is None:
                raise ProjectError("the project has no dataset version", path=st.project_dir)
            labels = list(dv.stats["labels"])
            votes = []
            for user, item, label, correct, predicted in repo.vote_rows(s):
                said = label if label is not None else (predicted if correct else None)
                if said in labels:
                    votes.append(Vote(str(user), item, str(said)))
            if not votes:
                return {}
            items = {v.item for v in votes}
            model = repo.model_votes(s, items)
            trust = estimate_trust(
                votes,
                golden=repo.golden_labels(s, items),
                model={h: (lab, c) for h, (_, c, lab) in model.items()},
                labels=labels,
            )
            now = utcnow()
            out = {}
            for user_id, t in trust.items():
                row = s.get(User, user_id)
                if row is None:
                    continue
                # Six places: what weighs a row, without the last bits of the EM's sums.
                row.trust, row.trust_detail, row.trust_updated_at = (
                    round(t.trust, 6),
                    t.to_json(),
                    now,
                )
                released = (row.quarantine_reason or "").startswith("released")
                if (
                    row.quarantined_at is None
                    and not released
                    and t.votes >= st.quarantine_min_answers
                    and t.trust < st.quarantine_below
                ):
                    row.quarantined_at = now
                    row.quarantine_reason = (
                        f"trust {t.trust:.2f} below {st.quarantine_below} after {t.votes} answers"
                    )
                out[user_id] = t.to_json()
            return out

    def users(self) -> list[dict[str, Any]]:
        """Every user with trust, the counts behind it, contributions and quarantine."""
        self.ctx.settle()
        with self.ctx.db.session() as s:
            answers, rows_used = repo.user_counts(s)
            return [
                {
                    "user_id": u.id,
                    "trust": u.trust,
                    "trust_detail": u.trust_detail,
                    "answers": answers.get(u.id, 0),
                    "rows_used": rows_used.get(u.id, 0),
                    "quarantined": u.quarantined_at is not None,
                    "quarantine_reason": u.quarantine_reason,
                    "created_at": u.created_at.isoformat(),
                }
                for u in s.scalars(select(User).order_by(User.id))
            ]

    def quarantine(self, user_id: str, reason: str) -> str:
        """Hold back a user's feedback from training (kept, listed, reversible); returns
        their pseudonym."""
        with self.ctx.db.session() as s:
            row = find_user(s, user_id, self.identity.chain)
            row.quarantined_at, row.quarantine_reason = utcnow(), reason
            return row.id

    def release(self, user_id: str) -> str:
        """Take a user out of quarantine; returns their pseudonym."""
        with self.ctx.db.session() as s:
            row = find_user(s, user_id, self.identity.chain)
            row.quarantined_at, row.quarantine_reason = None, "released by an admin"
            return row.id

    def user(self, pseudonym: str) -> dict[str, Any]:
        """One user as ``users`` lists them."""
        return next(u for u in self.users() if u["user_id"] == pseudonym)

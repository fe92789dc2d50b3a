"""User ids are stored as keyed hashes: stable, re-keyed by rotation, never raw."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import select

from flywheel import Project
from flywheel.errors import ConfigError
from flywheel.privacy.keychain import PSEUDONYM, Pseudonymizer, fingerprint, hash_step
from flywheel.privacy.pseudonym import rekey_users
from flywheel.store.schema import Feedback, Prediction, StoreMeta, User
from tests.factories import digit_png


def test_pseudonym_is_stable_keyed_and_never_the_raw_id(project: Project, tmp_path: Path) -> None:
    a = project.pseudonym("alice")
    assert a is not None and PSEUDONYM.match(a)
    assert project.pseudonym("alice") == a != project.pseudonym("bob")
    # Stable across processes: a second opening of the project hashes the same way.
    again = Project.open(project.settings.project_dir)
    assert again.pseudonym("alice") == a
    # Keyed: the same id under another key is another pseudonym.
    other = Pseudonymizer(tmp_path / "k.json", [b"x" * 32])
    assert other("alice") != a
    keys = project.settings.user_keys
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600
    assert project.pseudonym(None) is None and project.pseudonym("") is None


def test_rotation_rekeys_every_table_and_keeps_users_together(project: Project) -> None:
    p = project.predict(digit_png(300), user_id="alice")
    project.record_feedback(p.prediction_id, label="3", user_id="alice")
    before = project.pseudonym("alice")
    detail = project.rotate_user_key()
    after = project.pseudonym("alice")
    assert after != before and after is not None and PSEUDONYM.match(after)
    assert detail["users"] == 1 and detail["keys"] == 2
    with project.db.session() as s:
        assert s.scalars(select(User.id)).all() == [after]
        assert s.get(Prediction, p.prediction_id).user_id == after  # type: ignore[union-attr]
        assert s.scalars(select(Feedback.user_id)).all() == [after]
        meta = s.get(StoreMeta, "user_key_fingerprint")
        assert meta is not None and meta.value == fingerprint(project.services.identity.chain.keys)
    # Another process opening the project afterwards hashes with the new chain.
    assert Project.open(project.settings.project_dir).pseudonym("alice") == after
    # The returning user keeps their rows: a new answer lands on the same user.
    q = project.predict(digit_png(301), user_id="alice")
    with project.db.session() as s:
        assert s.get(Prediction, q.prediction_id).user_id == after  # type: ignore[union-attr]
        assert len(s.scalars(select(User)).all()) == 1


def test_a_foreign_or_missing_key_file_is_refused(project: Project) -> None:
    project.pseudonym("alice")
    keys = project.settings.user_keys
    saved = keys.read_text()
    keys.write_text(json.dumps({"keys": ["00" * 32]}))
    with pytest.raises(ConfigError, match="does not belong to this store"):
        Project.open(project.settings.project_dir).pseudonym("alice")
    keys.unlink()
    with pytest.raises(ConfigError, match="is missing"):
        Project.open(project.settings.project_dir).pseudonym("alice")
    keys.write_text(saved)
    assert Project.open(project.settings.project_dir).pseudonym("alice") == project.pseudonym(
        "alice"
    )


def test_an_interrupted_rotation_is_finished_or_discarded_by_the_next_open(
    project: Project,
) -> None:
    project.predict(digit_png(300), user_id="alice")
    old = project.pseudonym("alice")
    keys = project.settings.user_keys
    nxt = keys.with_name(keys.name + ".next")
    # Crash after writing the next chain, before the database moved: discarded.
    nxt.write_text(json.dumps({"keys": ["11" * 32, "22" * 32]}))
    assert Project.open(project.settings.project_dir).pseudonym("alice") == old
    assert not nxt.exists()
    # Crash after the database committed, before the file was renamed: finished.
    chain = [*project.services.identity.chain.keys, b"\x33" * 32]
    new = Pseudonymizer(keys, chain)
    with project.db.session() as s:
        rekey_users(s, lambda old: hash_step(chain[-1], old))
        meta = s.get(StoreMeta, "user_key_fingerprint")
        assert meta is not None
        meta.value = fingerprint(chain)
    nxt.write_text(json.dumps({"keys": [k.hex() for k in chain]}))
    reopened = Project.open(project.settings.project_dir)
    assert reopened.pseudonym("alice") == new("alice") != old
    assert not nxt.exists()
    with reopened.db.session() as s:  # the rows the database re-keyed are found again
        assert s.scalars(select(User.id)).all() == [new("alice")]


def test_raw_ids_from_before_keyed_hashing_are_hashed_on_first_open(tmp_path: Path) -> None:
    from tests.factories import make_project

    project = make_project(tmp_path / "p", train=False)
    # A store written by an earlier flywheel: raw ids, no key file, no fingerprint.
    with project.db.session() as s:
        s.add(User(id="legacy-user"))
    project.close()
    assert not project.settings.user_keys.exists()
    reopened = Project.open(tmp_path / "p")
    hashed = reopened.pseudonym("legacy-user")
    with reopened.db.session() as s:
        assert s.scalars(select(User.id)).all() == [hashed]


def test_rotation_rekeys_the_summaries_that_name_users(project: Project) -> None:
    from flywheel.store.schema import DatasetVersion

    project.predict(digit_png(300), user_id="alice")
    old = project.pseudonym("alice")
    with project.db.session() as s:
        dv = s.get(DatasetVersion, 1)
        assert dv is not None
        dv.stats = {**dv.stats, "contribution": {"top_user": old, "capped": {old: 3}}}
    project.rotate_user_key()
    new = project.pseudonym("alice")
    with project.db.session() as s:
        dv = s.get(DatasetVersion, 1)
        assert dv is not None
        assert dv.stats["contribution"] == {"top_user": new, "capped": {new: 3}}

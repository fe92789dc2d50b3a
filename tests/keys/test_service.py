"""The keys' service: scoped API keys stored as hashes, that expire and are revoked, and
dashboard sessions that end with their key."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flywheel import Project
from flywheel.errors import AuthError, InputError, NotFoundError
from flywheel.store.schema import ApiKey, utcnow


def test_a_key_holds_its_scopes_and_only_its_hash_is_kept(project: Project) -> None:
    assert project.has_keys() is False
    key, info = project.create_key(["predict"], name="app")
    assert info["scopes"] == ["predict"] and project.has_keys() is True
    project.authenticate(key, "predict")
    project.authenticate(key, None)  # any scope
    with pytest.raises(AuthError) as exc:
        project.authenticate(key, "admin")
    assert exc.value.missing_scope == "admin"
    with pytest.raises(AuthError, match="unknown"):
        project.authenticate(key + "x", None)
    listed = project.list_keys()
    assert [k["name"] for k in listed] == ["app"] and key not in str(listed)
    with pytest.raises(InputError, match="scopes must be among"):
        project.create_key(["root"])


def test_a_dashboard_session_lives_as_long_as_its_key(project: Project) -> None:
    key, info = project.create_key(["admin"], name="ops")
    token, csrf, scopes = project.open_ui_session(key)
    assert scopes == ["admin"]
    assert project.ui_session(token) == {"key": "ops", "scopes": ["admin"], "csrf": csrf}
    project.end_ui_session(token)
    assert project.ui_session(token) is None
    token, _, _ = project.open_ui_session(key)
    with project.db.session() as s:
        row = s.get(ApiKey, info["id"])
        assert row is not None
        row.revoked_at = utcnow()
    assert project.ui_session(token) is None  # revoking the key ends its sessions
    with pytest.raises(AuthError):
        project.open_ui_session(key)


def test_a_key_expires_and_an_expired_key_counts_as_none(project: Project) -> None:
    key, info = project.create_key(["predict"], name="temp", expires_in=timedelta(hours=1))
    assert info["status"] == "live" and info["expires_at"] is not None
    assert project.authenticate(key, "predict") == ("temp", ["predict"])
    token, _, _ = project.open_ui_session(key)
    with project.db.session() as s:  # an hour later
        row = s.get(ApiKey, info["id"])
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
    with pytest.raises(AuthError, match="this API key expired at "):
        project.authenticate(key, "predict")
    assert project.ui_session(token) is None  # its sessions end with it
    with pytest.raises(AuthError, match="expired"):
        project.open_ui_session(key)
    (listed,) = project.list_keys()
    assert listed["status"] == "expired"
    assert project.has_keys() is False  # a server beyond loopback would not start on it
    with pytest.raises(InputError, match="must expire in the future"):
        project.create_key(["predict"], expires_in=timedelta(0))


def test_revoking_a_key_by_id_prefix_or_name(project: Project) -> None:
    key, info = project.create_key(["feedback"], name="labeller")
    token, _, _ = project.open_ui_session(key)
    out = project.revoke_key(info["prefix"])
    assert out["status"] == "revoked" and out["revoked_at"] is not None
    with pytest.raises(AuthError, match="this API key was revoked"):
        project.authenticate(key, None)
    assert project.ui_session(token) is None
    assert project.revoke_key(str(info["id"]))["revoked_at"] == out["revoked_at"]  # idempotent
    with pytest.raises(NotFoundError):
        project.revoke_key("nobody")
    project.create_key(["predict"], name="twin")
    project.create_key(["predict"], name="twin")
    with pytest.raises(InputError, match="'twin' names 2 keys"):
        project.revoke_key("twin")
    assert project.revoke_key("labeller")["id"] == info["id"]

"""The keys' service: scoped API keys stored as hashes, and dashboard sessions that end
with their key."""

from __future__ import annotations

import pytest

from flywheel import Project
from flywheel.errors import AuthError, InputError
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

"""`Idempotency-Key` on POST /v1/feedback: a retried answer is stored once.

The same key with the same body gets the first answer back (201, the same feedback_id,
``Idempotent-Replayed: true``) and adds no row; with another body, 409; a malformed key,
422. Keys are per caller (API key name, or a keyless caller's pseudonym). The group
commit stores one row for a key sent twice in one batch, and one row when another
worker stored the key before the batch's INSERT (the unique index refuses it; the batch
is written again, looking its keys up).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from flywheel import ConflictError, Project
from flywheel.feedback import service as feedback_service
from flywheel.feedback.records import FeedbackIn, FeedbackResult, idempotency_id
from flywheel.serving import create_app
from flywheel.store.schema import Feedback
from tests.factories import digit_png, make_project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    p = make_project(tmp_path_factory.mktemp("idem") / "p")
    yield p
    p.close()


@pytest.fixture(scope="module")
def client(project: Project) -> Iterator[TestClient]:
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        yield c


def bearer(project: Project, name: str) -> dict[str, str]:
    key, _ = project.create_key(["feedback", "predict"], name=name)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def alice(project: Project) -> dict[str, str]:
    return bearer(project, "alice-app")


def predict(client: TestClient, index: int = 0, **headers: str) -> str:
    r = client.post(
        "/v1/predict",
        content=digit_png(index),
        headers={"Content-Type": "image/png", **headers},
    )
    assert r.status_code == 200, r.text
    pid: str = r.json()["prediction_id"]
    return pid


def rows(project: Project, prediction_id: str) -> int:
    with project.db.session() as s:
        q = (
            select(func.count())
            .select_from(Feedback)
            .where(Feedback.prediction_id == prediction_id)
        )
        return int(s.scalar(q) or 0)


def test_without_the_header_every_request_is_stored(
    client: TestClient, project: Project, alice: dict[str, str]
) -> None:
    pid = predict(client)
    for _ in range(2):
        r = client.post("/v1/feedback", json={"prediction_id": pid, "label": "3"}, headers=alice)
        assert r.status_code == 201
        assert "Idempotent-Replayed" not in r.headers
    assert rows(project, pid) == 2


def test_the_same_key_and_body_is_answered_with_the_first_answer_and_stored_once(
    client: TestClient, project: Project, alice: dict[str, str]
) -> None:
    pid = predict(client)
    headers = {**alice, "Idempotency-Key": "k-same-1"}
    first = client.post("/v1/feedback", json={"prediction_id": pid, "label": "3"}, headers=headers)
    # the same body, its fields in another order and spacing: the same request
    again = client.post(
        "/v1/feedback",
        content=f'{{ "label" : "3",  "prediction_id": "{pid}" }}',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert rows(project, pid) == 1
    with project.db.session() as s:
        stored = s.scalars(select(Feedback).where(Feedback.prediction_id == pid)).one()
    assert stored.id == first.json()["feedback_id"]
    assert stored.external_id == idempotency_id("k-same-1", "key:alice-app")
    assert stored.external_id.startswith("idem:")
    assert stored.body_sha256 is not None and len(stored.body_sha256) == 64


def test_a_quoted_key_is_the_same_key(
    client: TestClient, project: Project, alice: dict[str, str]
) -> None:
    """The IETF draft sends the key as a structured-field string: "..." with quotes."""
    pid = predict(client)
    body = {"prediction_id": pid, "correct": True}
    bare = client.post("/v1/feedback", json=body, headers={**alice, "Idempotency-Key": "q-1"})
    quoted = client.post("/v1/feedback", json=body, headers={**alice, "Idempotency-Key": '"q-1"'})
    assert (bare.status_code, quoted.status_code) == (201, 201)
    assert quoted.headers["Idempotent-Replayed"] == "true"
    assert quoted.json() == bare.json()
    assert rows(project, pid) == 1


def test_the_same_key_with_another_body_is_409(
    client: TestClient, project: Project, alice: dict[str, str]
) -> None:
    pid = predict(client)
    headers = {**alice, "Idempotency-Key": "k-conflict"}
    first = client.post("/v1/feedback", json={"prediction_id": pid, "label": "3"}, headers=headers)
    assert first.status_code == 201
    r = client.post("/v1/feedback", json={"prediction_id": pid, "label": "4"}, headers=headers)
    assert r.status_code == 409
    fid = first.json()["feedback_id"]
    assert r.json() == {
        "detail": f"Idempotency-Key 'k-conflict' was used before for another answer (feedback "
        f"{fid}, about prediction {pid}): a retry must send the same body; a new answer "
        "needs a new key"
    }
    # another user (X-User-Id) is another body too
    r = client.post(
        "/v1/feedback",
        json={"prediction_id": pid, "label": "3"},
        headers={**headers, "X-User-Id": "bob"},
    )
    assert r.status_code == 409
    assert rows(project, pid) == 1


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("", "''"),
        ('""', "'\"\"'"),
        ("has space", "'has space'"),
        ("x" * 171, f"'{'x' * 40}... (171 characters)'"),
    ],
)
def test_a_malformed_key_is_422(
    client: TestClient, project: Project, alice: dict[str, str], key: str, shown: str
) -> None:
    pid = predict(client)
    r = client.post(
        "/v1/feedback",
        json={"prediction_id": pid, "label": "3"},
        headers={**alice, "Idempotency-Key": key},
    )
    assert r.status_code == 422
    assert r.json() == {
        "detail": "Idempotency-Key must be 1 to 170 printable ASCII characters without "
        f"spaces (a UUID is usual); got {shown}"
    }
    assert rows(project, pid) == 0


def test_a_non_ascii_key_is_422(
    client: TestClient, project: Project, alice: dict[str, str]
) -> None:
    pid = predict(client)
    r = client.post(
        "/v1/feedback",
        json={"prediction_id": pid, "label": "3"},
        headers=[*alice.items(), ("Idempotency-Key", "clé".encode())],
    )
    assert r.status_code == 422
    assert r.json()["detail"].startswith("Idempotency-Key must be 1 to 170 printable ASCII")
    assert rows(project, pid) == 0


def test_the_longest_key_is_stored(
    client: TestClient, project: Project, alice: dict[str, str]
) -> None:
    pid = predict(client)
    headers = {**alice, "Idempotency-Key": "k" * 170}
    for _ in range(2):
        r = client.post("/v1/feedback", json={"prediction_id": pid, "label": "3"}, headers=headers)
        assert r.status_code == 201
    assert rows(project, pid) == 1


def test_keys_are_per_caller(client: TestClient, project: Project, alice: dict[str, str]) -> None:
    """Two API keys of other names, and two keyless users, each have their own keys: the
    same key from each is a new answer (no 409, nothing told about the other's)."""
    other = bearer(project, "other-app")
    pid = predict(client)
    body = {"prediction_id": pid, "label": "3"}
    a = client.post("/v1/feedback", json=body, headers={**alice, "Idempotency-Key": "shared"})
    b = client.post("/v1/feedback", json=body, headers={**other, "Idempotency-Key": "shared"})
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json() != b.json()
    assert "Idempotent-Replayed" not in b.headers
    assert rows(project, pid) == 2
    # keyless (the loopback server's open door): each user's own predictions and keys
    ids = {}
    for user in ("ann", "ben"):
        own = predict(client, 1, **{"X-User-Id": user})
        r = client.post(
            "/v1/feedback",
            json={"prediction_id": own, "label": "1"},
            headers={"X-User-Id": user, "Idempotency-Key": "shared"},
        )
        assert r.status_code == 201
        assert "Idempotent-Replayed" not in r.headers
        ids[user] = (own, r.json()["feedback_id"])
    assert ids["ann"][1] != ids["ben"][1]
    assert rows(project, ids["ann"][0]) == rows(project, ids["ben"][0]) == 1


def test_a_failed_answer_does_not_take_its_key(
    client: TestClient, project: Project, alice: dict[str, str]
) -> None:
    pid = predict(client)
    headers = {**alice, "Idempotency-Key": "k-after-404"}
    r = client.post("/v1/feedback", json={"prediction_id": "nope", "label": "3"}, headers=headers)
    assert r.status_code == 404
    r = client.post("/v1/feedback", json={"prediction_id": pid, "label": "3"}, headers=headers)
    assert r.status_code == 201
    assert "Idempotent-Replayed" not in r.headers
    assert rows(project, pid) == 1


def test_concurrent_requests_with_one_key_store_one_row(
    client: TestClient, project: Project, alice: dict[str, str]
) -> None:
    """Eight identical requests at once: however the group commit batches them (one batch,
    or several), one row, one feedback_id, and every request a 201."""
    pid = predict(client)
    headers = {**alice, "Idempotency-Key": "k-race"}
    start = threading.Barrier(8)
    answers: list[tuple[int, str, str | None]] = []
    lock = threading.Lock()

    def send() -> None:
        start.wait()
        r = client.post("/v1/feedback", json={"prediction_id": pid, "label": "5"}, headers=headers)
        with lock:
            answers.append(
                (r.status_code, r.json()["feedback_id"], r.headers.get("Idempotent-Replayed"))
            )

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {status for status, _, _ in answers} == {201}
    assert len({fid for _, fid, _ in answers}) == 1
    assert sorted(replayed or "" for *_, replayed in answers) == [""] + ["true"] * 7
    assert rows(project, pid) == 1


# -- the group commit (FeedbackService.record_many) -------------------------------------


def keyed(pid: str, key: str, label: str = "3") -> FeedbackIn:
    return FeedbackIn(pid, label, external_id=idempotency_id(key, "key:batch"))


def test_one_key_twice_in_one_batch_is_one_row(client: TestClient, project: Project) -> None:
    pid, other = predict(client), predict(client, 2)
    out = project.record_feedback_many(
        [
            keyed(pid, "b-1"),
            FeedbackIn(other, "2"),
            keyed(pid, "b-1"),  # a retry that caught up with its first try
            keyed(pid, "b-1", label="4"),  # the key, another body
        ]
    )
    first, plain, again, conflict = out
    assert isinstance(first, FeedbackResult) and not first.replayed
    assert isinstance(plain, FeedbackResult)
    assert isinstance(again, FeedbackResult) and again.replayed
    assert again.feedback_id == first.feedback_id
    assert isinstance(conflict, ConflictError)
    assert "'b-1' was used before for another answer" in str(conflict)
    assert rows(project, pid) == 1
    assert rows(project, other) == 1


def test_a_key_stored_by_another_worker_meanwhile_is_replayed(
    client: TestClient, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first try of a batch does not look its keys up: the unique index refuses a key
    stored before. The second looks, but (as if another worker committed the key just
    after) finds nothing: refused again. The third finds it and replays it."""
    pid, other = predict(client), predict(client, 2)
    stored_elsewhere = project.record_feedback_many([keyed(pid, "race-1")])[0]
    assert isinstance(stored_elsewhere, FeedbackResult)
    real = feedback_service.repo.feedback_by_external_id
    looks: list[int] = []

    def stale_first_look(s: object, ids: set[str]) -> list[object]:
        looks.append(len(ids))
        return [] if len(looks) == 1 else real(s, ids)  # type: ignore[arg-type]

    monkeypatch.setattr(feedback_service.repo, "feedback_by_external_id", stale_first_look)
    out = project.record_feedback_many([FeedbackIn(other, "2"), keyed(pid, "race-1")])
    assert looks == [1, 1]
    plain, replayed = out
    assert isinstance(plain, FeedbackResult) and not plain.replayed
    assert isinstance(replayed, FeedbackResult) and replayed.replayed
    assert replayed.feedback_id == stored_elsewhere.feedback_id
    assert rows(project, pid) == 1
    assert rows(project, other) == 1  # the batch's other answer, stored by the last try


def test_new_keys_cost_no_look_up(
    client: TestClient, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = predict(client)
    looks: list[int] = []
    real = feedback_service.repo.feedback_by_external_id
    monkeypatch.setattr(
        feedback_service.repo,
        "feedback_by_external_id",
        lambda s, ids: looks.append(len(ids)) or real(s, ids),
    )
    out = project.record_feedback_many([keyed(pid, "new-1"), keyed(pid, "new-2")])
    assert all(isinstance(r, FeedbackResult) and not r.replayed for r in out)
    assert looks == []
    assert rows(project, pid) == 2


def test_an_integrity_error_without_keys_is_not_retried(
    client: TestClient, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a batch with keys can have met another worker's key: any other integrity
    error is a bug, raised at once (to every answer of the batch)."""
    pid = predict(client)
    calls: list[int] = []

    def refuse(s: object, rows: object) -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("boom"))

    monkeypatch.setattr(feedback_service.repo, "insert_feedback", refuse)
    with pytest.raises(IntegrityError):
        project.record_feedback_many([FeedbackIn(pid, "3")])
    assert calls == [1]


def test_the_header_is_documented_in_openapi(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/feedback"]["post"]
    (param,) = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
    assert param["in"] == "header" and not param.get("required", False)
    assert "the same key with the same body" in param["description"]
    assert set(operation["responses"]) >= {"201", "409", "422"}
    assert "Idempotent-Replayed" in operation["responses"]["201"]["headers"]


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_two_workers_racing_one_key_store_one_row(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    """Two workers (two Projects, two engines: two server processes' worth) on one store
    send the same keyed answer at the same moment, 20 times: each time one row, both
    told its feedback_id, exactly one of them as the one that stored it."""
    settings = {}
    if store == "postgresql":
        settings["database_url"] = request.getfixturevalue("postgres_url")
    first = make_project(tmp_path / "p", settings=settings)
    second = Project.open(tmp_path / "p")
    try:
        pids = [first.predict(digit_png(300 + i)).prediction_id for i in range(20)]
        start = threading.Barrier(2)
        results: dict[int, list[FeedbackResult]] = {0: [], 1: []}

        def worker(n: int, project: Project) -> None:
            for i, pid in enumerate(pids):
                start.wait()
                (out,) = project.record_feedback_many([keyed(pid, f"two-workers-{i}")])
                assert isinstance(out, FeedbackResult), out
                results[n].append(out)

        threads = [
            threading.Thread(target=worker, args=(n, p)) for n, p in enumerate((first, second))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, pid in enumerate(pids):
            a, b = results[0][i], results[1][i]
            assert a.feedback_id == b.feedback_id
            assert sorted((a.replayed, b.replayed)) == [False, True]
            assert rows(first, pid) == 1
    finally:
        second.close()
        first.close()

"""PII scrubbing: recall on a generated corpus, and what is left alone."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytest.importorskip(
    "presidio_analyzer", reason="Presidio is not installed: pip install 'flywheel-ml[privacy]'"
)

from flywheel.errors import ConfigError, InputError
from flywheel.privacy import ENTITIES, PiiScrubber
from flywheel.privacy.corpus import corpus

#: the floor each kind's recall must reach (share of planted values gone from the text);
#: phones lower: the generator draws some US area codes that do not exist, which
#: phonenumbers rightly does not take for numbers
FLOOR = {"PHONE_NUMBER": 0.8}


@pytest.fixture(scope="module")
def scrubber() -> PiiScrubber:
    return PiiScrubber()


def test_recall_on_a_generated_corpus_is_above_the_floor(scrubber: PiiScrubber) -> None:
    rows = corpus(ENTITIES, per_kind=40, seed=1)
    gone = {k: 0 for k in ENTITIES}
    for text, kind, value in rows:
        out = scrubber.scrub(text)
        if value not in out.text:
            gone[kind] += 1
            assert f"<{kind}>" in out.text or out.found  # replaced by a named marker
    recall = {k: gone[k] / 40 for k in ENTITIES}
    for kind, r in recall.items():
        assert r >= FLOOR.get(kind, 0.95), f"{kind} recall {r:.2f} (all: {recall})"


def test_the_scrubbed_text_keeps_everything_else(scrubber: PiiScrubber) -> None:
    text = "Mail jane.doe@example.com, card 4111 1111 1111 1111 — the app crashed twice."
    out = scrubber.scrub(text)
    assert out.text == "Mail <EMAIL_ADDRESS>, card <CREDIT_CARD> — the app crashed twice."
    assert out.counts == {"EMAIL_ADDRESS": 1, "CREDIT_CARD": 1}
    assert [text[a:b] for _, a, b in out.found] == ["jane.doe@example.com", "4111 1111 1111 1111"]
    plain = "I bought 3 items for 12 euros on Monday and the app crashed twice."
    assert scrubber.scrub(plain).text == plain
    assert scrubber.scrub("").text == ""


def test_an_unknown_entity_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown PII entities \['PERSON'\]"):
        PiiScrubber(entities=("EMAIL_ADDRESS", "PERSON"))


def test_a_text_project_keeps_no_personal_data(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from flywheel import Project
    from flywheel.data import SourceOptions, resolve_source
    from flywheel.serving import create_app
    from flywheel.store.schema import Example, Prediction

    path = tmp_path / "texts.csv"
    rows = [("write to ops@example.com about the outage", "ops")] * 3
    rows += [("the match ended two to one", "sport"), ("a late goal won it", "sport")] * 2
    rows += [("server down, call +1 415-555-0132", "ops"), ("disk full again", "ops")]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    source, task = resolve_source(str(path), SourceOptions(task="text-classification"))
    project = Project.init(tmp_path / "p", source, task=task, settings={"epochs": 2})
    info = project.dataset()
    assert info.cleaning["pii_scrubbed"] == {"EMAIL_ADDRESS": 3, "PHONE_NUMBER": 1}
    project.train()
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        r = c.post("/v1/predict", json={"text": "mail me at jane@corp.io, card 4111111111111111"})
        assert r.status_code == 200
        pid = r.json()["prediction_id"]
        assert project.prediction_log is not None and project.prediction_log.wait_written(pid)
    direct = project.predict(b"ring 020 7946 0958 or visit https://corp.io/help")
    with project.db.session() as s:
        stored = [project.blobs.get(h).decode() for h in s.scalars(select(Example.input_hash))]
        stored += [project.blobs.get(h).decode() for h in s.scalars(select(Prediction.input_hash))]
    text = "\n".join(stored)
    for secret in ("ops@example.com", "415-555-0132", "jane@corp.io", "4111111111111111"):
        assert secret not in text
    assert "<EMAIL_ADDRESS>" in text and "<CREDIT_CARD>" in text
    assert direct.prediction_id
    # Turned off, the text is kept as sent.
    plain = Project.open(tmp_path / "p", scrub_pii=False)
    assert plain.at_the_door(b"jane@corp.io") == b"jane@corp.io"
    assert (
        project.at_the_door("caf\u00e9 jane@corp.io".encode())
        == "caf\u00e9 <EMAIL_ADDRESS>".encode()
    )
    with pytest.raises(InputError, match="not UTF-8"):
        project.at_the_door(b"\xff\xfe")
    plain.close()
    project.close()

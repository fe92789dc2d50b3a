"""PII scrubbing: recall on a generated corpus, and what is left alone."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "presidio_analyzer", reason="Presidio is not installed: pip install 'flywheel-ml[privacy]'"
)

from flywheel.errors import ConfigError
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

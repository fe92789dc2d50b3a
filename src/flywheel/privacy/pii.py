"""Scrubbing personal data out of free text with Presidio's pattern recognizers, offline.

    from flywheel.privacy import PiiScrubber
    PiiScrubber().scrub("mail jane@example.com").text   # 'mail <EMAIL_ADDRESS>'

Presidio's `AnalyzerEngine` as shipped loads a spaCy language model (which cannot be
fetched here, and third-party re-uploads of it are not to be trusted); the pattern
recognizers used here need none, so the engine gets a blank English pipeline (a
tokenizer). Names need a real NER model and are out of scope. The e-mail recognizer
checks domains with `tldextract`, which would fetch the public-suffix list at first use:
it is pointed at the snapshot bundled with the package instead (no network).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from flywheel.errors import ConfigError

__all__ = ["ENTITIES", "PiiScrubber", "Scrubbed"]

#: what is scrubbed: Presidio's entity names
ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "URL")


@dataclass(frozen=True)
class Scrubbed:
    """The text with each finding replaced by ``<ENTITY>``, and what was found where."""

    text: str
    found: list[tuple[str, int, int]] = field(default_factory=list)  # (entity, start, end)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for entity, _, _ in self.found:
            out[entity] = out.get(entity, 0) + 1
        return out


def _offline_engine(min_score: float) -> Any:
    try:
        import spacy
        import tldextract.tldextract as tld
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
    except ImportError as exc:
        raise ConfigError(
            "PII scrubbing needs Presidio: pip install 'flywheel-ml[privacy]'"
        ) from exc

    # The bundled public-suffix snapshot, never a download.
    tld.TLD_EXTRACTOR = tld.TLDExtract(
        suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True
    )

    class BlankEnglish(SpacyNlpEngine):
        """A tokenizer only: what the pattern recognizers need."""

        def load(self) -> None:
            # Presidio declares `nlp` as None until load() fills it.
            self.nlp = {"en": spacy.blank("en")}  # type: ignore[assignment]

    nlp = BlankEnglish(models=[{"lang_code": "en", "model_name": "blank"}])
    nlp.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    # Presidio warns once for each recognizer of another language that it leaves out.
    presidio_log = logging.getLogger("presidio-analyzer")
    level = presidio_log.level
    presidio_log.setLevel(logging.ERROR)
    try:
        registry.load_predefined_recognizers(nlp_engine=nlp, languages=["en"])
    finally:
        presidio_log.setLevel(level)
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp,
        supported_languages=["en"],
        default_score_threshold=min_score,
    )


class PiiScrubber:
    """Thread-safe; the engine is built on first use (about a second)."""

    def __init__(self, entities: tuple[str, ...] = ENTITIES, min_score: float = 0.3) -> None:
        unknown = sorted(set(entities) - set(ENTITIES))
        if unknown:
            raise ConfigError(f"unknown PII entities {unknown}; known: {', '.join(ENTITIES)}")
        self.entities = entities
        self.min_score = min_score
        self._engine: Any = None
        self._lock = threading.Lock()

    def _analyzer(self) -> Any:
        with self._lock:
            if self._engine is None:
                self._engine = _offline_engine(self.min_score)
            return self._engine

    def scrub(self, text: str) -> Scrubbed:
        results = self._analyzer().analyze(text=text, language="en", entities=list(self.entities))
        # Overlapping findings (a URL inside an e-mail address) become one span, named
        # after the finding that scored highest (then the longest).
        spans = sorted(
            ((r.start, r.end, r.entity_type, r.score) for r in results),
            key=lambda s: (s[0], -s[1]),
        )
        merged: list[list[Any]] = []
        for start, end, entity, score in spans:
            if merged and start < merged[-1][1]:
                last = merged[-1]
                if (score, end - start) > (last[3], last[1] - last[0]):
                    last[2], last[3] = entity, score
                last[1] = max(last[1], end)
            else:
                merged.append([start, end, entity, score])
        out, at = [], 0
        found: list[tuple[str, int, int]] = []
        for start, end, entity, _ in merged:
            out += [text[at:start], f"<{entity}>"]
            found.append((entity, start, end))
            at = end
        out.append(text[at:])
        return Scrubbed("".join(out), found)

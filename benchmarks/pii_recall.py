"""PII scrubbing recall on a generated corpus (Presidio's pattern recognizers, offline).

    .venv/bin/python benchmarks/pii_recall.py [--per-kind 500] [--seed 0]

Sentences from `flywheel.privacy.corpus` each carry one planted value (e-mail, phone
number, card number, IBAN, IP address, URL). Per kind: recall = share of planted values
no longer in the scrubbed text; typed = share found under the right entity name; and
the same-run baseline, a plain regular-expression scrubber of the kind a team writes in
an afternoon (e-mail, digits runs, dotted quads, http URLs), on the same sentences.
Also the false positives on sentences with no personal data, and the time per sentence.
"""

from __future__ import annotations

import argparse
import json
import re
import time

from flywheel.privacy import ENTITIES, PiiScrubber
from flywheel.privacy.corpus import TEMPLATES, corpus

BASELINE = [
    re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),
    re.compile(r"https?://\S+"),
    re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"),
    re.compile(r"\+?\d[\d\s().-]{7,}\d"),
]
CLEAN = [
    "I bought 3 items for 12 euros on Monday and the app crashed twice.",
    "Version 2.4 fixed it, thanks to the team!",
    "Order 1234 arrived on 2024-05-01 in good shape.",
    "The cat photo was labelled dog, please check.",
]


def baseline(text: str) -> str:
    for pattern in BASELINE:
        text = pattern.sub("<PII>", text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-kind", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    scrubber = PiiScrubber()
    scrubber.scrub("warm up")
    rows = corpus(ENTITIES, args.per_kind, seed=args.seed)
    gone = dict.fromkeys(ENTITIES, 0)
    typed = dict.fromkeys(ENTITIES, 0)
    base = dict.fromkeys(ENTITIES, 0)
    started = time.perf_counter()
    for text, kind, value in rows:
        out = scrubber.scrub(text)
        gone[kind] += value not in out.text
        at = text.index(value)
        typed[kind] += any(e == kind and a <= at and b >= at + len(value) for e, a, b in out.found)
        base[kind] += value not in baseline(text)
    ms = (time.perf_counter() - started) / len(rows) * 1000
    clean = [t.format("our support page") for t in TEMPLATES] + CLEAN
    false_pos = sum(scrubber.scrub(t).text != t for t in clean)
    base_false = sum(baseline(t) != t for t in clean)
    n = args.per_kind
    print(f"{len(rows)} sentences ({n} per kind), seed {args.seed}; {ms:.2f} ms a sentence")
    print(f"{'kind':<15}{'recall':>8}{'typed':>8}{'regex baseline':>16}")
    for kind in ENTITIES:
        print(f"{kind:<15}{gone[kind] / n:>8.3f}{typed[kind] / n:>8.3f}{base[kind] / n:>16.3f}")
    total, total_base = sum(gone.values()) / len(rows), sum(base.values()) / len(rows)
    print(f"{'all':<15}{total:>8.3f}{'':>8}{total_base:>16.3f}")
    print(
        f"sentences without personal data changed: {false_pos}/{len(clean)} "
        f"(regex baseline {base_false}/{len(clean)})"
    )
    print(
        json.dumps(
            {
                "benchmark": "pii_recall",
                "per_kind": n,
                "seed": args.seed,
                "recall": {k: gone[k] / n for k in ENTITIES},
                "typed": {k: typed[k] / n for k in ENTITIES},
                "baseline_recall": {k: base[k] / n for k in ENTITIES},
                "false_positives": [false_pos, len(clean)],
                "baseline_false_positives": [base_false, len(clean)],
                "ms_per_sentence": ms,
            }
        )
    )


if __name__ == "__main__":
    main()

"""The cleaning report of an import: unreadable inputs, duplicates, conflicts, outliers.

What it drops: unreadable inputs, exact duplicates (kept once), and every copy of an
input that came with conflicting labels. What it only reports: near-duplicates (kept,
but always on the same side of the held-out split) and outliers.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flywheel.data.codecs import Codec
from flywheel.data.sources import RawExample
from flywheel.errors import InputError

__all__ = ["Cleaned", "clean"]

#: how many entries of each list the report keeps (the counts are always whole)
LIMIT = 200
#: robust z-score (median / MAD) above which an input is reported as an outlier
OUTLIER_Z = 5.0


@dataclass
class Cleaned:
    """The kept examples (with their digest and probe) and the report."""

    kept: list[tuple[RawExample, str, dict[str, Any]]] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)  # near-duplicate group per kept example
    report: dict[str, Any] = field(default_factory=dict)


def _name(ex: RawExample, i: int) -> str:
    return ex.source_path or f"#{i}"


def _target(ex: RawExample) -> str:
    return ex.label if ex.label is not None else repr(ex.value)


def clean(examples: Sequence[RawExample], codec: Codec) -> Cleaned:
    unreadable: list[dict[str, str]] = []
    probed: list[tuple[int, RawExample, str, dict[str, Any]]] = []
    for i, ex in enumerate(examples):
        try:
            probe = codec.probe(ex.content)
        except InputError as exc:
            unreadable.append({"path": _name(ex, i), "reason": str(exc)})
            continue
        probed.append((i, ex, hashlib.sha256(ex.content).hexdigest(), probe))

    by_digest: dict[str, list[tuple[int, RawExample, str, dict[str, Any]]]] = defaultdict(list)
    for item in probed:
        by_digest[item[2]].append(item)
    duplicates: list[dict[str, str]] = []
    conflicts: list[dict[str, Any]] = []
    out = Cleaned()
    for items in by_digest.values():
        targets = {_target(ex) for _, ex, _, _ in items}
        if len(targets) > 1:
            conflicts.append(
                {"paths": [_name(ex, i) for i, ex, _, _ in items], "labels": sorted(targets)}
            )
            continue
        first = items[0]
        duplicates += [
            {"path": _name(ex, i), "duplicate_of": _name(first[1], first[0])}
            for i, ex, _, _ in items[1:]
        ]
    conflicted = {p for c in conflicts for p in c["paths"]}
    seen: set[str] = set()
    kept_index: list[int] = []
    for i, ex, digest, probe in probed:
        if digest in seen or _name(ex, i) in conflicted:
            continue
        seen.add(digest)
        out.kept.append((ex, digest, probe))
        kept_index.append(i)

    # Near-duplicates: the same fingerprint (e.g. a perceptual hash) for different bytes.
    group_of: dict[str, int] = {}
    near: dict[int, list[str]] = defaultdict(list)
    for n, (ex, _digest, probe) in enumerate(out.kept):
        fp = codec.fingerprint(ex.content, probe)
        key = fp if fp is not None else f"unique:{n}"
        g = group_of.setdefault(key, len(group_of))
        out.groups.append(g)
        near[g].append(_name(ex, kept_index[n]))
    near_groups = [paths for paths in near.values() if len(paths) > 1]

    scores = [codec.outlier_score(p) for _, _, p in out.kept]
    outliers: list[dict[str, Any]] = []
    if scores and all(s is not None for s in scores):
        arr = np.array(scores, dtype=np.float64)
        med = float(np.median(arr))
        mad = float(np.median(np.abs(arr - med))) * 1.4826
        if mad > 0:
            z = (arr - med) / mad
            for k in np.flatnonzero(np.abs(z) > OUTLIER_Z).tolist():
                outliers.append(
                    {
                        "path": _name(out.kept[k][0], kept_index[k]),
                        "score": round(float(arr[k]), 6),
                        "z": round(float(z[k]), 2),
                    }
                )
    sizes = [(p.get("height"), p.get("width")) for _, _, p in out.kept if "height" in p]
    if sizes:
        common = max(set(sizes), key=sizes.count)
        for n, (_ex, _d, p) in enumerate(out.kept):
            if "height" in p and (p["height"], p["width"]) != common:
                outliers.append(
                    {
                        "path": _name(out.kept[n][0], kept_index[n]),
                        "reason": f"size {p['height']}x{p['width']}, "
                        f"most are {common[0]}x{common[1]}",
                    }
                )

    def capped(items: list[Any]) -> dict[str, Any]:
        return {"count": len(items), "items": items[:LIMIT]}

    out.report = {
        "total": len(examples),
        "kept": len(out.kept),
        "unreadable": capped(unreadable),
        "exact_duplicates": capped(duplicates),
        "conflicting_labels": capped(conflicts),
        "near_duplicates": capped(near_groups),
        "outliers": capped(outliers),
    }
    return out

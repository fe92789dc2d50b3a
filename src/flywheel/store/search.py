"""Every cell of every table searched for some strings: the brute-force proof that a
forget left nothing of a user (``flywheel.loop.forget``'s tests and benchmark)."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.engine import Engine

__all__ = ["search_store"]


def search_store(engine: Engine, needles: set[str]) -> list[tuple[str, str, int]]:
    """(table, column, cells) wherever any cell of any table holds one of ``needles`` as
    text — the brute-force proof that a forget left nothing (reads every row)."""
    if not needles:
        return []
    meta = MetaData()
    meta.reflect(engine)
    hits: dict[tuple[str, str], int] = {}
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(table.select()):
                for col, value in row._mapping.items():
                    if value is not None and any(n in str(value) for n in needles):
                        key = (table.name, str(col))
                        hits[key] = hits.get(key, 0) + 1
    return [(t, c, n) for (t, c), n in sorted(hits.items())]

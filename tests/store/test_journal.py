"""The prediction log's journal: records read back exactly, torn ones dropped, segments
gone once committed, a dead process's left for the replay, a live one's left alone."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel.store.journal import Journal, decode, encode, read_segment, replay, scrub

ROOT = Path(__file__).resolve().parents[2]


def row(i: int, user: str | None = "u1") -> dict[str, Any]:
    return {
        "id": f"p{i}",
        "model_version": 1,
        "user_id": user,
        "content": bytes([i % 256]) * 5 + b"\x00\xff",
        "label": "7",
        "value": None,
        "probabilities": {"7": 0.9, "1": 0.1},
        "latency_ms": 1.5,
        "created_at": datetime(2026, 12, 2, 3, 4, 5, 678901, tzinfo=UTC),
    }


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.journal"))


def test_a_record_reads_back_exactly_and_damage_is_detected() -> None:
    record = encode(row(3))
    assert decode(record) == row(3)
    assert decode(record[:-1]) is None  # torn: no end of line
    assert decode(record[: len(record) // 2] + b"\n") is None
    flipped = bytearray(record)
    flipped[20] ^= 0x01
    assert decode(bytes(flipped)) is None  # the checksum no longer matches
    assert decode(b"00000000 {}\n") is None


def test_segments_go_once_every_row_in_them_is_committed(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_s=3600)
    for i in range(3):
        j.append(row(i))
    j.sync()
    [seg] = segments(tmp_path)
    assert [r["id"] for r in read_segment(seg)[0]] == ["p0", "p1", "p2"]
    j.committed(["p0", "p2"])
    assert segments(tmp_path) == [seg]  # p1 is not in the database yet
    j.committed(["p1"])
    assert segments(tmp_path) == []
    j.append(row(9))  # a new segment for the next rows
    assert len(segments(tmp_path)) == 1
    j.committed(["p9"])
    j.close()
    assert segments(tmp_path) == []


def test_a_full_or_old_segment_is_sealed_and_a_new_one_begun(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_s=3600, segment_bytes=1)
    for i in range(3):
        j.append(row(i))
    j.sync()
    assert len(segments(tmp_path)) == 3
    j.committed(["p1"])
    assert len(segments(tmp_path)) == 2
    j.close()  # p0 and p2 were never committed: their segments stay for the replay
    assert len(segments(tmp_path)) == 2


def test_rows_refused_at_shutdown_are_kept_for_replay(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    kept = j.keep([row(1), row(2)])  # the fast mode: not in the journal before
    assert kept is not None and [r["id"] for r in read_segment(kept)[0]] == ["p1", "p2"]
    j.close()
    assert segments(tmp_path) == [kept]


def _replay(directory: Path, held: set[str], forgotten: frozenset[str] = frozenset()) -> Any:
    written: list[str] = []

    def commit(rows: list[dict[str, Any]]) -> int:
        new = [r["id"] for r in rows if r["id"] not in held]
        written.extend(new)
        return len(new)

    report = replay(directory, commit, lambda rows: {r["id"] for r in rows} & forgotten)
    return report, written


def test_replay_commits_what_the_database_lacks_and_drops_a_torn_tail(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_s=3600)
    for i in range(4):
        j.append(row(i))
    j.sync()
    [seg] = segments(tmp_path)
    j.close()
    with seg.open("ab") as f:  # a record cut short by the kill: never acknowledged
        f.write(encode(row(4))[:30])
    report, written = _replay(tmp_path, held={"p0", "p1"}, forgotten={"p3"})
    assert written == ["p2"]  # p0, p1 were committed already: no duplicates
    assert (report.rows, report.committed, report.torn, report.forgotten) == (4, 1, 1, 1)
    assert segments(tmp_path) == []


def test_a_live_segment_is_neither_replayed_nor_scrubbed_by_another_process(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path, segment_s=3600)
    j.append(row(1))
    j.sync()
    [seg] = segments(tmp_path)
    code = (
        "import sys; from pathlib import Path; from flywheel.store.journal import replay, scrub;"
        "d = Path(sys.argv[1]);"
        "r = replay(d, lambda rows: len(rows), lambda rows: set());"
        "print(r.segments, scrub(d, 'u1'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["0", "0"]  # held by this process: left alone
    assert segments(tmp_path) == [seg] and len(read_segment(seg)[0]) == 1
    j.close()  # released (p1 outstanding): now it is an orphan
    assert scrub(tmp_path, "u1") == 1
    assert read_segment(seg) == ([], 0)


def test_scrub_keeps_other_users_rows(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_s=3600)
    for i, user in enumerate(["u1", "u2", None, "u1"]):
        j.append(row(i, user))
    j.sync()
    j.close()
    assert scrub(tmp_path, "u1") == 2
    [seg] = segments(tmp_path)
    assert [r["id"] for r in read_segment(seg)[0]] == ["p1", "p2"]


def test_a_killed_writer_leaves_every_synced_row(tmp_path: Path) -> None:
    """A child appends and syncs, then dies without closing anything."""
    code = (
        "import os, sys; from pathlib import Path; from flywheel.store.journal import Journal;"
        "from tests.store.test_journal import row;"
        "j = Journal(Path(sys.argv[1]), segment_s=3600);"
        "[(j.append(row(i)), j.sync() if i % 10 == 9 else None) for i in range(100)];"
        "j.committed([f'p{i}' for i in range(50)]);"
        "os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=ROOT)
    report, written = _replay(tmp_path, held={f"p{i}" for i in range(50)})
    assert written == [f"p{i}" for i in range(50, 100)]
    assert report.torn == 0

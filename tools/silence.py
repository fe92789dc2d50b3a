"""How long a newcomer's commands stay silent: each command of the README's quick start
runs in a pseudo-terminal (so rich draws its bars as for a person), and every chunk it
writes is timed; the longest gap between two writes (from the start to the first one
counts too) is the longest silence.

    .venv/bin/python tools/silence.py [--dir /tmp/fw-walk] [--json out.json]

Target (issue 15): no step silent for more than 2 s on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import shutil
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
ANSWERS = """
import sys
import numpy as np
from flywheel import Project
from flywheel.data import digits_arrays, encode_png
p = Project.open(sys.argv[1])
images, labels = digits_arrays()
rng = np.random.default_rng(0)
for i in range(1600, 1700):  # photos of the same digits, shifted a pixel and noisier
    img = np.clip(np.roll(images[i], 1, axis=1) + rng.integers(0, 4, images[i].shape), 0, 16)
    r = p.predict(encode_png(img.astype(images.dtype)), user_id=f"u{i % 6}")
    p.record_feedback(r.prediction_id, label=str(labels[i]), user_id=f"u{i % 6}")
print("100 answers")
"""


def timed(argv: list[str], cwd: Path, stop_on: bytes | None = None) -> dict[str, Any]:
    """Run ``argv`` in a pty; its exit code, wall time, longest silence and output
    (``stop_on``: SIGINT once that appears, for a server)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.chdir(cwd)
        os.environ["COLUMNS"] = "100"
        os.execv(argv[0], argv)
    started = last = time.monotonic()
    gaps: list[float] = []
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            out += chunk
            if stop_on is not None and stop_on in out:
                os.kill(pid, 2)
                stop_on = None
    _, status = os.waitpid(pid, 0)
    return {
        "command": " ".join([Path(argv[0]).name, *argv[1:]]),
        "exit": os.waitstatus_to_exitcode(status),
        "seconds": round(time.monotonic() - started, 1),
        "longest_silence_s": round(max(gaps, default=time.monotonic() - started), 1),
        "tail": out.decode(errors="replace").strip().splitlines()[-1:] if out else [],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/fw-walk"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    fw = str(BIN / "flywheel")
    shop = args.dir / "shop"
    steps = [
        ([fw, "--help"], args.dir, None),
        ([fw, "init", str(shop), "--data", "digits"], args.dir, None),
        ([fw, "data", "report"], shop, None),
        ([fw, "train", "--epochs", "5"], shop, None),
        ([fw, "evaluate"], shop, None),
        ([fw, "models"], shop, None),
        # 100 answers through the API's Python twin (not timed: no user types it), then
        # a turn of the loop
        ([sys.executable, "-c", ANSWERS, str(shop)], shop, None),
        ([fw, "retrain", "--epochs", "5"], shop, None),
        ([fw, "jobs"], shop, None),
        ([fw, "serve", "--port", "8791"], shop, b"ready on"),
    ]
    rows = [timed(argv, cwd, stop) for argv, cwd, stop in steps]
    rows = [r for r in rows if not r["command"].startswith(Path(sys.executable).name)]
    for r in rows:
        print(
            f"{r['command']:<44} exit {r['exit']:>4}  {r['seconds']:>6.1f} s  "
            f"longest silence {r['longest_silence_s']:>5.1f} s"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""How long a model version takes to load (files read, verified by SHA-256, model built):
from the project folder, and from an S3-compatible server (moto's, on 127.0.0.1) with
this machine's cache cold (the weights downloaded) and warm (read from the cache, no
request made).

    .venv/bin/python benchmarks/storage_load.py [--repeats 20] [--image-size 64]

One ``seed_cnn`` trained for an epoch on 120 digits; the figure is the median of
``--repeats`` loads (``ModelCache.load``) in milliseconds, with the weights' size.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()

    import torch
    from moto.server import ThreadedMotoServer
    from tests.factories import digits_subset

    from flywheel import Project
    from flywheel.context import CACHE
    from flywheel.data import ListSource
    from flywheel.store import open_storage

    torch.set_num_threads(1)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}", "key": "bench", "secret": "bench"}
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    open_storage(f"s3://{bucket}", options).fs.mkdir(bucket)  # type: ignore[attr-defined]
    config = {"epochs": 1, "patience": 1, "image_size": args.image_size, "onnx_check": False}
    s3 = {"storage_url": f"s3://{bucket}/p", "storage_options": options}
    with tempfile.TemporaryDirectory() as tmp:
        projects = {}
        for name, extra in (("local", {}), ("s3", s3)):
            source = ListSource("digits", digits_subset(120, 40))
            project = Project.init(Path(tmp) / name, source, settings={**config, **extra})
            project.train()
            projects[name] = project
        local, remote = projects["local"], projects["s3"]
        weights = local.settings.project_dir / "models" / "v1" / "model.safetensors"
        cache = remote.settings.project_dir / CACHE

        def cold() -> None:
            shutil.rmtree(cache, ignore_errors=True)
            remote.cache.load(1)

        result = {
            "weights_mb": round(weights.stat().st_size / 1e6, 2),
            "local_ms": _median_ms(lambda: local.cache.load(1), args.repeats),
            "s3_cold_cache_ms": _median_ms(cold, args.repeats),
            "s3_warm_cache_ms": _median_ms(lambda: remote.cache.load(1), args.repeats),
        }
        for project in projects.values():
            project.close()
    server.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()

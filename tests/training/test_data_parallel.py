"""The fit loop as one process of a data-parallel run (``fit(parallel=...)``, what each
Ray Train worker runs), here over plain torch.distributed: two processes, each with its
stride of every batch and DDP averaging the gradients, take the steps one process takes
on the whole batch, weights and a ragged last batch included."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from flywheel.data import Arrays
from flywheel.training import FitResult, TrainConfig, fit

#: 61 rows: 9 for validation, 52 to train on in batches of 17, the last of one row (so
#: one process steps on a row that counts for nothing); dropout off, so that both runs
#: draw nothing that depends on the process
CONFIG = TrainConfig(epochs=4, patience=4, batch_size=17, dropout=0.0, refit=True)


def _problem() -> tuple[nn.Module, Arrays]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(61, 1, 4, 4)).astype(np.float32)
    y = (x.reshape(61, -1).sum(1) > 0).astype(np.int64) + (x[:, 0, 0, 0] > 1).astype(np.int64)
    w = rng.uniform(0.2, 1.0, 61).astype(np.float32)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, Arrays(x=x, y=y, labels=["a", "b", "c"], weights=w)


class _Gloo:
    """``DataParallel`` over torch.distributed, without Ray."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size, self.device = rank, size, None

    def wrap(self, module: nn.Module) -> nn.Module:
        return nn.parallel.DistributedDataParallel(module)

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def sync(self, module: nn.Module) -> None:
        for b in module.buffers():
            dist.broadcast(b, 0)


def _history(result: FitResult) -> list[dict[str, float]]:
    return [asdict(h) for h in result.history]


def _rank(rank: int, size: int, folder: str) -> None:
    """One process of the run (``torch.multiprocessing.spawn``'s target)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=size
    )
    try:
        model, rows = _problem()
        result = fit(model, rows, CONFIG, parallel=_Gloo(rank, size))
        out = Path(folder) / f"rank{rank}"
        save_file(model.state_dict(), f"{out}.safetensors")
        Path(f"{out}.json").write_text(json.dumps(_history(result)))
    finally:
        dist.destroy_process_group()


def test_two_processes_take_the_steps_one_process_takes(tmp_path: Path) -> None:
    model, rows = _problem()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = fit(model, rows, CONFIG)
    finally:
        torch.set_num_threads(before)
    torch.multiprocessing.spawn(_rank, args=(2, str(tmp_path)), nprocs=2, join=True)

    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # in step
    plain = model.state_dict()
    # the same steps, their sums added in another order: equal to float precision
    gap = max(float((ranks[0][k] - plain[k]).abs().max()) for k in plain)
    assert gap < 1e-5, gap
    got = json.loads((tmp_path / "rank0.json").read_text())
    assert [h["epoch"] for h in got] == [h.epoch for h in expected.history]
    for mine, theirs in zip(got, _history(expected), strict=True):
        for key in ("train_loss", "val_loss", "val_metric"):
            assert abs(mine[key] - theirs[key]) < 1e-5, (key, mine, theirs)

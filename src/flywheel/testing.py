"""The architecture contract as tests: what every architecture of the zoo passes, for a
plugin's author to run on theirs.

    from flywheel.testing import check_architecture

    check_architecture("mypkg.nets:build")   # or an entry point's name, or the factory
    # → the outcome of each clause; ContractError naming the first that failed

With pytest, one test per clause and sample (a skipped clause says why)::

    import pytest
    from flywheel.testing import architecture_checks

    @pytest.mark.parametrize("check", architecture_checks("mypkg.nets:build"), ids=str)
    def test_the_flywheel_contract(check):
        if skipped := check():
            pytest.skip(skipped)

The clauses, in order (``CLAUSES``): the declaration has the contract's form and is found
by its name (``declares``); ``preprocess`` turns a dataset's native preprocessing into
a JSON dict of the modality's kind; ``input_shape`` is a tuple of positive ints;
``defaults`` are JSON, and the spec survives its JSON form; ``build`` gives an
``nn.Module``; its outputs have the objective's shape (``output_shape``: ``(N,
classes)``, or ``(N,)`` for regression); an input of another shape raises ``ModelError``
naming ``(N, <shape>)`` (``strict_input``: ``flywheel.models.check_input`` does it); the
same seed gives the same initial weights (``seeded_init``); two epochs of flywheel's fit
loop change the weights and keep the outputs finite (``trains``) and give the same
weights twice (``seeded_training``); the weights survive safetensors and the spec's JSON
(``save_load``); and, where the architecture declares ``onnx_check``, its ONNX export
computes what torch does (``onnx_export``).

Each clause runs on the modality's sample datasets (``SAMPLES``: tiny images in L and
RGB, a log-mel clip, a tokenised text, three tabular columns), or on ``samples`` given.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flywheel.data import Arrays
from flywheel.errors import ContractError, FlywheelError, ModelError
from flywheel.export.onnx import PARITY_ATOL, export_onnx
from flywheel.models import ModelSpec, arch_info, create_model
from flywheel.models.contract import ArchInfo
from flywheel.registry.artifacts import load_artifact, save_artifact
from flywheel.training import TrainConfig, fit, seed_everything

__all__ = [
    "CLAUSES",
    "LABELS",
    "SAMPLES",
    "Check",
    "ContractError",
    "Outcome",
    "architecture_checks",
    "check_architecture",
    "sample_batch",
    "spec_for",
]

#: the clauses of the contract, in the order they are checked
CLAUSES = (
    "declares",
    "preprocess",
    "input_shape",
    "defaults",
    "build",
    "output_shape",
    "strict_input",
    "seeded_init",
    "trains",
    "seeded_training",
    "save_load",
    "onnx_export",
)
#: the classes of the sample datasets
LABELS = ("ant", "bee", "cat")
_TWO_EPOCHS = TrainConfig(epochs=2, batch_size=8, val_fraction=0.25, patience=5, seed=0)

Sample = tuple[dict[str, Any], dict[str, Any]]
#: per modality: (a dataset's native preprocessing, the user's options) to build from
SAMPLES: dict[str, list[Sample]] = {
    "image": [
        ({"kind": "image", "mode": "L", "height": 8, "width": 8}, {"image_size": 8}),
        ({"kind": "image", "mode": "RGB", "height": 10, "width": 12}, {"image_size": 32}),
    ],
    "audio": [
        (
            {
                "kind": "audio",
                "sample_rate": 8000,
                "seconds": 0.2,
                "n_mels": 40,
                "n_fft": 256,
                "hop_length": 80,
                "features": "log-mel",
            },
            {},
        )
    ],
    "text": [({"kind": "text", "tokenizer": "all-MiniLM-L6-v2", "max_length": 16}, {})],
    "tabular": [
        (
            {
                "kind": "tabular",
                "columns": ["a", "b", "c"],
                "mean": [0.0, 0.0, 0.0],
                "std": [1.0, 1.0, 1.0],
                "target_mean": 10.0,
                "target_std": 2.0,
            },
            {},
        )
    ],
}


@dataclass(frozen=True)
class Check:
    """One clause on one sample; calling it runs it: None when it passed, the reason
    when it does not apply (skipped), ``ContractError`` naming the clause when it failed."""

    arch: str
    clause: str
    sample: int
    run: Callable[[], str | None] = field(repr=False, compare=False)

    def __call__(self) -> str | None:
        try:
            return self.run()
        except ContractError:
            raise
        except (FlywheelError, AssertionError, RuntimeError, ValueError, TypeError) as exc:
            raise ContractError(self.arch, self.clause, _text(exc)) from exc

    def __str__(self) -> str:
        return f"{self.arch}[{self.sample}]:{self.clause}"


@dataclass(frozen=True)
class Outcome:
    """What one check found: ``passed`` (True), failed (False) or skipped (None)."""

    check: str
    clause: str
    passed: bool | None
    detail: str = ""


def check_architecture(
    arch: str | Callable[[], ArchInfo],
    *,
    samples: Sequence[Sample] | None = None,
    raise_on_failure: bool = True,
) -> list[Outcome]:
    """Run every clause of the contract on ``arch`` (a name, ``package.module:factory``,
    or the factory itself); the outcome of each. ``raise_on_failure``: raise the first
    failure's ``ContractError`` (its ``clause`` names it) after running them all."""
    outcomes: list[Outcome] = []
    first: ContractError | None = None
    for check in architecture_checks(arch, samples=samples):
        try:
            skipped = check()
        except ContractError as exc:
            first = first or exc
            outcomes.append(Outcome(str(check), exc.clause, False, exc.detail))
            continue
        outcomes.append(Outcome(str(check), check.clause, None if skipped else True, skipped or ""))
    if first is not None and raise_on_failure:
        raise first
    return outcomes


def architecture_checks(
    arch: str | Callable[[], ArchInfo], *, samples: Sequence[Sample] | None = None
) -> list[Check]:
    """The contract's checks of ``arch``: each clause on each sample (the first one only
    for the declaration), for ``pytest.mark.parametrize``."""
    name = _name(arch)
    try:
        info = arch_info(name)
    except FlywheelError as exc:
        error = exc if isinstance(exc, ContractError) else ContractError(name, "declares", str(exc))

        def fail() -> str | None:
            raise error

        return [Check(name, "declares", 0, fail)]
    cases = list(samples if samples is not None else SAMPLES[info.modality])
    checks = [Check(name, "declares", 0, lambda: None)]
    for i in range(len(cases)):
        for clause in CLAUSES[1:]:
            checks.append(Check(name, clause, i, _runner(name, clause, cases, i)))
    return checks


def spec_for(arch: str, sample: int = 0, *, samples: Sequence[Sample] | None = None) -> ModelSpec:
    """The spec of ``arch`` on one of its modality's sample datasets (``SAMPLES``)."""
    info = arch_info(arch)
    native, options = (samples if samples is not None else SAMPLES[info.modality])[sample]
    return _spec(arch, info, native, options)


def sample_batch(spec: ModelSpec, n: int = 24) -> Arrays:
    """``n`` seeded rows a model of ``spec`` reads: random pixels, features or frames
    (token ids for text), with ``LABELS`` in turn or values around 10."""
    rng = np.random.default_rng(0)
    x: np.ndarray
    if arch_info(spec.arch).modality == "text":
        x = np.ones((n, *spec.input_shape), dtype=np.int64)
        x[:, 0] = rng.integers(1000, 2000, (n, spec.input_shape[1]))
    else:
        x = rng.random((n, *spec.input_shape), dtype=np.float32)
    if not spec.labels:
        return Arrays(x=x, y=rng.normal(10, 2, n).astype(np.float32), labels=[])
    y = np.arange(n, dtype=np.int64) % len(spec.labels)
    return Arrays(x=x, y=y, labels=list(spec.labels))


# -- the clauses ----------------------------------------------------------------------


def _name(arch: str | Callable[[], ArchInfo]) -> str:
    if isinstance(arch, str):
        return arch
    qualname = getattr(arch, "__qualname__", "")
    if "<locals>" in qualname or not qualname:
        raise ContractError(
            repr(arch),
            "declares",
            "a factory must be importable as 'package.module:factory' (a saved model finds "
            "its architecture again by that name); this one is defined inside a function",
        )
    return f"{arch.__module__}:{qualname}"


def _spec(arch: str, info: ArchInfo, native: dict[str, Any], options: dict[str, Any]) -> ModelSpec:
    """The spec a project of this sample would train: each step's failure names its clause."""
    regression = info.objective == "regression"
    with _clause(arch, "preprocess"):
        params = info.preprocess(dict(native), dict(options))
        assert isinstance(params, dict), f"returned {type(params).__name__}, not a dict"
        json.dumps(params)
        assert params.get("kind") == native["kind"], (
            f"returned kind {params.get('kind')!r}; the codec of {native['kind']!r} reads it"
        )
    with _clause(arch, "input_shape"):
        shape = info.input_shape(params)
        assert isinstance(shape, tuple | list) and shape, f"returned {shape!r}, not a tuple"
        assert all(isinstance(d, int) and d > 0 for d in shape), f"{shape!r} is not positive ints"
    with _clause(arch, "defaults"):
        hparams = info.defaults(tuple(shape))
        assert isinstance(hparams, dict), f"returned {type(hparams).__name__}, not a dict"
        if regression:
            hparams = {**hparams, "y_mean": native["target_mean"], "y_std": native["target_std"]}
        spec = ModelSpec(
            arch=arch,
            task="regression" if regression else f"{info.modality}-classification",
            input_shape=tuple(shape),
            labels=() if regression else LABELS,
            hparams=hparams,
            preprocessing=params,
            plugin=dict(info.origin) or None,
        )
        again = ModelSpec.from_json(json.loads(json.dumps(spec.to_json())))
        assert again == spec, "the spec is not the same after its JSON round trip"
    return spec


@contextmanager
def _clause(arch: str, clause: str) -> Iterator[None]:
    """Failures inside the block name ``clause`` (one that names its own passes through)."""
    try:
        yield
    except ContractError:
        raise
    except Exception as exc:
        raise ContractError(arch, clause, _text(exc)) from exc


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _runner(arch: str, clause: str, cases: list[Sample], i: int) -> Callable[[], str | None]:
    def run() -> str | None:
        info = arch_info(arch)
        spec = _spec(arch, info, *cases[i])
        if clause in ("preprocess", "input_shape", "defaults"):
            return None  # _spec checked them
        with _clause(arch, clause):
            skipped = _CLAUSES[clause](spec)
        return skipped

    return run


def _seeded(spec: ModelSpec, seed: int) -> nn.Module:
    """The model of ``spec`` built after seeding (a failure names the clause ``build``)."""
    seed_everything(seed)
    with _clause(spec.arch, "build"):
        model = create_model(spec)
    return model


def _outputs(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(torch.from_numpy(x))
    return out


def _same_weights(a: nn.Module, b: nn.Module) -> str | None:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return "the two models have different parameters"
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    return f"{', '.join(differ[:3])} differ" if differ else None


def _build(spec: ModelSpec) -> str | None:
    _seeded(spec, 0)
    return None


def _output_shape(spec: ModelSpec) -> str | None:
    out = _outputs(_seeded(spec, 0), sample_batch(spec, 5).x)
    want = (5, len(spec.labels)) if spec.labels else (5,)
    assert tuple(out.shape) == want, f"5 rows gave outputs of shape {tuple(out.shape)}; want {want}"
    return None


def _strict_input(spec: ModelSpec) -> str | None:
    model = _seeded(spec, 0).eval()
    x = torch.from_numpy(sample_batch(spec, 2).x)
    expected = f"(N, {', '.join(map(str, spec.input_shape))})"
    wrong = (("a longer last axis", torch.cat([x, x[..., :1]], dim=-1)), ("no batch axis", x[0]))
    for what, bad in wrong:
        try:
            with torch.no_grad():
                model(bad)
        except ModelError as exc:
            assert re.search(re.escape(expected), str(exc)), (
                f"an input with {what} raised ModelError without naming {expected}: {exc}"
            )
            continue
        except Exception as exc:
            raise AssertionError(
                f"an input with {what} raised {type(exc).__name__}, not ModelError naming "
                f"{expected} (flywheel.models.check_input does it)"
            ) from exc
        raise AssertionError(f"an input with {what} was accepted; want a ModelError: {expected}")
    return None


def _seeded_init(spec: ModelSpec) -> str | None:
    differ = _same_weights(_seeded(spec, 0), _seeded(spec, 0))
    assert differ is None, f"the same seed gave other initial weights: {differ}"
    return None


def _fit(spec: ModelSpec) -> tuple[nn.Module, nn.Module]:
    """(the model seeded, the same after two epochs of the fit loop)."""
    start, model = _seeded(spec, 0), _seeded(spec, 0)
    fit(model, sample_batch(spec), _TWO_EPOCHS, regression=not spec.labels)
    return start, model


def _trains(spec: ModelSpec) -> str | None:
    start, trained = _fit(spec)
    assert _same_weights(start, trained) is not None, "two epochs of training left every weight"
    out = _outputs(trained, sample_batch(spec, 7).x)
    assert torch.isfinite(out).all(), "the trained model's outputs are not all finite"
    return None


def _seeded_training(spec: ModelSpec) -> str | None:
    _, first = _fit(spec)
    _, second = _fit(spec)
    differ = _same_weights(first, second)
    assert differ is None, f"the same seed and data trained other weights: {differ}"
    return None


def _save_load(spec: ModelSpec) -> str | None:
    _, model = _fit(spec)
    with tempfile.TemporaryDirectory() as tmp:
        save_artifact(model, spec, Path(tmp) / "v1")
        loaded, again = load_artifact(Path(tmp) / "v1")
    assert again == spec, "the spec read back differs from the one saved"
    x = sample_batch(spec, 7).x
    assert torch.equal(_outputs(model, x), _outputs(loaded, x)), (
        "the model loaded from safetensors answers otherwise than the one saved"
    )
    return None


def _onnx_export(spec: ModelSpec) -> str | None:
    if not arch_info(spec.arch).onnx_check:
        return "the architecture declares onnx_check=False (not exported per run)"
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install 'flywheel-ml[onnx]')"
    model = _seeded(spec, 0)
    with tempfile.TemporaryDirectory() as tmp:
        # an odd batch: the batch axis must be dynamic
        manifest = export_onnx(model, spec, Path(tmp) / "b", sample=sample_batch(spec, 33).x)
    parity = manifest["parity"]
    assert parity["passed"], (
        f"its ONNX graph differs from torch: max |diff| {parity['max_abs_diff']:.3g} (allowed "
        f"{PARITY_ATOL}), arg-max agreement {parity['argmax_agreement']:.4f}"
    )
    return None


_CLAUSES: dict[str, Callable[[ModelSpec], str | None]] = {
    "build": _build,
    "output_shape": _output_shape,
    "strict_input": _strict_input,
    "seeded_init": _seeded_init,
    "trains": _trains,
    "seeded_training": _seeded_training,
    "save_load": _save_load,
    "onnx_export": _onnx_export,
}

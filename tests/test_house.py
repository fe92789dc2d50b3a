"""The house: every module sits in one tier and imports only its own tier or lower; no
import cycles (function-level imports counted); only optional extras (and three heavy
libraries, named below) load inside functions; SQLAlchemy only where the store is; the
shells go through the façade. A new module must be placed in ``PLACES`` first."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import flywheel

ROOT = Path(flywheel.__file__).parent

#: lowest first: a module may import its own tier or one below
TIERS = (
    "foundation",  # errors, settings, tasks
    "store",  # schema, migrations, sessions, the blob folder
    "data",  # codecs, sources, cleaning, splits; what a model's output means
    "models",  # architectures
    "training",  # the fit loop, DP-SGD, federated rounds, a run's set-up
    "cores",  # the other stages' cores: plain data in and out, no database
    "repos",  # functions that take the caller's Session and never open one
    "context",  # what every service shares
    "services",  # a stage's persistence: each public method commits in one transaction
    "workflows",  # the steps that cross services: train, retrain, evaluate, forget
    "facade",  # Project
    "shells",  # the CLI, the demo, the HTTP server and dashboard
)

#: (pattern, tier), the first match wins: more specific patterns first
PLACES = (
    ("flywheel.cli", "shells"),
    ("flywheel.demo", "shells"),
    ("flywheel.serving", "shells"),
    ("flywheel.serving.*", "shells"),
    ("flywheel.scale.serve", "shells"),  # the app behind a Ray Serve deployment
    ("flywheel.project", "facade"),
    ("flywheel.operations", "facade"),  # Project's verbs of running a service
    ("flywheel.scale.batch", "workflows"),  # scoring a pool, logged like served calls
    ("flywheel.loop", "workflows"),
    ("flywheel.loop.*", "workflows"),
    ("flywheel.*.service", "services"),
    ("flywheel.registry.cache", "services"),
    ("flywheel.privacy.identity", "services"),
    ("flywheel.feedback.predictions", "services"),
    ("flywheel.feedback.review", "services"),
    ("flywheel.feedback.revisions", "services"),
    ("flywheel.feedback.users", "services"),
    ("flywheel.context", "context"),
    ("flywheel.*.repo", "repos"),
    ("flywheel.privacy.forget", "repos"),
    ("flywheel.privacy.ledger", "repos"),
    ("flywheel.privacy.pseudonym", "repos"),
    ("flywheel.drift", "cores"),
    ("flywheel.drift.*", "cores"),
    ("flywheel.evaluation", "cores"),
    ("flywheel.evaluation.*", "cores"),
    ("flywheel.feedback", "cores"),
    ("flywheel.feedback.*", "cores"),
    ("flywheel.privacy", "cores"),
    ("flywheel.privacy.*", "cores"),
    ("flywheel.registry", "cores"),
    ("flywheel.registry.*", "cores"),
    ("flywheel.export", "cores"),
    ("flywheel.export.*", "cores"),
    ("flywheel.testing", "cores"),  # the architecture contract, public for plugins' authors
    ("flywheel.explain", "cores"),
    ("flywheel.explain.*", "cores"),
    ("flywheel.keys", "cores"),
    ("flywheel.jobs", "cores"),
    ("flywheel.jobs.policy", "cores"),
    ("flywheel.events", "cores"),
    ("flywheel.events.*", "cores"),
    ("flywheel.scale", "training"),  # Ray: connecting, the fit loop on Ray Train
    ("flywheel.scale.*", "training"),
    ("flywheel.training", "training"),
    ("flywheel.training.*", "training"),
    ("flywheel.models", "models"),
    ("flywheel.models.*", "models"),
    ("flywheel.outputs", "data"),
    ("flywheel.data", "data"),
    ("flywheel.data.*", "data"),
    ("flywheel.store", "store"),
    ("flywheel.store.*", "store"),
    ("flywheel", "foundation"),
    ("flywheel.client", "foundation"),
    ("flywheel.errors", "foundation"),
    ("flywheel.settings", "foundation"),
    ("flywheel.tasks", "foundation"),
)

#: the only imports that may run inside a function: optional extras (the [onnx],
#: [explain], [text]/[privacy], [federated] extras and what Presidio brings), and three
#: core libraries whose import alone costs a command-line call seconds (measured with
#: ``python -X importtime`` after torch: sklearn.metrics 1.6 s, scipy.stats 1.0 s,
#: kornia.augmentation 0.5 s)
LAZY = {
    "onnx",
    "onnxruntime",
    "captum",
    "presidio_analyzer",
    "spacy",
    "tldextract",
    "opacus",
    "flwr",
    "sklearn",
    "scipy",
    "kornia",
    "ray",  # the [ray] extra
    "pyarrow",  # Ray's (the [ray] extra): Ray Train's checkpoints in a remote storage_url
}
#: the public API imports Project lazily, so that the torch-free parts (an exported
#: bundle's runtime) import without torch, and the client lazily, so that the rest
#: imports without httpx
#: the CLI loads the project's modules (torch) under a spinner, when a command needs them
CLI_LAZY = (
    "project", "outputs", "data", "serving", "serving.jobs", "export.onnx", "demo", "scale.serve",
)  # fmt: skip
LAZY_INTERNAL = {
    ("flywheel", "flywheel.project"),
    ("flywheel", "flywheel.client"),
    *(("flywheel.cli", f"flywheel.{m}") for m in CLI_LAZY),
}
#: where SQLAlchemy may be imported
SQL_TIERS = {"store", "repos", "services"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module
    line: int
    in_function: bool


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _name(p): p for p in sorted(ROOT.rglob("*.py")) if "migrations" not in p.relative_to(ROOT).parts
}


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return True
    return False


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
        return
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        package = module.split(".")
        if MODULES[module].name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, *([node.module] if node.module else [])])
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        yield sub if sub in MODULES else base


def _imports() -> list[Import]:
    out = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        parents = _parents(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                lazy = _in_function(node, parents)
                out += [Import(module, t, node.lineno, lazy) for t in _targets(module, node)]
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module"):
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("flywheel"):
                    out.append(Import(module, str(arg.value), node.lineno, True))
    return out


IMPORTS = _imports()


def tier(module: str) -> str:
    for pattern, name in PLACES:
        if fnmatchcase(module, pattern):
            return name
    raise AssertionError(f"{module} has no place in the house: add it to PLACES")


def level(module: str) -> int:
    return TIERS.index(tier(module))


def _internal(imp: Import) -> bool:
    return imp.target == "flywheel" or imp.target.startswith("flywheel.")


def test_every_module_has_a_place_and_every_place_a_module() -> None:
    assert {tier(m) for m in MODULES} == set(TIERS)
    unused = [p for p, _ in PLACES if not any(fnmatchcase(m, p) for m in MODULES)]
    assert unused == []


def test_modules_import_only_their_own_tier_or_lower() -> None:
    upward = [
        f"{i.module} ({tier(i.module)}) imports {i.target} ({tier(i.target)}) at line {i.line}"
        for i in IMPORTS
        if _internal(i)
        and level(i.target) > level(i.module)
        and (i.module, i.target) not in LAZY_INTERNAL
    ]
    assert upward == []


def test_importing_a_module_never_runs_a_higher_tier_package() -> None:
    # Importing a.b.c runs a/__init__ and a/b/__init__ first.
    higher = [
        f"{m} ({tier(m)}) is inside {pkg} ({tier(pkg)})"
        for m in MODULES
        for pkg in (".".join(m.split(".")[:k]) for k in range(1, m.count(".") + 1))
        if level(pkg) > level(m)
    ]
    assert higher == []


def test_no_import_cycles_function_level_imports_included() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if _internal(i) and i.target in MODULES and (i.module, i.target) not in LAZY_INTERNAL:
            graph[i.module].add(i.target)
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append([*path[path.index(n) :], n])
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == []


def test_only_optional_extras_are_imported_inside_functions() -> None:
    inside = [
        f"{i.module}:{i.line} imports {i.target} inside a function"
        for i in IMPORTS
        if i.in_function
        and (i.module, i.target) not in LAZY_INTERNAL
        and (_internal(i) or i.target.split(".")[0] not in LAZY)
    ]
    assert inside == []


def test_sqlalchemy_lives_in_the_store_the_repos_and_the_services() -> None:
    outside = sorted(
        f"{i.module} ({tier(i.module)})"
        for i in IMPORTS
        if i.target.split(".")[0] == "sqlalchemy" and tier(i.module) not in SQL_TIERS
    )
    assert outside == []


def test_shells_go_through_the_facade() -> None:
    """No shell touches the store, a repo or the context, or reaches past the façade's
    verbs to its database, blobs or services."""
    bad = [
        f"{i.module} imports {i.target}"
        for i in IMPORTS
        if tier(i.module) == "shells"
        and _internal(i)
        and tier(i.target) in ("store", "repos", "context")
    ]
    for module, path in MODULES.items():
        if tier(module) != "shells":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("db", "blobs", "services"):
                bad.append(f"{module}:{node.lineno} uses .{node.attr}")
    assert bad == []


def test_the_facade_is_thin() -> None:
    """project.py holds construction and verbs that delegate in a line or two."""
    assert len((ROOT / "project.py").read_text().splitlines()) <= 400
    assert not any(
        i.target.split(".")[0] in ("sqlalchemy", "numpy", "torch")
        for i in IMPORTS
        if i.module == "flywheel.project"
    )


def test_no_function_is_longer_than_100_lines() -> None:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > 100:
                    long.append(f"{module}.{node.name}: {n} lines")
    assert long == []

"""The ``flywheel`` command: parse, call a Project verb, print with rich (or ``--json``)."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import click
import typer
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from flywheel.errors import FlywheelError, ModelError
from flywheel.keys import SCOPES
from flywheel.settings import Settings

if TYPE_CHECKING:
    from flywheel.loop import TrainResult
    from flywheel.project import Project
    from flywheel.training import EpochReport

__all__ = ["app", "main"]

app = typer.Typer(
    name="flywheel",
    help="Train, serve, collect feedback, retrain, gate and promote: the model loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = typer.Typer(help="Scoped API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
data_app = typer.Typer(help="Dataset versions.", no_args_is_help=True)
app.add_typer(data_app, name="data")
users_app = typer.Typer(help="End users: trust, contributions, quarantine.")
app.add_typer(users_app, name="users")
privacy_app = typer.Typer(
    help="Privacy: the per-user ledger, the user-id key, retention, the audit log.",
    no_args_is_help=True,
)
app.add_typer(privacy_app, name="privacy")

out = Console()
err = Console(stderr=True)


class _Table(Table):
    """A table for a terminal of any width: ``key`` columns (versions, aliases, class
    names, ids) keep their words whole (rich narrows and wraps the other columns first);
    the others fold inside their cells rather than end in an ellipsis. ``--json`` is the
    machine form."""

    def add_column(  # type: ignore[override]
        self, header: str = "", *args: Any, key: bool = False, optional: bool = False, **kw: Any
    ) -> None:
        """``optional``: left out, last first, while the table is wider than the terminal."""
        kw.setdefault("overflow", "fold")
        if key:
            kw.setdefault("no_wrap", True)
        super().add_column(header, *args, **kw)
        if optional:
            self._optional = [*getattr(self, "_optional", []), self.columns[-1]]

    def __rich_console__(self, console: Any, options: Any) -> Any:
        hidden: list[str] = []
        optional = list(getattr(self, "_optional", []))
        natural = options.update_width(10_000)  # measured unbounded: what it would take
        while optional and Measurement.get(console, natural, self).maximum > options.max_width:
            col = optional.pop()
            self.columns.remove(col)
            hidden.insert(0, str(col.header))
        if hidden:
            self.caption = f"left out to fit: {', '.join(hidden)} (a wider terminal, or --json)"
        return super().__rich_console__(console, options)


ProjectOpt = Annotated[
    Path,
    typer.Option("--project", "-p", help="Project folder (default: the current directory)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _print_json(data: Any) -> None:
    from flywheel.outputs import finite_json

    sys.stdout.write(json.dumps(finite_json(data), indent=2, default=str) + "\n")


def _heavy() -> Any:
    """The project's modules (torch among them: about two seconds), loaded under a
    spinner the first time a command needs them, so that no command starts in silence;
    ``--help`` and usage errors never wait for them."""
    if "flywheel.project" not in sys.modules:
        with err.status("loading flywheel (PyTorch) ...", spinner="dots"):
            importlib.import_module("flywheel.project")
    return sys.modules["flywheel.project"]


def _open(project: Path) -> Project:
    opened: Project = _heavy().Project.open(project)
    return opened


class _EpochBar:
    """A rich progress bar fed by the fit loop: each mini-batch moves it (``on_batch``),
    each epoch's report sets its numbers; the clock counts from the start of the run,
    the ETA is of the phase (an upper bound while early stopping may end it sooner)."""

    def __init__(self, quiet: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}[/]"),
            BarColumn(),
            TextColumn("{task.fields[where]}"),
            TextColumn("{task.fields[info]}"),
            TextColumn("{task.fields[clock]}"),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err,
            disable=quiet,
            transient=True,
        )
        self.task: Any = None
        self.phase = ""
        self.info = ""
        self.batched = False
        self.started = time.monotonic()

    def __enter__(self) -> _EpochBar:
        self.started = time.monotonic()
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def _clock(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 60}:{s % 60:02d}"

    def on_stage(self, text: str) -> None:
        """A step between epochs (decoding, the gate, export): a pulsing line."""
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.phase, self.info = "stage", ""
        self.task = self.progress.add_task(text, total=None, where="", info="", clock="")
        self.progress.update(self.task, clock=self._clock())

    def on_batch(self, phase: str, epoch: int, epochs: int, done: int, batches: int) -> None:
        self.batched = True
        if self.task is None or phase != self.phase:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.phase, self.info = phase, ""
            self.task = self.progress.add_task(
                phase, total=epochs * batches, where="", info="", clock=""
            )
        self.progress.update(
            self.task,
            completed=(epoch - 1) * batches + done,
            where=(
                f"{done}/{batches} rows through the encoder"
                if phase == "features"
                else f"epoch {epoch}/{epochs} batch {done}/{batches}"
            ),
            info=self.info,
            clock=self._clock(),
        )

    def __call__(self, r: EpochReport) -> None:
        if r.phase == "refit":  # on training + validation rows: nothing to validate on
            self.info = f"loss {r.train_loss:.3f}"
        else:
            self.info = f"loss {r.train_loss:.3f} val_acc {r.val_accuracy:.3f}"
        if self.task is None:  # a loop that reports no batches (federated rounds)
            self.phase = r.phase
            self.task = self.progress.add_task(r.phase, total=r.epochs, where="", info="", clock="")
            self.progress.update(self.task, completed=r.epoch)
        self.progress.update(self.task, info=self.info, clock=self._clock())


def _print_train(result: TrainResult) -> None:
    t = _Table(title=f"model v{result.model.version} ({result.model.arch})")
    t.add_column("field")
    t.add_column("value")
    m = result.model.metrics
    d = result.decision
    t.add_row("dataset version", str(result.model.dataset_version))
    t.add_row("training rows", str(m["n_train"]))
    resumed = m.get("resumed_from_epoch")
    t.add_row(
        "epochs run (best)",
        f"{m['epochs_run']} ({m['best_epoch']})" + (f", resumed at {resumed}" if resumed else ""),
    )
    if m.get("refit_rows"):
        t.add_row("refit", f"{m['best_epoch']} epochs on {m['refit_rows']} rows (train + val)")
    t.add_row(f"held-out {d.metric}", f"{d.challenger_score:.4f}")
    t.add_row(
        f"champion {d.metric}", "-" if d.champion_score is None else f"{d.champion_score:.4f}"
    )
    fed = m.get("federated")
    if fed:
        t.add_row(
            "federated",
            f"{fed['strategy']} with Flower: {fed['clients']} clients "
            f"({', '.join(map(str, fed['rows_per_client']))} rows), {fed['rounds']} rounds of "
            f"{fed['local_epochs']} local epoch(s)",
        )
    priv = m.get("privacy")
    if priv:
        eps = "∞ (no noise)" if priv["epsilon"] is None else f"{priv['epsilon']:.3g}"
        t.add_row(
            "privacy",
            f"ε = {eps}, δ = {priv['delta']:g} per user ({priv['accountant']}, "
            f"{priv['sampling']} q = {priv['sample_rate']:.3g}, σ = "
            f"{priv['noise_multiplier']:.3g}, C = {priv['max_grad_norm']:g}, "
            f"{priv['steps']} steps); {priv.get('users_charged', 0)} users charged",
        )
        if priv.get("users_left_out"):
            t.add_row(
                "left out",
                f"[yellow]{priv['users_left_out']} users over their budget "
                f"({priv['rows_left_out']} rows; budget ε = {priv['budget']:g})[/]",
            )
    t.add_row("promoted", "[green]yes[/]" if result.promoted else "[red]no[/]")
    t.add_row("gate", d.reason)
    out.print(t)


def _score(metrics: dict[str, Any]) -> str:
    if "accuracy" in metrics:
        return f"acc {metrics['accuracy']:.4f}"
    if "mse" in metrics:
        return f"mse {metrics['mse']:.4g}"
    return "-"


TaskOpt = Annotated[
    str | None,
    typer.Option(
        "--task",
        help="image-classification, audio-classification, text-classification or regression "
        "(guessed when the data leave no doubt).",
    ),
]
PathColOpt = Annotated[str, typer.Option(help="CSV manifest: the column of file paths.")]
LabelColOpt = Annotated[str, typer.Option(help="CSV: the column of labels.")]
TextColOpt = Annotated[str, typer.Option(help="Text CSV: the column of texts.")]
TargetOpt = Annotated[str | None, typer.Option(help="Regression CSV: the numeric target column.")]
EncodingOpt = Annotated[str, typer.Option(help="CSV encoding (e.g. latin-1).")]
PatternOpt = Annotated[
    str, typer.Option(help="Audio folder without class folders: the file-name pattern.")
]


def _source(data: str, **options: Any) -> tuple[Any, str]:
    _heavy()
    from flywheel.data import SourceOptions, resolve_source

    return resolve_source(data, SourceOptions(**options))


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the project in.")],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Required: 'digits' or 'diabetes' (built in), a folder (image or audio class "
            "folders, or WAVs named {label}_{user}_{n}.wav), or a CSV (manifest, text or "
            "tabular).",
            show_default=False,
        ),
    ] = None,
    task: TaskOpt = None,
    path_column: PathColOpt = "path",
    label_column: LabelColOpt = "label",
    text_column: TextColOpt = "text",
    target: TargetOpt = None,
    encoding: EncodingOpt = "utf-8",
    pattern: PatternOpt = "{label}_{user}_{n}.wav",
    holdout: Annotated[
        float, typer.Option(help="Share of the data kept aside for evaluation, never trained on.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the held-out draw.")] = 0,
    arch: Annotated[
        str | None,
        typer.Option(
            help="The project's architecture (setting arch): one of the zoo, a plugin's entry "
            "point name, or package.module:factory \\[default: the task's].",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a project and import its base data (cleaned) as dataset version 1."""
    if data is None:
        raise click.UsageError(
            "--data is required: the built-in 'digits' or 'diabetes', a folder of class "
            "folders (images, audio) or WAVs, or a CSV (e.g. flywheel init myproject --data "
            "digits)",
            click.get_current_context(),
        )
    source, task_name = _source(
        data,
        task=task,
        path_column=path_column,
        label_column=label_column,
        text_column=text_column,
        target=target,
        encoding=encoding,
        pattern=pattern,
    )
    with Progress(
        TextColumn("[bold]import[/]"),
        TextColumn("{task.completed} inputs"),
        console=err,
        disable=as_json,
        transient=True,
    ) as progress:
        bar = progress.add_task("import", total=None)
        project = _heavy().Project.init(
            directory,
            source,
            task=task_name,
            holdout_fraction=holdout,
            seed=seed,
            settings=None if arch is None else {"arch": arch},
            on_example=lambda n: progress.update(bar, completed=n),
        )
    info = project.dataset()
    if as_json:
        _print_json({"project_dir": str(project.settings.project_dir), "dataset": info.to_json()})
        return
    classes = f"{len(info.labels)} classes" if info.labels else "a numeric target"
    out.print(
        f"Created {info.task} project [bold]{project.settings.project_dir}[/] from "
        f"{source.name}: {info.n_train} training and {info.n_holdout} held-out examples, "
        f"{classes}."
    )
    _print_cleaning(info.cleaning, brief=True)
    out.print("Next: [bold]flywheel train[/] (in that folder, or with --project).")


def _print_cleaning(report: dict[str, Any], *, brief: bool = False) -> None:
    if not report:
        return
    t = _Table(title="cleaning report")
    t.add_column("check")
    t.add_column("count", justify="right")
    t.add_column("action")
    t.add_column("first ones")
    rows = [
        ("unreadable", "dropped", lambda i: f"{i['path']}: {i['reason']}"),
        ("exact_duplicates", "kept once", lambda i: f"{i['path']} = {i['duplicate_of']}"),
        ("conflicting_labels", "dropped", lambda i: f"{', '.join(i['paths'])} {i['labels']}"),
        ("near_duplicates", "kept, same split", lambda i: ", ".join(i)),
        (
            "outliers",
            "reported",
            lambda i: f"{i['path']} ({i.get('reason') or 'z=' + str(i['z'])})",
        ),
    ]
    for key, action, show in rows:
        entry = report.get(key, {"count": 0, "items": []})
        if brief and not entry["count"]:
            continue
        firsts = "; ".join(show(i) for i in entry["items"][:3])
        t.add_row(key.replace("_", " "), str(entry["count"]), action, firsts)
    scrubbed = report.get("pii_scrubbed")
    if scrubbed is not None and (sum(scrubbed.values()) or not brief):
        found = ", ".join(f"{k.lower()} {v}" for k, v in scrubbed.items()) or "none found"
        t.add_row("personal data", str(sum(scrubbed.values())), "removed", found)
    if t.row_count:
        (err if brief else out).print(t)
    (err if brief else out).print(f"{report['kept']} of {report['total']} inputs kept.")


@data_app.command("report")
def data_report(
    version: Annotated[
        int | None, typer.Argument(help="Dataset version (default: newest).")
    ] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """The cleaning report of a dataset version: unreadable, duplicates, conflicts, outliers."""
    info = _open(project).dataset(version)
    if as_json:
        _print_json(info.to_json())
        return
    out.print(
        f"dataset version {info.version} ({info.task}): {info.n_train} training, "
        f"{info.n_holdout} held-out, {info.n_evaluation} evaluation, {info.n_feedback} from "
        "feedback; parent "
        f"{info.parent if info.parent is not None else '-'}; content {info.content_hash[:12]}"
    )
    _print_cleaning(info.cleaning)


@data_app.command("issues")
def data_issues(
    project: ProjectOpt = Path("."),
    folds: Annotated[
        int,
        typer.Option(
            min=2,
            max=20,
            help="Cross-validation folds: each row is scored by a model not trained on it.",
        ),
    ] = 5,
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Epochs of each fold's model \\[default: the setting epochs].",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Find likely mislabelled training rows (confident learning) of the newest dataset version."""
    p = _open(project)
    with err.status(f"cross-validating {folds} models to score every training row ..."):
        found = p.find_label_issues(folds=folds, config=p.train_config(epochs=epochs))
    if as_json:
        _print_json(found)
        return
    out.print(
        f"dataset version {found['dataset_version']}: {found['n_issues']} of {found['n_rows']} "
        f"training rows look mislabelled (estimated noise rate {found['noise_rate']:.1%}); "
        f"training will {p.settings.label_issue_mode.replace('-', ' ')} them "
        "(setting label_issue_mode)"
    )
    t = _Table(title="likely label issues (lowest confidence in the given label first)")
    for col in ("row", "given", "suggested", "p(given)"):
        t.add_column(col)
    for i in sorted(found["issues"], key=lambda i: i["self_confidence"])[:50]:
        t.add_row(
            i["source_path"] or i["input_hash"][:12],
            str(i["given"]),
            str(i["suggested"]),
            f"{i['self_confidence']:.3f}",
        )
    out.print(t)


def _default(setting: str, shown: str | None = None) -> str:
    """ "[default: 30, setting epochs]": the value a run gets when the option is not given
    (flywheel.toml or FLYWHEEL_* may change it), and where to change it for good."""
    value = Settings.model_fields[setting].default
    return f"\\[default: {shown or value}; setting {setting}]"  # \\[: not rich markup


def _topt(setting: str, help: str, *decls: str, shown: str | None = None, **kw: Any) -> Any:
    return typer.Option(*decls, help=f"{help} {_default(setting, shown)}", show_default=False, **kw)


ArchT = Annotated[
    str | None, _topt("arch", "Architecture.", shown="the task's", rich_help_panel="Training")
]
EpochsT = Annotated[
    int | None,
    _topt(
        "epochs",
        "Most epochs (early stopping may end sooner).",
        min=1,
        rich_help_panel="Training",
    ),
]
BatchSizeT = Annotated[
    int | None, _topt("batch_size", "Rows per step.", min=1, rich_help_panel="Training")
]
LrT = Annotated[
    float | None,
    _topt("learning_rate", "Learning rate (Adam).", "--lr", min=0.0, rich_help_panel="Training"),
]
WeightDecayT = Annotated[
    float | None,
    _topt("weight_decay", "L2 penalty.", min=0.0, rich_help_panel="Training"),
]
DropoutT = Annotated[
    float | None,
    _topt("dropout", "Dropout before the head.", min=0.0, max=0.95, rich_help_panel="Training"),
]
PatienceT = Annotated[
    int | None,
    _topt(
        "patience",
        "Epochs without a better validation loss before stopping.",
        min=1,
        rich_help_panel="Training",
    ),
]
LrScheduleT = Annotated[
    str | None,
    _topt("lr_schedule", "none, cosine or plateau.", rich_help_panel="Training"),
]
AugmentT = Annotated[
    bool | None,
    _topt(
        "augment",
        "Augment training batches (images, audio).",
        "--augment/--no-augment",
        rich_help_panel="Training",
    ),
]
ImageSizeT = Annotated[
    int | None,
    _topt(
        "image_size",
        "Images: resize to this side.",
        shown="the architecture's",
        min=4,
        rich_help_panel="Training",
    ),
]
SeedT = Annotated[
    int | None, _topt("seed", "Seed of the split and the run.", rich_help_panel="Training")
]
WarmStartT = Annotated[
    bool | None,
    _topt(
        "warm_start",
        "Start from production's weights.",
        "--warm-start/--cold-start",
        rich_help_panel="Training",
    ),
]
RefitT = Annotated[
    bool | None,
    _topt(
        "refit",
        "Train again on training + validation rows for the best epoch count.",
        "--refit/--no-refit",
        rich_help_panel="Training",
    ),
]
DpEpsilonT = Annotated[
    float | None,
    _topt(
        "dp_epsilon",
        "Train with user-level DP-SGD to this ε (Opacus, RDP).",
        shown="off",
        min=0.0,
        rich_help_panel="Privacy",
    ),
]
DpDeltaT = Annotated[
    float | None,
    _topt("dp_delta", "δ of the private run.", min=0.0, max=1.0, rich_help_panel="Privacy"),
]
DpMaxGradNormT = Annotated[
    float | None,
    _topt(
        "dp_max_grad_norm",
        "DP: clipping norm of each user's gradient.",
        min=0.0,
        rich_help_panel="Privacy",
    ),
]
DpNoiseMultiplierT = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        help="DP: a noise multiplier σ instead of an ε target \\[default: from the ε target].",
        show_default=False,
        rich_help_panel="Privacy",
    ),
]
FederatedT = Annotated[
    bool,
    typer.Option(
        "--federated",
        help="FedAvg with Flower (simulated here), one client per user group.",
        rich_help_panel="Federated",
    ),
]
ClientsT = Annotated[
    int, typer.Option(min=2, help="Federated: number of clients.", rich_help_panel="Federated")
]
RoundsT = Annotated[
    int, typer.Option(min=1, help="Federated: rounds.", rich_help_panel="Federated")
]
LocalEpochsT = Annotated[
    int,
    typer.Option(
        min=1,
        help="Federated: epochs each client trains per round.",
        rich_help_panel="Federated",
    ),
]
TrainWorkersT = Annotated[
    int | None,
    _topt(
        "train_workers",
        "Ray Train workers (DDP; each takes its share of every batch); more than 1 trains "
        "on Ray and needs ray_address.",
        "--train-workers",
        min=1,
        max=256,
        rich_help_panel="Ray",
    ),
]


def _training_options(
    arch: ArchT = None,
    epochs: EpochsT = None,
    batch_size: BatchSizeT = None,
    lr: LrT = None,
    weight_decay: WeightDecayT = None,
    dropout: DropoutT = None,
    patience: PatienceT = None,
    lr_schedule: LrScheduleT = None,
    augment: AugmentT = None,
    image_size: ImageSizeT = None,
    seed: SeedT = None,
    warm_start: WarmStartT = None,
    refit: RefitT = None,
    dp_epsilon: DpEpsilonT = None,
    dp_delta: DpDeltaT = None,
    dp_max_grad_norm: DpMaxGradNormT = None,
    dp_noise_multiplier: DpNoiseMultiplierT = None,
    federated: FederatedT = False,
    clients: ClientsT = 5,
    rounds: RoundsT = 10,
    local_epochs: LocalEpochsT = 1,
    train_workers: TrainWorkersT = None,
) -> None:
    """The options of a training run, shared by ``train`` and ``retrain`` (only its
    signature is used: see ``_with_training_options``)."""


def _with_training_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` takes ``training`` (a dict); the command the CLI sees takes each of
    ``_training_options``'s options instead, after its own."""
    extra = list(inspect.signature(_training_options, eval_str=True).parameters.values())
    sig = inspect.signature(command, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != "training"]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        training = {p.name: kwargs.pop(p.name) for p in extra}
        command(training=training, **kwargs)

    params = own + extra
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def _config(p: Project, t: dict[str, Any]) -> Any:
    return p.train_config(**_overrides(t))


def _overrides(t: dict[str, Any]) -> dict[str, Any]:
    """The training options as ``train_config`` takes them (None: the setting's)."""
    federated = t["federated"]
    return dict(
        arch=t["arch"],
        epochs=t["epochs"],
        batch_size=t["batch_size"],
        learning_rate=t["lr"],
        weight_decay=t["weight_decay"],
        dropout=t["dropout"],
        patience=t["patience"],
        lr_schedule=t["lr_schedule"],
        augment=t["augment"],
        image_size=t["image_size"],
        seed=t["seed"],
        warm_start=t["warm_start"],
        refit=t["refit"],
        dp_epsilon=t["dp_epsilon"],
        dp_delta=t["dp_delta"],
        dp_max_grad_norm=t["dp_max_grad_norm"],
        dp_noise_multiplier=t["dp_noise_multiplier"],
        federated_clients=t["clients"] if federated else None,
        federated_rounds=t["rounds"] if federated else None,
        local_epochs=t["local_epochs"] if federated else None,
        workers=t["train_workers"],
    )


def _as_job(p: Project, kind: str, params: dict[str, Any], bar: _EpochBar, work: Any) -> Any:
    """Run ``work(on_epoch)`` as a job of ``kind`` (trigger ``manual``), so that the CLI's
    runs are listed with the server's (``flywheel jobs``, ``GET /v1/jobs``, the jobs page)
    with their epochs as progress lines; its error is raised here as it came."""
    owner = f"{socket.gethostname()[:40]}:{os.getpid()}:cli"
    federated = ("federated", "clients", "rounds", "local_epochs")
    given = {
        k: v
        for k, v in params.items()
        if v is not None and (k not in federated or params.get("federated"))
    }
    job_id = p.create_job(kind, given, owner=owner)
    caught: dict[str, Any] = {}

    def on_epoch(r: EpochReport) -> None:
        bar(r)
        p.job_log(job_id, r.line())
        p.heartbeat_jobs(owner)

    def on_stage(text: str) -> None:
        bar.on_stage(text)
        p.job_log(job_id, text)
        p.heartbeat_jobs(owner)

    on_epoch.on_batch = bar.on_batch  # type: ignore[attr-defined]
    on_epoch.on_stage = on_stage  # type: ignore[attr-defined]

    def run() -> dict[str, Any]:
        try:
            caught["result"] = work(on_epoch)
        except Exception as exc:
            caught["error"] = exc
            raise
        out: dict[str, Any] = caught["result"].to_json()
        return out

    if not p.run_job(job_id, run, owner=owner, on_wait=bar.on_stage):
        return p.wait_job(job_id, on_line=bar.on_stage)  # another worker took it: followed
    if "error" in caught:
        raise caught["error"]
    return caught["result"]


@app.command()
@_with_training_options
def train(
    project: ProjectOpt = Path("."),
    resume: Annotated[
        bool, typer.Option("--resume", help="Finish an interrupted run from its last checkpoint.")
    ] = False,
    as_json: JsonOpt = False,
    *,
    training: dict[str, Any],
) -> None:
    """Train a challenger on the newest dataset version; gate it; promote it if it passes."""
    p = _open(project)
    config = _config(p, training)
    with _EpochBar(quiet=as_json) as bar:
        result = _as_job(
            p, "train", training | {"resume": resume}, bar,
            lambda on_epoch: p.train(config, on_epoch=on_epoch, resume=resume),
        )  # fmt: skip
    if as_json:
        _print_json(result.to_json())
    else:
        _print_train(result)


@app.command()
@_with_training_options
def retrain(
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
    *,
    training: dict[str, Any],
) -> None:
    """One turn of the loop: curate new feedback, train, gate, promote (the training
    options as for train; a retrain starts warm from production unless --cold-start).
    It is queued like a server's: run here, or followed here if a worker takes it first."""
    p = _open(project)
    config = _config(p, training)
    asked = {k: v for k, v in _overrides(training).items() if v is not None}
    with _EpochBar(quiet=as_json) as bar:
        result = _as_job(
            p, "retrain", asked, bar, lambda on_epoch: p.retrain(config, on_epoch=on_epoch)
        )
    if isinstance(result, dict):  # the job as another worker finished it
        if result["status"] == "failed":
            _fail(f"job {result['job_id']} failed on {result['owner']}: {_job_outcome(result)}")
        if as_json:
            _print_json(result["result"])
        else:
            out.print(
                f"job {result['job_id'][:8]} ran on {result['owner']}: {_job_outcome(result)}"
            )
        return
    if as_json:
        _print_json(result.to_json())
        return
    c = result.curation
    out.print(
        f"feedback: {c['answers']} answers → {c['rows']} new rows, "
        f"{c.get('evaluation_rows', 0)} of them set aside for evaluation "
        f"(dropped: {c['dropped_holdout']} held-out, {c['dropped_known']} known; "
        f"{c['merged_duplicates']} merged duplicates)"
    )
    if result.train is None:
        out.print(f"[yellow]nothing retrained:[/] {result.skipped_reason}")
    else:
        _print_train(result.train)


@app.command()
def evaluate(
    version: Annotated[
        int | None, typer.Argument(help="Model version (default: production).")
    ] = None,
    project: ProjectOpt = Path("."),
    data: Annotated[
        str | None, typer.Option("--data", help="Score on this data instead of the held-out split.")
    ] = None,
    path_column: PathColOpt = "path",
    label_column: LabelColOpt = "label",
    text_column: TextColOpt = "text",
    target: TargetOpt = None,
    encoding: EncodingOpt = "utf-8",
    pattern: PatternOpt = "{label}_{user}_{n}.wav",
    as_json: JsonOpt = False,
) -> None:
    """Score a model version on the held-out split, or on outside data of the project's task."""
    p = _open(project)
    source = None
    if data is not None:
        source, _ = _source(
            data,
            task=p.task.name,
            path_column=path_column,
            label_column=label_column,
            text_column=text_column,
            target=target,
            encoding=encoding,
            pattern=pattern,
        )
    report = p.evaluate(version, source=source)
    if as_json:
        _print_json(report)
        return
    if "mse" in report:
        out.print(
            f"model v{report['model_version']} on {report['data']}: MSE [bold]{report['mse']:.4g}"
            f"[/], RMSE {report['rmse']:.4g}, MAE {report['mae']:.4g}, R² {report['r2']:.3f} "
            f"(n={report['n']})"
        )
        return
    out.print(
        f"model v{report['model_version']} on {report['data']}: "
        f"accuracy [bold]{report['accuracy']:.4f}[/] (n={report['n']})"
    )
    if report["skipped"]:
        err.print(f"[yellow]skipped {len(report['skipped'])} unreadable input(s)[/]")
    t = _Table(title="per class")
    t.add_column("class", key=True)
    for col in ("precision", "recall", "f1", "support"):
        t.add_column(col, justify="right", key=True)
    for lab, m in report["per_class"].items():
        t.add_row(
            lab, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"])
        )
    out.print(t)
    labels = report["labels"]
    # Full names as column heads while they fit; else each column is its row's number.
    cells = max(len(str(v)) for row in report["confusion_matrix"] for v in row)
    named = sum(max(len(lab), cells) + 3 for lab in labels) + max(map(len, labels)) + 8
    short = named > out.width
    what = "columns: prediction, by row number" if short else "columns: prediction"
    cm = _Table(title=f"confusion matrix (rows: truth, {what})")
    cm.add_column("", key=True)
    for i, lab in enumerate(labels):
        cm.add_column(str(i) if short else lab, justify="right", key=True)
    for i, (lab, row) in enumerate(zip(labels, report["confusion_matrix"], strict=True)):
        cm.add_row(f"{i} {lab}" if short else lab, *(str(v) for v in row))
    out.print(cm)


@app.command()
def models(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List model versions with their aliases, metrics and lineage."""
    versions = _open(project).models()
    if as_json:
        _print_json([v.to_json() for v in versions])
        return
    t = _Table(title="model versions")
    for col in ("version", "arch", "aliases"):
        t.add_column(col, key=True)
    t.add_column("held-out")
    for col in ("parent", "dataset", "created"):
        t.add_column(col, optional=True)
    t.add_column("gate")
    for v in versions:
        gate = v.gate or {}
        t.add_row(
            str(v.version),
            v.arch,
            ", ".join(v.aliases),
            _score(v.metrics),
            "-" if v.parent is None else str(v.parent),
            str(v.dataset_version),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
            "imported" if gate.get("imported") else "passed" if gate.get("promote") else "refused",
        )
    out.print(t)


def _job_outcome(job: dict[str, Any]) -> str:
    if job["error"]:
        return job["error"].splitlines()[0][:80]
    result = job["result"] or {}
    if result.get("skipped"):
        return f"skipped: {result.get('reason')}"
    if "model_version" in result:
        verdict = "promoted" if result.get("promoted") else "not promoted"
        return f"v{result['model_version']} {verdict}"
    return "-"


@app.command()
def jobs(
    project: ProjectOpt = Path("."),
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many of the newest.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Background jobs (retrains), newest first, and the retrain policy's state."""
    p = _open(project)
    rows = p.jobs(limit)
    _, policy = p.retrain_policy()
    if as_json:
        _print_json({"jobs": rows, "policy": policy})
        return
    t = _Table(title="jobs")
    for col in ("job", "kind", "trigger", "status", "tries"):
        t.add_column(col, key=True)
    t.add_column("created", optional=True)
    t.add_column("worker", optional=True)
    for col in ("took", "outcome"):
        t.add_column(col)
    for j in rows:
        took = "-"
        if j["started_at"] and j["finished_at"]:
            start = datetime.fromisoformat(j["started_at"])
            took = f"{(datetime.fromisoformat(j['finished_at']) - start).total_seconds():.1f}s"
        t.add_row(
            j["job_id"][:8],
            j["kind"],
            j["trigger"],
            j["status"],
            str(j["attempts"]),
            j["created_at"][:19].replace("T", " "),
            j["owner"] or "-",
            took,
            _job_outcome(j),
        )
    out.print(t)
    out.print(f"retrain policy: {policy['why']} ({policy['new_answers']} new answers)")


@app.command()
def worker(project: ProjectOpt = Path(".")) -> None:
    """Take jobs from the project's queue (retrains asked of any server, or queued by
    `flywheel retrain`) one at a time, without HTTP, until SIGINT or SIGTERM, which
    finish the running job first: a training machine on the project's database."""
    p = _open(project)
    from flywheel.serving.jobs import JobRunner

    runner = JobRunner(p, decide=False)
    runner.on_line = lambda line: err.print(
        f"[dim]{datetime.now():%H:%M:%S}[/] {line}", soft_wrap=True, highlight=False
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    err.print(f"worker {runner.owner} on {p.settings.project_dir}: taking jobs", soft_wrap=True)
    runner.start()
    while not stop.wait(1.0):
        pass
    err.print("stopping" + (": finishing the running job" if runner.current else ""))
    runner.shutdown()
    p.close()
    err.print("stopped")


@app.command()
def monitor(
    project: ProjectOpt = Path("."),
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many of the newest.")] = 20,
    update: Annotated[
        bool, typer.Option(help="Close the windows due first (a server's ticker does it).")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Drift and accuracy per window of production's calls: each drift test's score
    against its calibrated threshold, the alarm, the label-free accuracy estimate and the
    accuracy the window's answers show so far."""
    p = _open(project)
    # Closing windows decodes the reference rows and each window's inputs: seconds.
    with (
        err.status("closing the monitoring windows due…", spinner="dots")
        if update
        else nullcontext()
    ):
        m = p.monitoring(limit, update=update)
    if as_json:
        _print_json(m)
        return
    t = _Table(title=f"monitoring: windows of {m['window']} calls, alpha {m['alpha']:g}")
    for col in ("#", "model", "calls", "closed", "test: score / threshold", "alarm", "est.",
                "observed (n)"):  # fmt: skip
        t.add_column(col, overflow="fold")
    short = {"input_mmd": "inputs", "label_tv": "labels", "confidence_ks": "confidence",
             "value_ks": "values"}  # fmt: skip
    for w in m["windows"]:
        tests = (
            w["unavailable"] or "-"
            if not w["scores"]
            else "\n".join(
                f"{short.get(k, k)} {v:.3g}/{w['thresholds'][k]:.3g}"
                for k, v in w["scores"].items()
            )
        )
        est, obs = w["estimated_accuracy"], w["observed_accuracy"]
        t.add_row(
            str(w["window"]),
            f"v{w['model_version']}",
            str(w["calls"]),
            w["last_at"][5:16].replace("T", " "),
            tests,
            "[red]yes[/]" if w["alarm"] else "no",
            "-" if est is None else f"{est:.3f}",
            "-" if obs is None else f"{obs:.3f} ({w['answered']})",
        )
    out.print(t)
    if not m["windows"]:
        out.print(f"no window yet: one closes after {m['window']} calls of the production model")
    if m["reference"] and m["reference"]["unavailable"]:
        out.print(m["reference"]["unavailable"])


@app.command()
def webhooks(
    project: ProjectOpt = Path("."),
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many of the newest.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Webhook deliveries, newest first: event, where to, status, attempts, last error."""
    rows = _open(project).webhook_deliveries(limit)
    if as_json:
        _print_json(rows)
        return
    t = _Table(title="webhook deliveries")
    for col in ("delivery", "event", "url", "status", "attempts", "last"):
        t.add_column(col)
    for d in rows:
        last = d["last_error"] or ("-" if d["last_status"] is None else str(d["last_status"]))
        t.add_row(d["id"][:8], d["event"], d["url"], d["status"], str(d["attempts"]), last[:60])
    out.print(t)


@app.command()
def promote(
    version: Annotated[int, typer.Argument(help="Model version to put in production.")],
    project: ProjectOpt = Path("."),
) -> None:
    """Point the production alias at VERSION (a running server picks it up)."""
    opened = _open(project)
    info = opened.promote(version)
    out.print(f"production → v{info.version}")
    _tell_ray_serve(opened)


@app.command()
def rollback(project: ProjectOpt = Path(".")) -> None:
    """Point production back at the version it held before."""
    opened = _open(project)
    old, new = opened.rollback()
    out.print(f"production: v{old} → v{new}")
    _tell_ray_serve(opened)


def _tell_ray_serve(opened: Project) -> None:
    """With ray_address naming a cluster, `serve --on ray`'s replicas reconfigured at once
    (they see the move within reload_interval_s in any case)."""
    if opened.settings.ray_address in (None, "local"):
        return
    from flywheel.scale.serve import tell_replicas

    if tell_replicas(opened):
        err.print("Ray Serve: its replicas reconfigure to it in place")


@app.command()
def serve(
    project: ProjectOpt = Path("."),
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (default 8000; setting port).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, max=64, help="Server processes (default 1).")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="Model backend: onnx (default) or torch.")
    ] = None,
    on: Annotated[
        str,
        typer.Option(
            "--on",
            help="uvicorn: this machine's processes (--workers); ray: Ray Serve, "
            "serve_replicas replicas of the app (needs ray_address).",
        ),
    ] = "uvicorn",
) -> None:
    """Serve the HTTP API and the dashboard (at /; OpenAPI docs at /docs). SIGTERM or
    Ctrl-C drains requests in flight and commits every logged prediction before exit."""
    if on not in ("uvicorn", "ray"):
        raise typer.BadParameter(f"must be 'uvicorn' or 'ray'; got {on!r}", param_hint="--on")
    if on == "ray" and workers is not None:
        raise typer.BadParameter(
            "--workers is for --on uvicorn; on Ray Serve set serve_replicas", param_hint="--workers"
        )
    given = {"host": host, "port": port, "workers": workers, "serving_backend": backend}
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = Settings.load(project, **overrides)
    n, unit = (settings.serve_replicas, "replica") if on == "ray" else (settings.workers, "worker")
    err.print(
        f"starting {settings.project_dir} on {settings.host}:{settings.port} "
        f"({n} {unit}{'s' if n > 1 else ''}{' on Ray Serve' if on == 'ray' else ''}) ...",
        soft_wrap=True,
        highlight=False,
    )
    _heavy()
    if on == "ray":
        from flywheel.scale.serve import serve_on_ray

        serve_on_ray(settings)  # says "ready on http://..." once every replica answers
        return
    from flywheel.serving import serve as run_server

    run_server(settings)  # binds first; says "ready on http://..." once it answers


@keys_app.command("create")
def keys_create(
    scope: Annotated[
        list[str], typer.Option("--scope", help=f"One of {', '.join(SCOPES)}; repeatable.")
    ],
    name: Annotated[str, typer.Option(help="A name to recognise the key by.")] = "",
    expires_days: Annotated[
        float | None,
        typer.Option(
            "--expires-days", min=0.001, max=36500, help="Refuse the key after this many days."
        ),
    ] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Create an API key. It is shown once; only its hash is stored."""
    expires = None if expires_days is None else timedelta(days=expires_days)
    key, info = _open(project).create_key(scope, name, expires_in=expires)
    if as_json:
        _print_json({"key": key, **info})
        return
    until = f", expires {info['expires_at']}" if info["expires_at"] else ""
    out.print(f"key [bold]{info['name']}[/] with scopes {', '.join(info['scopes'])}{until}:")
    out.print(key, soft_wrap=True, highlight=False)
    err.print("[yellow]Store it now: it cannot be shown again.[/]")


@keys_app.command("list")
def keys_list(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List API keys (never the keys themselves)."""
    keys = _open(project).list_keys()
    if as_json:
        _print_json(keys)
        return
    t = _Table(title="API keys")
    for col in ("id", "name", "prefix", "scopes", "created", "expires", "status"):
        t.add_column(col)
    for k in keys:
        t.add_row(
            str(k["id"]),
            k["name"],
            k["prefix"],
            ",".join(k["scopes"]),
            k["created_at"][:19],
            (k["expires_at"] or "never")[:19],
            k["status"],
        )
    out.print(t)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key's id, prefix or name (see `keys list`).")],
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Revoke an API key: refused from the next request on, its dashboard sessions end."""
    info = _open(project).revoke_key(key)
    if as_json:
        _print_json(info)
        return
    out.print(f"key [bold]{info['name']}[/] ({info['prefix']}) revoked at {info['revoked_at']}")


@app.command()
def export(
    version: Annotated[int, typer.Argument(help="Model version to export.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the bundle to (new).")],
    fmt: Annotated[str, typer.Option("--format", help="Only 'onnx' for now.")] = "onnx",
    quantize: Annotated[
        str | None,
        typer.Option(
            help="'int8': dynamic quantisation with ONNX Runtime; 'int8-static': static "
            "(weights and activations), calibrated on rows of the train split."
        ),
    ] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Export a version as a self-contained ONNX bundle (model, spec, labels, preprocessing)."""
    if fmt != "onnx":
        raise typer.BadParameter(f"format must be 'onnx'; got {fmt!r}", param_hint="--format")
    try:
        from flywheel.export.onnx import check_quantize

        check_quantize(quantize, option=True)
    except ModelError as exc:
        raise typer.BadParameter(str(exc), param_hint="--quantize") from None
    p = _open(project)
    with err.status(f"exporting v{version} to ONNX and checking it against PyTorch ..."):
        manifest = p.export(version, out_dir, quantize=quantize)
    if as_json:
        _print_json(manifest)
        return
    p = manifest["parity"]
    calibrated = (
        f", calibrated on {manifest['calibration_rows']} train rows"
        if "calibration_rows" in manifest
        else ""
    )
    out.print(
        f"v{version} → {manifest['folder']}/{manifest['model']} ({manifest['bytes'] / 1e3:.0f} kB, "
        f"opset {manifest['opset']}{calibrated}); against torch on {p['n']} held-out rows: "
        f"max |diff| {p['max_abs_diff']:.2e}, arg-max agreement {p['argmax_agreement']:.4f}"
    )


class _RowsBar:
    """predict-batch's progress: rows done of all, rows/s, bad rows so far."""

    def __init__(self, quiet: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]scoring[/]"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} rows"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[bad]}"),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err,
            disable=quiet,
            transient=True,
        )
        self.task = self.progress.add_task("scoring", total=None, rate="", bad="")
        self.started = time.monotonic()

    def __enter__(self) -> _RowsBar:
        self.progress.__enter__()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def __call__(self, done: int, bad: int, total: int) -> None:
        rate = done / max(time.monotonic() - self.started, 1e-9)
        self.progress.update(
            self.task, completed=done, total=total, rate=f"{rate:,.0f} rows/s",
            bad=f"[yellow]{bad} bad[/]" if bad else "",
        )  # fmt: skip


@app.command("predict-batch")
def predict_batch(
    path: Annotated[
        Path,
        typer.Argument(
            help="A folder of inputs (searched recursively) or a manifest (.csv, .jsonl) of "
            "file paths, texts or feature columns."
        ),
    ],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Write the answers (and the bad rows) to this .jsonl or .csv."),
    ] = None,
    on: Annotated[
        str | None,
        typer.Option(
            "--on",
            help="'ray': Ray Data on the cluster of ray_address; 'local': this process "
            "(default: ray when ray_address is set).",
        ),
    ] = None,
    batch_size: Annotated[
        int | None, _topt("predict_batch_size", "Inputs scored together.", min=1)
    ] = None,
    actors: Annotated[
        int | None, _topt("batch_actors", "Ray actors, each holding the model.", min=1)
    ] = None,
    path_column: PathColOpt = "path",
    text_column: TextColOpt = "text",
    id_column: Annotated[
        str, typer.Option(help="Manifest: the column naming each row in the output.")
    ] = "id",
    encoding: EncodingOpt = "utf-8",
    user: Annotated[
        str | None, typer.Option("--user", help="The end user the predictions are for.")
    ] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Score a folder or manifest with production; every row is logged as a served call
    is (the review queue and the drift windows see it), bad rows are reported and skipped."""
    if on not in (None, "ray", "local"):
        raise typer.BadParameter(f"must be 'ray' or 'local'; got {on!r}", param_hint="--on")
    p = _open(project)
    from flywheel.data import InputOptions

    options = InputOptions(path_column, text_column, id_column, encoding)
    with _RowsBar(quiet=as_json) as bar:
        report = p.predict_batch(
            path, on=on, out=out_file, options=options, user_id=user, batch_size=batch_size,
            actors=actors, on_progress=bar,
        )  # fmt: skip
    if as_json:
        _print_json(report.to_json())
        return
    where = f"on Ray, {report.actors} actors" if report.on == "ray" else "in process"
    out.print(
        f"v{report.version}: [bold]{report.scored}[/] of {report.rows} inputs scored and logged "
        f"in {report.seconds:.1f} s ({report.rows_per_s:,.0f} rows/s, {where})"
        + (f"; answers in {report.out}" if report.out else "")
    )
    if report.bad:
        err.print(f"[yellow]{report.bad} bad input(s) skipped[/]" + (
            f" (each in {report.out.name} with its reason)" if report.out else ""
        ))  # fmt: skip
        for name, reason in report.examples[:10]:
            err.print(f"  {name}: {reason}", soft_wrap=True)


def _split(text: str | None, option: str, kind: type = str) -> list[Any] | None:
    """A comma-separated option's values (``kind``: str or float); None when not given."""
    if text is None:
        return None
    values = [v.strip() for v in text.split(",") if v.strip()]
    try:
        return [kind(v) for v in values]
    except ValueError:
        raise typer.BadParameter(f"not a list of numbers: {text!r}", param_hint=option) from None


@app.command("import-model")
def import_model(
    model: Annotated[
        Path, typer.Argument(help="The ONNX file: one input; (N, classes) or (N,) out.")
    ],
    labels: Annotated[
        str | None,
        typer.Option(help="A classifier's labels in the order of its outputs: a,b,c."),
    ] = None,
    labels_file: Annotated[
        Path | None, typer.Option(help="A classifier's labels, one per line.")
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(
            help="classification or regression \\[default: the project's].", show_default=False
        ),
    ] = None,
    outputs: Annotated[
        str | None,
        typer.Option(
            help="A classifier's output: logits or probabilities \\[default: detected].",
            show_default=False,
        ),
    ] = None,
    image_mode: Annotated[
        str | None,
        typer.Option(help="Images: L or RGB \\[default: the dataset's].", show_default=False),
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            min=4,
            max=1024,
            help="Images: the side it reads \\[default: the dataset's size].",
            show_default=False,
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(help="Tabular: the columns in the order it reads them (with --mean, --std)."),
    ] = None,
    mean: Annotated[
        str | None, typer.Option(help="Tabular: each column's mean it subtracts: 0.1,2,...")
    ] = None,
    std: Annotated[
        str | None, typer.Option(help="Tabular: each column's std it divides by: 1,0.5,...")
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help="The challenger retrains train (zoo or plugin); becomes the setting arch "
            "\\[default: the setting arch, or the task's].",
            show_default=False,
        ),
    ] = None,
    promote: Annotated[
        bool,
        typer.Option(
            "--promote",
            help="Make it production now (without: production only if there is none, else "
            "the candidate).",
        ),
    ] = False,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Serve an ONNX classifier or regressor trained elsewhere as a version: checked,
    test-run on the project's held-out rows, stored with its SHA-256; retrains gate their
    challengers against it."""
    if labels is not None and labels_file is not None:
        raise typer.BadParameter("give --labels or --labels-file, not both", param_hint="--labels")
    names = _split(labels, "--labels")
    if labels_file is not None:
        names = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
    p = _open(project)
    with err.status(f"checking {model.name} and test-running it on the held-out rows ..."):
        result = p.import_model(
            model, labels=names, objective=objective, outputs=outputs, image_mode=image_mode,
            image_size=image_size, columns=_split(columns, "--columns"),
            mean=_split(mean, "--mean", float), std=_split(std, "--std", float), arch=arch,
            promote=promote,
        )  # fmt: skip
    if as_json:
        _print_json(result.to_json())
        return
    r = result.to_json()
    where = "production" if result.promoted else "the candidate (promote it: flywheel promote)"
    kind = r["outputs"] + (", detected" if r["outputs_detected"] else "")
    out.print(
        f"v{r['model_version']} imported from {model.name} ({kind}; SHA-256 "
        f"{r['graph']['sha256'][:12]}…): {_score(r['metrics'])} on "
        f"{r['metrics']['import_check_rows']} held-out rows; it is {where}. Retrains train "
        f"[bold]{r['challenger_arch']}[/] as the challenger and gate it against it."
    )


@app.command()
def review(
    project: ProjectOpt = Path("."),
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many items.")] = 20,
    strategy: Annotated[
        str | None, typer.Option(help="margin (default), entropy, least_confidence, random.")
    ] = None,
    spread: Annotated[
        bool, typer.Option("--spread", help="Spread picks across classes and near-duplicates.")
    ] = False,
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            help="Who will answer: a new user gets golden probes early, a known one second "
            "opinions on inputs another user answered alone.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The unanswered predictions most worth a user's answer, and why each was picked."""
    items = _open(project).review_queue(limit=limit, strategy=strategy, spread=spread, user_id=user)
    if as_json:
        _print_json(items)
        return
    t = _Table(title="review queue")
    t.add_column("prediction", key=True)
    for col in ("top guesses", "why"):
        t.add_column(col)
    for i in items:
        guesses = ", ".join(f"{lab} {p:.2f}" for lab, p in i["top"])
        t.add_row(i["prediction_id"], guesses, i["reason"])
    out.print(t)


@users_app.callback(invoke_without_command=True)
def users_list(
    ctx: typer.Context, project: ProjectOpt = Path("."), as_json: JsonOpt = False
) -> None:
    """List users with trust (and the counts behind it), contributions and quarantine."""
    if ctx.invoked_subcommand is not None:
        return
    users = _open(project).users()
    if as_json:
        _print_json(users)
        return
    t = _Table(title="users")
    for col in (
        "user",
        "trust",
        "answers",
        "rows used",
        "golden",
        "agreed w/ others",
        "agreed w/ model",
        "quarantine",
    ):
        t.add_column(col)
    for u in users:
        d = u["trust_detail"] or {}
        t.add_row(
            u["user_id"],
            "-" if u["trust"] is None else f"{u['trust']:.2f}",
            str(u["answers"]),
            str(u["rows_used"]),
            f"{d.get('golden_correct', 0)}/{d.get('golden_seen', 0)}",
            f"{d.get('agreed_with_others', 0)}/{d.get('compared_with_others', 0)}",
            f"{d.get('agreed_with_model', 0)}/{d.get('compared_with_model', 0)}",
            u["quarantine_reason"] if u["quarantined"] else "",
        )
    out.print(t)


@users_app.command("quarantine")
def users_quarantine(
    user: Annotated[str, typer.Argument(help="The user id.")],
    reason: Annotated[str, typer.Option(help="Why.")] = "quarantined by an admin",
    project: ProjectOpt = Path("."),
) -> None:
    """Hold a user's feedback back from training (kept, listed, reversible)."""
    _open(project).quarantine(user, reason)
    out.print(f"{user} quarantined: {reason}")


@users_app.command("release")
def users_release(
    user: Annotated[str, typer.Argument(help="The user id.")], project: ProjectOpt = Path(".")
) -> None:
    """Release a user; their held-back feedback is used by the next retrain."""
    _open(project).release(user)
    out.print(f"{user} released")


@privacy_app.command("ledger")
def privacy_ledger(
    user: Annotated[str | None, typer.Argument(help="One user (raw id or pseudonym).")] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Each user's ε and δ spent across private runs, against the budget."""
    rows = _open(project).privacy_ledger(user)
    if as_json:
        _print_json(rows if user is None else rows[0])
        return
    t = _Table(title="privacy ledger (user-level ε, basic composition across runs)")
    for col in ("user", "ε spent", "δ spent", "budget ε", "remaining", "runs (versions)"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["user_id"],
            f"{r['epsilon']:.3f}",
            f"{r['delta']:.1e}",
            f"{r['budget']:g}",
            f"{r['remaining']:.3f}",
            ", ".join(f"v{x['model_version']}" for x in r["runs"]) or "-",
        )
    out.print(t)


@privacy_app.command("rotate-key")
def privacy_rotate_key(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Add a key to the user-id hash chain and re-key every stored user (stop servers first)."""
    detail = _open(project).rotate_user_key()
    if as_json:
        _print_json(detail)
        return
    out.print(
        f"re-keyed {detail['users']} users; the chain holds {detail['keys']} keys "
        f"(fingerprint {detail['fingerprint_after'][:12]})"
    )


@privacy_app.command("retention")
def privacy_retention(
    days: Annotated[
        float | None,
        typer.Option(min=0.0, help="Delete raw inputs older than this (default: the setting)."),
    ] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Delete stored inputs of predictions older than the retention age."""
    detail = _open(project).apply_retention(days)
    if as_json:
        _print_json(detail)
        return
    out.print(
        f"retention {detail['days']:g} days: {detail['inputs_deleted']} inputs deleted "
        f"({detail['predictions']} predictions before {detail['cutoff']}); "
        f"{detail['kept_for_training']} kept (training rows use them)"
    )


@privacy_app.command("audit")
def privacy_audit(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """What forget, key rotation and retention did."""
    rows = _open(project).audit_log()
    if as_json:
        _print_json(rows)
        return
    t = _Table(title="audit log")
    for col in ("id", "at", "action", "subject", "summary"):
        t.add_column(col)
    for r in rows:
        d = r["detail"]
        summary = ", ".join(
            f"{k} {v}"
            for k, v in d.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        )
        if r["action"] == "forget":
            summary = (
                f"erased {d['erased']}; versions withdrawn {d['versions_affected']}; "
                f"production v{d['production_before']} → v{d['production_after']}"
            )
        t.add_row(
            str(r["id"]), r["created_at"][:19], r["action"], (r["subject"] or "")[:12], summary
        )
    out.print(t)


@app.command()
def explain(
    prediction: Annotated[str, typer.Argument(help="A logged prediction's id.")],
    target: Annotated[
        str | None, typer.Option(help="A label to explain (default: the answer).")
    ] = None,
    png: Annotated[
        Path | None, typer.Option(help="Write the overlay (images, audio) to this PNG file.")
    ] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Why the model answered what it did (Captum): attributions, and the overlay."""
    p = _open(project)
    ex = p.explain(prediction, target)
    if png is not None:
        png.write_bytes(p.explanation_png(prediction, target))
    if as_json:
        _print_json(ex)
        return
    out.print(f"v{ex['model_version']} · {ex['method']} · target {ex['target']!r}")
    if "map" in ex:
        heat = ex["map"]
        rows = len(heat)
        cells = [v for row in heat for v in row]
        top = sum(sorted(cells, reverse=True)[: max(1, len(cells) // 10)])
        out.print(
            f"map {rows}x{len(heat[0])}: the top 10% of cells hold "
            f"{top / max(sum(cells), 1e-12):.0%} of the attribution"
        )
    if ex.get("items"):
        t = _Table(title="attribution")
        t.add_column("token / feature")
        t.add_column("score", justify="right")
        for item in sorted(ex["items"], key=lambda i: -abs(i["score"]))[:20]:
            t.add_row(item["name"], f"{item['score']:+.4f}")
        out.print(t)
    if png is not None:
        out.print(f"overlay written to {png}")


@app.command()
def forget(
    user: Annotated[str, typer.Argument(help="The user (raw id or the listed pseudonym).")],
    retrain: Annotated[
        bool, typer.Option("--retrain/--no-retrain", help="Retrain production without them.")
    ] = True,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Forget a user: erase their rows and inputs, withdraw every model trained on them,
    retrain production without them (right to erasure). Cannot be undone."""
    p = _open(project)
    if not yes and not typer.confirm(f"Erase everything of user {user!r}? This cannot be undone"):
        raise typer.Exit(1)
    with _EpochBar(quiet=as_json) as bar:
        d = p.forget(user, retrain=retrain, on_epoch=bar)
    if as_json:
        _print_json(d)
        return
    e = d["erased"]
    out.print(
        f"forgot {user} (audit #{d['audit_id']}, subject {d['subject'][:12]}): "
        f"{e['predictions']} predictions, {e['feedback']} feedback, {e['examples']} examples, "
        f"{d['blobs_deleted']} inputs deleted ({d['inputs_kept_shared']} kept: other users "
        "sent the same bytes)"
    )
    t = _Table(title="what was trained on their rows")
    t.add_column("item")
    t.add_column("value")
    t.add_row("dataset versions marked", ", ".join(map(str, d["dataset_versions_marked"])) or "-")
    t.add_row("new dataset version", str(d["dataset_version_new"] or "-"))
    t.add_row("versions withdrawn", ", ".join(f"v{v}" for v in d["versions_affected"]) or "-")
    r = d.get("retrain")
    if r:
        t.add_row("retrained", f"v{r['version']} in {r['seconds']:.1f} s; gate: {r['gate']}")
    prod = d["production_after"]
    t.add_row(
        "production", f"v{d['production_before']} → " + (f"v{prod}" if prod else "[red]none[/]")
    )
    out.print(t)


@app.command()
def demo(
    cycles: Annotated[int, typer.Option(min=1, max=20, help="Feedback → retrain cycles.")] = 3,
    keep: Annotated[
        Path | None, typer.Option(help="Make the demo project here (default: a temp folder).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs of each training.")] = 30,
    seed: Annotated[
        int,
        typer.Option(help="Seed of the data, the users and the training: same seed, same table."),
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """The whole loop on the built-in digits, over HTTP, with simulated users."""
    table = _Table(title="flywheel demo: digits")
    for col in (
        "cycle",
        "calls",
        "feedback",
        "dataset",
        "model",
        "accuracy",
        "champion",
        "promoted",
    ):
        table.add_column(col, justify="right")

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if as_json:
            return
        if kind == "init":
            err.print(
                f"project {data['project_dir']}: {data['labelled']} labelled images, "
                f"{data['holdout']} held out, {data['pool']} unlabelled for the users"
            )
        elif kind == "traffic":
            err.print(
                f"cycle {data['cycle']}: {data['predictions']} predictions, "
                f"{data['feedback']} answers; retraining…"
            )
        elif kind == "cycle":
            champ = data["champion_accuracy"]
            table.add_row(
                str(data["cycle"]),
                str(data["predictions"]),
                str(data["feedback_used"]),
                str(data["dataset_version"]),
                f"v{data['model_version']}",
                f"{data['accuracy']:.4f}",
                "-" if champ is None else f"{champ:.4f}",
                "[green]yes[/]" if data["promoted"] else "[red]no[/]",
            )
            err.print(
                f"cycle {data['cycle']}: v{data['model_version']} held-out accuracy "
                f"{data['accuracy']:.4f}, promoted: {'yes' if data['promoted'] else 'no'}"
            )

    _heavy()
    from flywheel.demo import DemoConfig, run_demo

    result = run_demo(
        DemoConfig(cycles=cycles, epochs=epochs, seed=seed), project_dir=keep, on_event=on_event
    )
    if as_json:
        _print_json(result.to_json())
    else:
        out.print(table)


def _fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, never wrapped (a script greps it, a person reads it whole)."""
    err.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    raise SystemExit(code)


def main() -> None:
    """The console script: every error a user can cause is one line and exit code 1
    (usage errors, with the command's --help to see; flywheel's own errors; a file or
    folder that cannot be read or written); Ctrl-C is exit code 130."""
    # Everything the CLI and its server create is its user's alone: the database, users'
    # inputs, the models, the user-id key chain, the logs (0600 files, 0700 folders).
    os.umask(0o077)
    try:
        code = app(standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # a bare command (flywheel, flywheel keys): its help
        raise SystemExit(2) from None
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "flywheel"
        message = exc.format_message()
        first = message.find("Did you mean")
        if first >= 0 and message.find("Did you mean", first + 1) > first:
            message = message[: message.rfind("(Did you mean")].rstrip()  # typer's and click's
        _fail(f"{message} (see: {where} --help)")
    except click.ClickException as exc:
        _fail(exc.format_message())
    except FlywheelError as exc:
        _fail(str(exc))
    except (click.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except OSError as exc:  # a path the user gave: missing, unreadable, a disk full
        name = f" {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{name}")
    if isinstance(code, int) and code:
        raise SystemExit(code)

"""One ``Settings`` object, built once and passed explicitly.

Sources, highest priority first: keyword arguments, ``FLYWHEEL_*`` environment
variables, ``<project_dir>/flywheel.toml``, defaults.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fsspec.registry import known_implementations
from fsspec.registry import registry as fsspec_registry
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from flywheel.errors import ConfigError, ProjectError, did_you_mean
from flywheel.tasks import TASKS

__all__ = [
    "CONFIG_FILE",
    "EVENTS",
    "Settings",
    "Webhook",
    "check_storage_url",
    "config_text",
    "is_loopback",
    "keep_private",
    "new_project_folder",
    "set_config_value",
]

CONFIG_FILE = "flywheel.toml"


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: every event a hook may ask for ("*": all of them)
EVENTS = (
    "retrain.queued",
    "retrain.finished",
    "gate.decision",
    "model.promoted",
    "model.rolled_back",
    "user.forgotten",
    "drift.alarm",
)


class Webhook(BaseModel):
    """One ``[[webhooks]]`` table of ``flywheel.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="Where deliveries are POSTed (http or https).")
    events: list[str] = Field(default_factory=lambda: ["*"], description="Events, or '*'.")
    secret: str = Field(min_length=16, description="The HMAC-SHA256 key (16+ characters).")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook url {v!r} is not an http(s) URL with a host")
        if parts.username or parts.password:
            raise ValueError(f"webhook url {v!r} carries credentials: use the secret instead")
        return v

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - {*EVENTS, "*"})
        if unknown or not v:
            raise ValueError(f"webhook events {unknown or v} unknown; choose from {list(EVENTS)}")
        return v

    def wants(self, event: str) -> bool:
        return "*" in self.events or event in self.events


class Settings(BaseSettings):
    """Everything flywheel can be told; see README "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="forbid", frozen=True)

    project_dir: Path = Field(default_factory=Path.cwd, description="The project folder.")
    task: str = Field(
        default="image-classification",
        description="image-classification, audio-classification, text-classification, regression",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: SQLite file flywheel.db in the project folder.",
    )
    blob_dir: Path | None = Field(
        default=None, description="Content-addressed blob folder; default: <project>/blobs."
    )
    host: str = Field(default="127.0.0.1", description="Address the server binds to.")
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above)."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the server answers to besides its bind address (and, bound "
        "to loopback or a wildcard, the loopback names); '*.example.com' matches subdomains, "
        "'*' any. Any other Host header is refused (421): DNS rebinding.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins (scheme://host[:port]) whose web pages may call the API; "
        "empty: none, and a request another site's page sends is refused (403).",
    )
    webhooks: list[Webhook] = Field(
        default_factory=list,
        description="[[webhooks]] tables: url, events (or '*'), secret; each event POSTed "
        "signed (HMAC-SHA256), retried with backoff, every delivery on record.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Let webhooks reach loopback, private and link-local addresses (refused "
        "by default: the server would make requests into its own network).",
    )
    auth_failures_per_minute: int = Field(
        default=10,
        ge=1,
        le=1_000_000,
        description="Failed authentications an address may make in a minute before its key "
        "checks get 429 (per server process).",
    )
    access_log: str = Field(
        default="stderr",
        min_length=1,
        description="Where the access log (JSON lines) goes: stderr, off, or a file "
        "(relative to the project).",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="A connection must send a request's line and headers within this long "
        "(of opening, or of its last answer), or it is closed.",
    )
    body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="A request's body must arrive within this long of its headers (408).",
    )
    keep_alive_s: int = Field(
        default=5, ge=1, le=3600, description="An idle keep-alive connection is closed after this."
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Open connections and requests in flight per server process beyond "
        "which new requests get 503.",
    )
    open_predict: bool = Field(
        default=True, description="On a loopback address, allow /v1/predict without a key."
    )
    open_feedback: bool = Field(
        default=True, description="On a loopback address, allow /v1/feedback without a key."
    )
    gate_margin: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="A challenger may trail the champion's held-out accuracy by at most this.",
    )
    gate_class_margin: float | None = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="No class may lose more recall than this against the champion (None: off).",
    )
    retrain_min_feedback: int | None = Field(
        default=None,
        ge=1,
        description="A server retrains by itself once this many new answers arrived since "
        "the last retrain (None: off).",
    )
    retrain_interval_s: float | None = Field(
        default=None,
        gt=0,
        description="A server retrains by itself this long after the last retrain, when "
        "there are new answers (None: off).",
    )
    retrain_cooldown_s: float = Field(
        default=300.0,
        ge=0,
        description="No retrain starts by itself within this long of the last one.",
    )
    retrain_on_drift: bool = Field(
        default=False,
        description="A server retrains by itself after a drift alarm, once "
        "drift_min_feedback new answers have arrived since the last retrain.",
    )
    drift_min_feedback: int = Field(
        default=20,
        ge=1,
        description="New answers a drift-triggered retrain waits for (it learns from them).",
    )
    drift_window: int = Field(
        default=200,
        ge=20,
        le=100_000,
        description="Calls of the production model per monitoring window (drift is judged "
        "per window, never on one call).",
    )
    drift_window_s: float | None = Field(
        default=None,
        gt=0,
        description="Also close a window this long after its first call, if it has at least "
        "drift_min_window calls (None: windows close on drift_window calls only).",
    )
    drift_min_window: int = Field(
        default=50,
        ge=10,
        description="The fewest calls a window closed on time is judged on.",
    )
    drift_alpha: float = Field(
        default=0.01,
        gt=0.0,
        lt=0.5,
        description="False alarms allowed per window on a stream without a shift: each of "
        "the window's tests alarms above its (1 - drift_alpha / tests) quantile on "
        "reference windows drawn from the project's rows.",
    )
    policy_check_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="How often a server checks the retrain policy and shows its jobs alive.",
    )
    job_lease_s: float = Field(
        default=60.0,
        gt=0,
        description="A running job's worker shows a sign of life every policy_check_s; one "
        "silent for 3x this is taken as dead, and its job queued again (job_attempts).",
    )
    gate_alpha: float = Field(
        default=0.05,
        gt=0.0,
        lt=0.5,
        description="The gate's level: its intervals are 1 - alpha, and a class fails only on a "
        "drop significant at alpha after Holm's correction.",
    )
    gate_inconclusive: str = Field(
        default="promote",
        pattern="^(promote|hold)$",
        description="When the held-out rows cannot tell whether the challenger trails the "
        "champion by more than the margin: promote it (it has seen more data) or hold the "
        "champion.",
    )
    eval_share: float = Field(
        default=0.15,
        ge=0.0,
        le=0.5,
        description="Share of each label's curated, trusted answers set aside as an "
        "evaluation split that no training sees; the gate scores on it and the held-out "
        "split (0: none).",
    )
    eval_min_trust: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="The trust an answer needs to enter the evaluation split (a user nobody "
        "could check yet has 0.67). Regression answers carry no trust estimate: all qualify.",
    )
    gate_reference: str = Field(
        default="auto",
        pattern="^(auto|off)$",
        description=(
            "auto: with naive curation, also train a reference on the same rows weighted by "
            "user trust, and refuse a challenger that trails it (poisoned feedback); off: never."
        ),
    )
    gate_reference_margin: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="How far the challenger may trail the trust-weighted reference, overall or "
        "on any class, before the gate refuses it as poisoned.",
    )
    # Learning from users (review queue, trust, curation).
    curation: str = Field(
        default="trust",
        pattern="^(trust|naive)$",
        description="trust: weigh, cap and quarantine by user trust; naive: every answer equal.",
    )
    review_strategy: str = Field(
        default="margin", pattern="^(margin|entropy|least_confidence|random)$"
    )
    review_window: int = Field(
        default=5000, ge=1, description="How many recent predictions the queue ranks."
    )
    golden_share: float = Field(
        default=0.1, ge=0.0, le=0.5, description="Share of queue items that are golden probes."
    )
    golden_early: int = Field(
        default=5,
        ge=0,
        description="Golden probes a new user answers early: until then up to half of their "
        "queue items are probes (a lone liar is told apart before their answers count).",
    )
    second_opinion_share: float = Field(
        default=0.2,
        ge=0.0,
        le=0.5,
        description="Share of a named user's queue items that ask again about an input one "
        "other user answered alone, so that answers overlap.",
    )
    quarantine_below: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Quarantine users whose trust falls below this."
    )
    quarantine_min_answers: int = Field(
        default=5, ge=1, description="Answers a user must have given before quarantine applies."
    )
    max_user_share: float = Field(
        default=0.25, gt=0.0, le=1.0, description="Cap on one user's share of a retrain's new rows."
    )
    refuse_on_contribution: bool = Field(
        default=False,
        description="Refuse a challenger whose new rows come mostly from brand-new users.",
    )
    max_new_user_share: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Share of new rows from first-time users flagged."
    )
    max_value_z: float = Field(
        default=10.0,
        gt=0,
        description="Regression: a true value sent as feedback more than this many standard "
        "deviations from the training targets' mean is refused (one typo or lie that far "
        "out would dominate the next model's squared error).",
    )
    label_issue_mode: str = Field(
        default="exclude",
        pattern="^(keep|exclude|down-weight)$",
        description="What training does with rows `flywheel data issues` flagged.",
    )
    onnx_check: bool = Field(
        default=True,
        description="Export every challenger to ONNX and refuse it if the graph does not "
        "match torch (skipped without onnxruntime).",
    )
    auto_promote: bool = Field(
        default=True, description="Promote a challenger that passes the gate after a retrain."
    )
    reload_interval_s: float = Field(
        default=1.0, gt=0, description="How often the server checks the production alias."
    )
    scrub_pii: bool = Field(
        default=True,
        description="Text tasks: e-mail addresses, phone and card numbers, IBANs, IP addresses "
        "and URLs in inputs become <ENTITY> before they are stored, trained on or predicted "
        "(Presidio's pattern recognizers, offline).",
    )
    strip_image_metadata: bool = Field(
        default=True,
        description="Image tasks: EXIF (camera, GPS, time), XMP, IPTC, comments and PNG text "
        "chunks are removed from inputs before they are stored; pixels are untouched.",
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        description="Delete stored inputs of predictions older than this many days (kept "
        "while training rows use them); checked hourly by the server and by "
        "`flywheel privacy retention`. None: keep them.",
    )
    user_key_file: Path | None = Field(
        default=None,
        description="The key chain user ids are hashed with (kept secret, mode 0600); "
        "default: <project>/user-keys.json. Rotate with `flywheel privacy rotate-key`.",
    )
    # Label Studio as the annotation front end (/label-studio; README "Label Studio").
    label_studio_url: str | None = Field(
        default=None,
        description="Label Studio's address, http(s)://host[:port][/prefix]: the one place "
        "task media given as URLs (/data/upload/..., or absolute on that host) and its "
        "predictions are fetched from, redirects included; None: inline (data:) media only.",
    )
    label_studio_token: str | None = Field(
        default=None,
        description="The Label Studio API token media are fetched with: a legacy token "
        "(sent as 'Token <key>') or a personal access token (a JWT, exchanged for an access "
        "token); set it as FLYWHEEL_LABEL_STUDIO_TOKEN to keep it out of flywheel.toml.",
    )
    label_studio_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Longest wait for one fetch from Label Studio."
    )
    # Serving: backend, micro-batching, the prediction log, workers.
    model_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="The model's name in the Open Inference Protocol (/v2/models/NAME); "
        "default: the project folder's name.",
    )
    serving_backend: str = Field(
        default="onnx",
        pattern="^(onnx|torch)$",
        description="onnx: ONNX Runtime (falls back to torch where a model does not export); "
        "torch: eager PyTorch.",
    )
    serving_threads: int = Field(
        default=1, ge=1, le=64, description="Threads ONNX Runtime uses per forward pass."
    )
    max_batch_size: int = Field(
        default=32, ge=1, le=4096, description="Most concurrent requests run as one batch."
    )
    max_batch_wait_ms: float = Field(
        default=2.0,
        ge=0.0,
        le=1000.0,
        description="Longest a request waits for others to share its batch (none under light "
        "load).",
    )
    prediction_log: str = Field(
        default="durable",
        pattern="^(durable|fast)$",
        description="durable: each answer's log row is fsynced to <project>/journal before "
        "the answer leaves, so a crash loses none; fast: rows wait in memory for the "
        "writer, so a crash loses the last few milliseconds of predictions.",
    )
    log_queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Predictions waiting to be logged before new requests wait (back-pressure).",
    )
    log_batch_rows: int = Field(
        default=512, ge=1, description="Most prediction rows the log writer commits at once."
    )
    workers: int = Field(
        default=1, ge=1, le=64, description="Server processes (`flywheel serve --workers`)."
    )
    # Past one machine (README "Scale-out"): Ray, storage every machine reaches, the jobs.
    ray_address: str | None = Field(
        default=None,
        description="Ray: unset: none at all; 'local': an in-process Ray on this machine; "
        "'auto' (the cluster `ray start` joined this machine to) or 'ray://host:10001' (Ray "
        "Client) or 'host:port' (a head's GCS): an existing cluster.",
    )
    ray_num_cpus: int | None = Field(
        default=None,
        ge=1,
        description="CPUs an in-process Ray ('local') may use; default: all of this machine's.",
    )
    train_workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Ray Train workers for train and retrain (DDP over gloo, or NCCL on GPUs); "
        "more than 1 needs ray_address.",
    )
    train_use_gpu: bool = Field(
        default=False, description="Give each Ray Train worker a GPU (the cluster must have them)."
    )
    batch_actors: int = Field(
        default=2,
        ge=1,
        le=1024,
        description="Actors of `flywheel predict-batch` on Ray Data, each holding the production "
        "model (ONNX Runtime).",
    )
    # Not ``batch_size``: that is training's (below), and a second field of the same name
    # would replace this one silently.
    predict_batch_size: int = Field(
        default=256, ge=1, le=65536, description="Inputs scored together by `predict-batch`."
    )
    serve_replicas: int = Field(
        default=2,
        ge=1,
        le=1024,
        description="Replicas of the app on Ray Serve (`flywheel serve --on ray`).",
    )
    serve_replica_cpus: float = Field(
        default=1.0,
        ge=0,
        le=1024,
        description="CPUs Ray reserves for each Serve replica (fractions allowed; 0: none, "
        "replicas then go wherever Ray puts them).",
    )
    storage_url: str | None = Field(
        default=None,
        description="Where models, checkpoints and blobs live, as an fsspec URL every machine "
        "reaches (a shared folder path, file:///..., s3://bucket/prefix); default: the "
        "project folder.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options for storage_url's fsspec filesystem, e.g. for an S3-compatible "
        'server {"endpoint_url": "http://10.0.0.5:9000"} (credentials: better the '
        "environment's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).",
    )
    job_attempts: int = Field(
        default=2,
        ge=1,
        le=10,
        description="Tries a job gets: one whose worker died is queued again until it has "
        "been tried this often, then failed with the reason.",
    )
    # Differential privacy: on for every run (retrains too) when dp_epsilon is set.
    dp_epsilon: float | None = Field(
        default=None,
        gt=0,
        description="Train with user-level DP-SGD to this ε per run (Opacus, RDP accountant, "
        "Poisson sampling); None: not private.",
    )
    dp_delta: float = Field(default=1e-5, gt=0, lt=1, description="δ of each private run.")
    dp_max_grad_norm: float = Field(
        default=1.0, gt=0, description="Clipping norm of each user's gradient in DP-SGD."
    )
    dp_user_budget: float = Field(
        default=10.0,
        gt=0,
        description="Most ε a user may spend across private runs; a user over it is left out.",
    )
    # Training defaults; `flywheel train` options override them per run.
    arch: str | None = Field(default=None, description="Architecture; default: the task's.")
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    dropout: float = Field(default=0.25, ge=0, lt=1)
    patience: int = Field(default=5, ge=1)
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    seed: int = 0
    warm_start: bool = Field(
        default=True, description="Retrain from the production version's weights."
    )
    lr_schedule: str = Field(default="none", pattern="^(none|cosine|plateau)$")
    augment: bool = Field(default=False, description="Augment training batches (images, audio).")
    refit: bool = Field(
        default=True,
        description="After early stopping has chosen the epoch count, train again on training "
        "+ validation rows for that many epochs (not for private or federated runs).",
    )
    image_size: int | None = Field(
        default=None, ge=4, le=1024, description="Images: side to resize to; default: the arch's."
    )
    finetune_layers: int = Field(
        default=0, ge=0, le=12, description="Text: top encoder layers trained with the head."
    )

    @field_validator("task", mode="after")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in TASKS:
            raise ValueError(f"unknown task {v!r}; known: {', '.join(TASKS)}")
        return v

    @field_validator("gate_class_margin", mode="before")
    @classmethod
    def _off(cls, v: Any) -> Any:
        # TOML has no null: "off" in flywheel.toml (or FLYWHEEL_GATE_CLASS_MARGIN=off).
        if isinstance(v, str) and v.strip().lower() in ("off", "none"):
            return None
        return v

    @field_validator("allowed_hosts", mode="after")
    @classmethod
    def _host_names(cls, v: list[str]) -> list[str]:
        for name in v:
            bare = name.removeprefix("*.") if name != "*" else "x"
            if not re.fullmatch(r"[A-Za-z0-9.\-]+|\[?[0-9A-Fa-f:.]+\]?", bare):
                raise ValueError(
                    f"allowed_hosts: {name!r} is not a host name (no scheme, port or path; "
                    "'*.example.com' for subdomains, '*' for any)"
                )
        return [n.lower().strip("[]") for n in v]

    @field_validator("cors_origins", mode="after")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if not re.fullmatch(
                r"https?://[A-Za-z0-9.\-]+(:\d{1,5})?|https?://\[[0-9A-Fa-f:]+\](:\d{1,5})?", origin
            ):
                raise ValueError(
                    f"cors_origins: {origin!r} is not an origin: scheme://host[:port], "
                    "nothing after it (e.g. 'https://app.example.com')"
                )
        return [o.lower() for o in v]

    @field_validator("label_studio_url", mode="after")
    @classmethod
    def _label_studio_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"label_studio_url: {v!r} is not an http(s) URL with a host "
                "(e.g. 'http://127.0.0.1:8080')"
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(
                f"label_studio_url: {v!r} must be scheme://host[:port][/prefix] alone: no "
                "credentials (the token goes in label_studio_token), query or fragment"
            )
        return v.rstrip("/")

    @field_validator("label_studio_token", mode="after")
    @classmethod
    def _label_studio_token(cls, v: str | None) -> str | None:
        if v is not None and (len(v) < 6 or not re.fullmatch(r"[!-~]+", v)):
            raise ValueError(
                "label_studio_token must be the token as Label Studio shows it: 6 or more "
                "printable characters, no spaces"
            )
        return v

    @model_validator(mode="after")
    def _label_studio_token_has_a_place(self) -> Settings:
        if self.label_studio_token is not None and self.label_studio_url is None:
            raise ValueError(
                "label_studio_token is set but label_studio_url is not: set the address the "
                "token belongs to (media are fetched from there alone)"
            )
        return self

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, v: str | None) -> str | None:
        if v is None or v in ("local", "auto"):
            return v
        parts = urlsplit(v if "://" in v else f"gcs://{v}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("ray", "gcs") or not parts.hostname or port is None:
            raise ValueError(
                f"ray_address {v!r} is not 'local', 'auto', 'ray://host:port' or 'host:port'"
            )
        return v

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, v: str | None) -> str | None:
        return None if v is None else check_storage_url(v)

    @model_validator(mode="after")
    def _storage_holds_the_blobs(self) -> Settings:
        if self.storage_url is not None and self.blob_dir is not None:
            raise ValueError(
                f"blob_dir ({str(self.blob_dir)!r}) and storage_url ({self.storage_url!r}) are "
                "both set: with storage_url the blobs live in <storage_url>/blobs, where "
                "every machine reaches them; unset blob_dir"
            )
        if self.storage_options and self.storage_url is None:
            raise ValueError("storage_options is set but storage_url is not: set storage_url")
        return self

    @model_validator(mode="after")
    def _workers_need_ray(self) -> Settings:
        if self.train_workers > 1 and self.ray_address is None:
            raise ValueError(
                f"train_workers = {self.train_workers} needs Ray: set ray_address ('local' for "
                "this machine, 'auto' or 'ray://host:10001' for a cluster)"
            )
        return self

    @model_validator(mode="after")
    def _lease_outlives_its_renewals(self) -> Settings:
        if self.job_lease_s <= 2 * self.policy_check_s:
            raise ValueError(
                f"job_lease_s ({self.job_lease_s:g}) must be more than twice policy_check_s "
                f"({self.policy_check_s:g}): a running retrain renews its lease every check"
            )
        if self.drift_min_window > self.drift_window:
            raise ValueError(
                f"drift_min_window ({self.drift_min_window}) must be at most drift_window "
                f"({self.drift_window})"
            )
        return self

    @field_validator("project_dir", mode="after")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.project_dir / 'flywheel.db'}"

    @property
    def blobs(self) -> Path:
        return self.blob_dir or self.project_dir / "blobs"

    @property
    def user_keys(self) -> Path:
        return self.user_key_file or self.project_dir / "user-keys.json"

    @property
    def models_dir(self) -> Path:
        return self.project_dir / "models"

    @property
    def served_name(self) -> str:
        """The model's name in the Open Inference Protocol: ``model_name``, else the
        project folder's name with every character a URL path would escape as ``-``."""
        if self.model_name:
            return self.model_name
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", self.project_dir.resolve().name).strip(".-")
        return name[:64] or "model"

    @property
    def requires_keys(self) -> bool:
        """Bound beyond loopback, every route needs a key of its scope."""
        return not is_loopback(self.host)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file lives in the project folder, which itself comes from the
        # keyword arguments or the environment, so find it before building the source.
        init_kwargs: dict[str, Any] = getattr(init_settings, "init_kwargs", {})
        project_dir = init_kwargs.get("project_dir") or os.environ.get("FLYWHEEL_PROJECT_DIR")
        toml_file = Path(project_dir or Path.cwd()) / CONFIG_FILE
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_file),
        )

    @classmethod
    def load(cls, project_dir: str | Path | None = None, **overrides: Any) -> Settings:
        """Build settings for a project folder; invalid values raise ``ConfigError``."""
        kwargs = dict(overrides)
        if project_dir is not None:
            kwargs["project_dir"] = Path(project_dir)
        try:
            return cls(**kwargs)
        except ValidationError as exc:
            folder = kwargs.get("project_dir") or os.environ.get("FLYWHEEL_PROJECT_DIR")
            toml = Path(folder or Path.cwd()) / CONFIG_FILE
            problems = "; ".join(_problem(err, kwargs, toml) for err in exc.errors())
            raise ConfigError(f"invalid settings: {problems}") from exc
        except ValueError as exc:  # a malformed flywheel.toml
            raise ConfigError(f"cannot read {CONFIG_FILE}: {exc}") from exc


def _problem(err: Any, overrides: dict[str, Any], toml: Path) -> str:
    """One validation error, naming the setting, where its value came from (an option,
    an environment variable or flywheel.toml) and, for an unknown name, the nearest."""
    loc = [str(p) for p in err["loc"]]
    key = loc[0] if loc else ""
    name = ".".join(loc) or "settings"
    env = f"FLYWHEEL_{key.upper()}"
    if key in overrides:
        where = "given as an option"
    elif key and env in os.environ:
        where = f"from the environment variable {env}"
    else:
        where = f"in {toml}"
    if err["type"] == "extra_forbidden":
        near = did_you_mean(key, Settings.model_fields, list_all=False)
        return f"unknown setting {name!r} {where}{near or ' (README: Configuration)'}"
    value = err.get("input")
    shown = f" = {value!r}" if value is not None and not isinstance(value, dict) else ""
    if key == "storage_url":
        shown = ""  # it may hold credentials; its own message names it without them
    return f"{name}{shown} ({where}): {err['msg']}"


def config_text(source: str, values: dict[str, Any]) -> str:
    """A new project's ``flywheel.toml``: ``values`` set, the common knobs commented."""
    lines = [
        "# flywheel project settings; FLYWHEEL_* environment variables override them.",
        f"# Created from data source: {source}",
        "",
    ]
    for key, value in values.items():
        if value is None:
            field = Settings.model_fields.get(key)
            if field is None or field.default is None:
                continue  # the default is "not set" already
            lines.append(f'{key} = "off"')  # TOML has no null
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float | dict | list):
            lines.append(f"{key} = {_toml(value)}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    lines += [
        "",
        '# host = "127.0.0.1"      # bound beyond loopback, every route needs a key',
        '# allowed_hosts = ["flywheel.internal"]   # Host names besides the bind address',
        '# cors_origins = ["https://app.example.com"]   # web pages that may call the API',
        "# port = 8000",
        "# gate_margin = 0.0       # a challenger may trail the champion by at most this",
        "# epochs = 30",
        "",
    ]
    return "\n".join(lines)


def _toml(value: Any) -> str:
    """A TOML value: a number, a boolean, a string, an array, an inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def set_config_value(project_dir: Path, key: str, value: str) -> None:
    """Set ``key`` to the string ``value`` in a project's ``flywheel.toml``: its line
    replaced where it has one, added otherwise (comments and other lines kept)."""
    path = project_dir / CONFIG_FILE
    line = f"{key} = {json.dumps(value)}"
    lines = path.read_text().splitlines()
    at = [i for i, text in enumerate(lines) if re.match(rf"\s*{re.escape(key)}\s*=", text)]
    if at:
        lines[at[0]] = line
    else:
        # Before the first table, if any: a key after a [table] header would belong to it.
        tables = [i for i, text in enumerate(lines) if text.lstrip().startswith("[")]
        lines.insert(tables[0] if tables else len(lines), line)
    path.write_text("\n".join(lines) + "\n")


def keep_private(path: Path) -> None:
    """Make ``path`` its owner's alone (a folder 0700, a file 0600) if it is not yet.

    A project holds users' inputs, their pseudonyms' key and the API keys' hashes: the
    project folder itself is kept 0700, so nothing in it is reachable by other local
    users whatever the modes below it; the CLI also creates every file under a 0077
    umask.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if mode & 0o077:
        try:
            path.chmod(0o700 if path.is_dir() else 0o600)
        except PermissionError:  # not ours to change: say so, and carry on
            logging.getLogger("flywheel").warning(
                "%s is readable by other users (mode %o) and cannot be made private",
                path,
                mode & 0o777,
            )


#: fsspec protocols that name a folder on this machine (or one it mounts)
_LOCAL_PROTOCOLS = ("file", "local")
#: protocols fsspec knows that cannot hold a project's files: read-only, or a wrapper
#: around another URL (flywheel keeps its own cache)
_NOT_STORES = frozenset(
    {
        "http", "https", "github", "gist", "git", "zip", "tar", "libarchive", "data",
        "reference", "jupyter", "jlab", "pyscript", "dvc", "wandb", "dir", "generic",
        "blockcache", "filecache", "simplecache", "cached", "async_wrapper",
        "asyncwrapper", "asynclocal", "dask", "arrow_hdfs",
    }
)  # fmt: skip


def check_storage_url(url: str) -> str:
    """``url`` as a ``storage_url`` (a folder path is made absolute); ``ValueError``
    naming the problem. Nothing is contacted: reachability is checked on open."""
    url = url.strip()
    if not url:
        raise ValueError("storage_url is empty; leave it unset for the project folder")
    if "::" in url:
        raise ValueError(
            f"storage_url {url!r} chains fsspec URLs; give one (flywheel caches what it needs)"
        )
    protocol, rest = _split(url)
    if protocol in _LOCAL_PROTOCOLS:
        path = Path(rest).expanduser()
        if not path.is_absolute():
            raise ValueError(
                f"storage_url {url!r} is a relative path; give the absolute path of a folder "
                "that every machine mounts at the same place"
            )
        return str(path)
    known = set(known_implementations) | set(fsspec_registry)
    if protocol not in known or protocol in _NOT_STORES:
        stores = sorted(known - _NOT_STORES)
        raise ValueError(
            f"storage_url {url!r}: {protocol!r} is not a storage fsspec can write to"
            + did_you_mean(protocol, stores, list_all=False)
            + " (e.g. 's3://bucket/prefix', a folder path)"
        )
    parts = urlsplit(url)
    if parts.username or parts.password:
        bare = f"{protocol}://{parts.hostname or ''}{parts.path}"
        raise ValueError(
            f"storage_url {bare!r} with credentials: give them in the environment "
            "(AWS_ACCESS_KEY_ID, ...) or storage_options, never in the URL"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"storage_url {url!r} has a query or fragment; use storage_options")
    if not rest.strip("/"):
        raise ValueError(
            f"storage_url {url!r} names no bucket or host (e.g. '{protocol}://bucket/prefix')"
        )
    impl = known_implementations.get(protocol)
    if protocol not in fsspec_registry and impl is not None:
        module = str(impl["class"]).split(".", 1)[0]
        if importlib.util.find_spec(module) is None:
            extra = "s3" if protocol in ("s3", "s3a") else None
            hint = f"pip install 'flywheel-ml[{extra}]'" if extra else impl.get("err", module)
            raise ValueError(f"storage_url {url!r} needs {module}: {hint}")
    return url.rstrip("/")


def _split(url: str) -> tuple[str, str]:
    """(protocol, the rest): a bare path is ``file``."""
    if "://" not in url:
        return "file", url
    protocol, rest = url.split("://", 1)
    protocol = protocol.lower()
    return protocol, rest if protocol not in _LOCAL_PROTOCOLS else rest or "/"


@contextlib.contextmanager
def new_project_folder(root: Path, config: str) -> Iterator[Path]:
    """Create a project folder holding ``config`` as its ``flywheel.toml``; a failure
    inside the block removes what it created, so nothing half-made is left behind."""
    if (root / CONFIG_FILE).exists():
        raise ProjectError(f"{str(root)!r} already holds a flywheel project", path=root)
    created = not root.exists()
    if root.exists() and not root.is_dir():
        raise ProjectError(f"{str(root)!r} exists and is not a folder", path=root)
    root.mkdir(parents=True, exist_ok=True)
    keep_private(root)
    try:
        (root / CONFIG_FILE).write_text(config)
        keep_private(root / CONFIG_FILE)
        yield root
    except BaseException:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        else:
            (root / CONFIG_FILE).unlink(missing_ok=True)
            for name in ("flywheel.db", "flywheel.db-wal", "flywheel.db-shm"):
                (root / name).unlink(missing_ok=True)
            shutil.rmtree(root / "blobs", ignore_errors=True)
        raise

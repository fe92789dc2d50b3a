"""Serving on Ray Serve (``flywheel serve --on ray``): the same FastAPI app, with its
middlewares (keys, Host checks, body limits) and its lifespan (log writer, job runner,
the alias poll), in each of ``serve_replicas`` replicas behind Serve's HTTP proxy, which
binds ``host``:``port``.

The application is deployed from a config, as ``serve run config.yaml`` would: the
import path ``flywheel.scale.serve:build`` with the settings as its args, so that a
change of the deployment's ``user_config`` alone is a lightweight update. Serve then
calls ``reconfigure`` on each running replica in place, one at a time, while both keep
answering: no restart, no refused request. The user_config carries the production
version. A replica that swaps to another production version (a promote or rollback it
answered, a retrain it ran, its poll catching a move made elsewhere) sets the user_config
to the version the database names, after the commit; the other replicas swap in
``reconfigure``. ``flywheel promote`` and ``rollback`` do the same when ``ray_address``
names a cluster. Each replica keeps the alias poll of every server process
(``reload_interval_s``): the backstop should the controller not be reached.

Each replica is a process of its own, as a ``--workers`` worker is: its own log writer,
job runner (the retrain lease in the database keeps retrains one at a time) and poll.
On several machines they need a database and storage every machine reaches (PostgreSQL,
``storage_url``). The settings travel to the replicas as the application's args, in the
cluster's store, as ``--workers`` passes them in its workers' environment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from types import FrameType, ModuleType
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from flywheel.errors import ConfigError, FlywheelError
from flywheel.project import Project
from flywheel.scale.runtime import INSTALL, ray_session
from flywheel.serving.app import create_app
from flywheel.serving.predictor import Predictor
from flywheel.serving.server import bind, check_can_serve, server_log
from flywheel.settings import Settings

__all__ = [
    "APP",
    "DEPLOYMENT",
    "Replica",
    "app_config",
    "build",
    "on_ray",
    "serve_on_ray",
    "set_production",
    "tell_replicas",
]

log = logging.getLogger("flywheel.serving")

#: the Serve application's name, and its one deployment's
APP = "flywheel"
DEPLOYMENT = "flywheel"
IMPORT_PATH = f"{__name__}:build"
#: how long the application may take to have every replica up
START_TIMEOUT_S = 600.0


def import_serve() -> ModuleType:
    """Ray Serve, or a ConfigError saying how to install it."""
    try:
        from ray import serve
    except ImportError as exc:  # pragma: no cover - the dev extra brings Ray Serve
        raise ConfigError(f"Ray Serve is not installed ({exc}): {INSTALL}") from exc
    return serve


def app_config(settings: Settings, production: int | None) -> dict[str, Any]:
    """The application as Serve's declarative config (one entry of ``applications``)."""
    return {
        "name": APP,
        "route_prefix": "/",
        "import_path": IMPORT_PATH,
        "args": {"settings": json.loads(settings.model_dump_json())},
        "deployments": [
            {
                "name": DEPLOYMENT,
                "num_replicas": settings.serve_replicas,
                "user_config": {"production": production},
                "ray_actor_options": {"num_cpus": settings.serve_replica_cpus},
                # Enough requests in flight per replica for micro-batches to fill; past
                # max_connections waiting, the proxy answers 503 (uvicorn's limit).
                "max_ongoing_requests": max(16, 2 * settings.max_batch_size),
                "max_queued_requests": settings.max_connections,
            }
        ],
    }


# -- in the cluster: the builder and the replicas ------------------------------------


def replica_app(raw: dict[str, Any]) -> FastAPI:
    """One replica's app, from the settings the driver passed (as ``worker_app``)."""
    server_log()  # the server's lines, in the replica's log
    return create_app(Settings.load(**raw))


def build(args: dict[str, Any]) -> Any:
    """Serve's application builder (the config's import path): the deployment, its
    class wrapped with the app, built in each replica from ``args["settings"]``."""
    serve = import_serve()
    raw = dict(args["settings"])

    def asgi_app() -> FastAPI:
        return replica_app(raw)

    return serve.deployment(serve.ingress(asgi_app)(Replica), name=DEPLOYMENT).bind()


class Replica:
    """The deployment's class: ``serve.ingress`` makes it serve the app (``self.app``,
    started with its lifespan before the first ``reconfigure``)."""

    app: FastAPI  # ray.serve's ASGI wrapper provides it

    def __init__(self) -> None:
        #: the production version the user_config named when last heard or set
        self.told: int | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._teller: threading.Thread | None = None

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve calls it at start and at each change of the user_config: serve the
        production version (the database's alias, which the version in ``config``
        followed: the swap loads it before it answers a request)."""
        self.told = config.get("production")
        predictor: Predictor = self.app.state.predictor
        if self._teller is None:
            predictor.swap_listeners.append(lambda _version: self._wake.set())
            self._teller = threading.Thread(
                target=self._tell, name="flywheel-serve-teller", daemon=True
            )
            self._teller.start()
        try:
            await run_in_threadpool(predictor.refresh)
        except FlywheelError as exc:  # keep serving the model we have; the poll retries
            log.warning("could not load the new production model: %s", exc)

    def _tell(self) -> None:
        """After each swap here: the user_config set to the alias, if it names another."""
        project: Project = self.app.state.project
        while self._wake.wait() and not self._stop.is_set():
            self._wake.clear()
            try:
                version = project.production_version()
                if version != self.told:
                    set_production(version)
                    self.told = version
            except Exception as exc:  # the controller or the database: the poll remains
                log.warning("could not tell the other replicas of the new production: %s", exc)

    def __del__(self) -> None:
        self._stop.set()
        self._wake.set()


def set_production(version: int | None) -> bool:
    """Set the user_config of the running flywheel application to ``version`` (Serve
    reconfigures every replica in place); False when it already names it or no
    flywheel application runs. The cluster's other declarative applications are
    applied again as they are."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    client: Any = _get_global_client()
    details = client.get_serve_details()
    configs = [
        a["deployed_app_config"]
        for a in details.get("applications", {}).values()
        if a.get("deployed_app_config")
    ]
    ours = next((c for c in configs if c.get("name") == APP), None)
    if ours is None:
        return False
    wanted = {"production": version}
    deployments = [d for d in ours.get("deployments", []) if d.get("name") == DEPLOYMENT]
    if not deployments or all(d.get("user_config") == wanted for d in deployments):
        return False
    for d in deployments:
        d["user_config"] = wanted
    schema = ServeDeploySchema.model_validate(
        {"applications": configs, "target_capacity": details.get("target_capacity")}
    )
    client.deploy_apps(schema, _blocking=False)
    log.info("production v%s: Ray Serve reconfigures every replica to it", version)
    return True


def tell_replicas(project: Project) -> bool:
    """After a promote or rollback outside the server (the CLI): when ``ray_address``
    names a cluster that is up, set the running application's user_config to the alias.
    True when it was set; the replicas' poll catches the move in any case."""
    st = project.settings
    if st.ray_address is None or st.ray_address == "local":  # 'local': a server's own Ray
        return False
    host, _, port = st.ray_address.rpartition(":")
    if host and port.isdigit() and not st.ray_address.startswith("ray://"):
        try:  # a cluster that is down: say so at once, not after Ray's retries
            socket.create_connection((host, int(port)), timeout=2).close()
        except OSError:
            return False
    ray_session(st)
    import_serve()
    from ray.serve.exceptions import RayServeException

    try:
        return set_production(project.production_version())
    except RayServeException:  # no Serve on the cluster
        return False
    except Exception as exc:  # the move is committed: the replicas' poll catches it
        log.warning("Ray Serve was not told of the new production: %s", exc)
        return False


# -- the driver: `flywheel serve --on ray` ----------------------------------------------


class _Signals:
    """SIGINT and SIGTERM set an event (the first one is kept: the exit status)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        self.event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)


def _start_serve(serve: ModuleType, settings: Settings) -> Any:
    """Serve on the cluster with the proxy at host:port (one already running must be
    bound there: its HTTP options cannot change)."""
    from ray.serve.context import _get_global_client

    serve.start(
        http_options={
            "host": settings.host,
            "port": settings.port,
            "keep_alive_timeout_s": settings.keep_alive_s,
        }
    )
    client: Any = _get_global_client()
    http = client.http_config
    if (http.host, http.port) != (settings.host, settings.port):
        raise ConfigError(
            f"Ray Serve already runs on this cluster with its proxy at {http.host}:{http.port}, "
            f"not {settings.host}:{settings.port}: serve there (--host, --port), or stop it "
            "(`serve shutdown`)"
        )
    return client


def _deploy(client: Any, settings: Settings, production: int | None) -> None:
    """Apply the cluster's declarative applications with flywheel's in place of any before."""
    from ray.serve.schema import ServeDeploySchema

    details = client.get_serve_details()
    others = [
        a["deployed_app_config"]
        for name, a in details.get("applications", {}).items()
        if name != APP and a.get("deployed_app_config")
    ]
    schema = ServeDeploySchema.model_validate(
        {
            "applications": [*others, app_config(settings, production)],
            "target_capacity": details.get("target_capacity"),
        }
    )
    client.deploy_apps(schema, _blocking=False)


def _wait_running(serve: ModuleType, stop: threading.Event) -> bool:
    """Until every replica answers (True), ``stop`` (False) or a failed deploy (raises)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not stop.wait(0.5):
        app = serve.status().applications.get(APP)
        status = None if app is None else str(app.status)
        if status is not None and status.endswith("RUNNING"):
            return True
        if status is not None and status.endswith("DEPLOY_FAILED"):
            raise ConfigError(f"Ray Serve could not start the flywheel replicas: {app.message}")
        if time.monotonic() > deadline:
            raise ConfigError(
                f"the flywheel replicas were not up after {START_TIMEOUT_S:.0f}s "
                f"(Serve says {status}: {'' if app is None else app.message}); the cluster "
                f"has {_cpus()} (serve_replica_cpus each)"
            )
    return False


def _cpus() -> str:
    """The cluster's CPUs, for an error message."""
    import ray

    free, total = ray.available_resources().get("CPU", 0), ray.cluster_resources().get("CPU", 0)
    return f"{free:g} CPUs free of {total:g}"


def _undeploy(serve: ModuleType) -> None:
    """Delete flywheel's application (its replicas drain, then commit what they logged);
    shut Serve down when no other application is left on the cluster."""
    try:
        serve.delete(APP, _blocking=True)
        if not serve.status().applications:
            serve.shutdown()
    except Exception as exc:  # the cluster went first: nothing of ours is left there
        log.warning("could not stop the flywheel application on Ray Serve: %s", exc)


@contextlib.contextmanager
def on_ray(
    settings: Settings, production: int | None, stop: threading.Event | None = None
) -> Iterator[bool]:
    """The app on Ray Serve (Ray connected) for the block, which gets True once every
    replica answers (False: ``stop`` was set first); deleted at the end."""
    serve = import_serve()
    try:
        client = _start_serve(serve, settings)
        _deploy(client, settings, production)
        yield _wait_running(serve, stop or threading.Event())
    finally:
        _undeploy(serve)


def _prepare(settings: Settings) -> int | None:
    """Before Ray starts: the address set, the port free, the database migrated, keys
    where they are needed; the production version."""
    if settings.ray_address is None:
        raise ConfigError(
            "`flywheel serve --on ray` needs ray_address: 'local' for this machine, 'auto' or "
            "'ray://host:10001' for a cluster (ray_address in flywheel.toml, or "
            "FLYWHEEL_RAY_ADDRESS)"
        )
    if not settings.ray_address.startswith("ray://"):  # the proxy is on this machine
        bind(settings.host, settings.port).close()  # a port in use fails at once
    project = Project(settings)  # migrates the database once, before any replica starts
    try:
        check_can_serve(project)
        return project.production_version()
    finally:
        project.close()


def serve_on_ray(settings: Settings) -> None:
    """Serve in the foreground on Ray Serve until SIGINT/SIGTERM, which delete the
    application (replicas drain their requests and commit every logged prediction) and,
    with nothing else left on it, shut Serve down; an in-process Ray ('local') stops."""
    server_log()
    production = _prepare(settings)
    ray = ray_session(settings)
    stop = _Signals()  # after Ray's start: Ray's own handlers would replace ours
    try:
        with on_ray(settings, production, stop.event) as up:
            if up:
                log.info(
                    "ready on http://%s:%d: %d replica%s on Ray Serve (%s), %s",
                    settings.host, settings.port, settings.serve_replicas,
                    "s" if settings.serve_replicas > 1 else "", settings.ray_address,
                    "no production model yet" if production is None else f"model v{production}",
                )  # fmt: skip
                stop.wait()
            log.info("stopping: the replicas answer the requests in flight and commit their logs")
    finally:
        if settings.ray_address == "local":
            ray.shutdown()
    log.info("stopped: the flywheel application is off Ray Serve")
    if stop.received == signal.SIGINT:
        raise SystemExit(130)
    if stop.received == signal.SIGTERM:  # as uvicorn does: raised again, for supervisors
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)

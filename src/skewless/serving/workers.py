"""``skewless serve --workers N``: N FastAPI processes on one port, acting as one server.

uvicorn starts the workers and shares the listening socket; each worker loads its own model and
opens its own online-store connection and request-log writer. Two things span the workers,
through one shared folder:

- metrics: prometheus_client's multiprocess mode, in which every worker writes its samples to
  files in the folder and ``/metrics`` in any worker adds them all up;
- reloads: ``POST /admin/reload`` reaches one worker, which raises a :class:`ReloadSignal` (a
  file in the folder) that every worker's alias poller checks twice a second.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI

from skewless.core.config import SkewlessConfig
from skewless.serving.metrics import PROMETHEUS_ENVS, WORKERS_METRICS_ENV

SPEC_ENV = "SKEWLESS_WORKER_SPEC"
_SIGNAL_FILE = "reload-requested"


class ReloadSignal:
    """A reload asked of one worker, seen by all: a token in a shared file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self._token()

    def raise_signal(self) -> None:
        """Ask every worker to check the alias now (this one has just done so)."""
        token = f"{time.time_ns()} {os.getpid()}"
        written = self.path.with_suffix(f".{os.getpid()}")
        written.write_text(token)
        written.replace(self.path)  # a reader sees the old token or the new, never half
        self._seen = token

    def take(self) -> bool:
        """Whether a reload was asked since this worker last looked."""
        token = self._token()
        asked, self._seen = token != self._seen, token
        return asked

    def _token(self) -> str:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return ""


@contextmanager
def shared_folder(config: SkewlessConfig, home: Path, alias: str | None) -> Iterator[None]:
    """The environment the workers start in: the folder, and what each needs to load."""
    with tempfile.TemporaryDirectory(prefix="skewless-workers-") as folder:
        spec = {"config": config.model_dump(mode="json"), "home": str(home), "alias": alias}
        folders = (WORKERS_METRICS_ENV, *PROMETHEUS_ENVS)
        saved = {name: os.environ.get(name) for name in (SPEC_ENV, *folders)}
        os.environ[SPEC_ENV] = json.dumps({**spec, "folder": folder})
        os.environ.update(dict.fromkeys(folders, folder))
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def worker_app() -> FastAPI:
    """One worker's app (uvicorn's factory), built from the spec the parent left in the
    environment."""
    from skewless.serving.fastapi_app import create_app
    from skewless.serving.service import ForecastService

    spec = json.loads(os.environ[SPEC_ENV])
    config = SkewlessConfig.model_validate(spec["config"])
    service = ForecastService(config, Path(spec["home"]), spec["alias"])
    return create_app(service, ReloadSignal(Path(spec["folder"]) / _SIGNAL_FILE))

"""The same jobs on a real two-node Ray cluster (head and worker node on this machine)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import psutil
import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_tasks

from skewless.compute.engine import LocalCompute, RayCompute, compute_engine
from skewless.core.config import ComputeConfig
from skewless.core.errors import ComputeError, ConfigError
from skewless.features.repo import FeastRepo
from skewless.registry.registry import ModelRegistry
from skewless.serving.batch import forecast_fleet, open_sink, output_schema
from skewless.serving.service import load_model
from skewless.training.backtest import backtest
from skewless.training.history import FrameHistory, StoreHistory
from skewless.training.pipeline import fit
from skewless.training.tuning import trial_config, tune
from tests.conftest import etth_config, free_port
from tests.test_scale import SMALL


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head node and a worker node, one CPU each; the test process drives them."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": free_port()},
    )
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    try:
        yield nodes.address
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def engine(cluster: str) -> RayCompute:
    made = compute_engine(ComputeConfig(engine="ray", address=cluster))
    assert isinstance(made, RayCompute) and made.in_flight == 2  # both nodes' CPUs
    return made


@pytest.fixture
def rows(fleet_rows: pd.DataFrame) -> pd.DataFrame:
    return fleet_rows


def test_training_and_backtests_on_two_nodes_equal_the_local_run(
    engine: RayCompute, etth_sqlite: FeastRepo
) -> None:
    config = etth_config(*SMALL, "training.batch_entities=1")
    config = config.model_copy(update={"feature_store": etth_sqlite.config.feature_store})
    local = StoreHistory.of(config, etth_sqlite.home)
    remote = replace(local, compute=engine)
    here, there = fit(config, local), fit(config, remote)
    np.testing.assert_allclose(there.model.weight_, here.model.weight_, rtol=1e-9, atol=0)
    np.testing.assert_allclose(there.model.bias_, here.model.bias_, rtol=1e-9, atol=0)
    for name, value in here.validation.overall.items():
        assert there.validation.overall[name] == pytest.approx(value, rel=1e-9)
    folds = etth_config(*SMALL, "training.batch_entities=1", "backtest.folds=2")
    folds = folds.model_copy(update={"feature_store": etth_sqlite.config.feature_store})
    mine, theirs = backtest(folds, local), backtest(folds, remote)
    for name, value in mine.overall.overall.items():
        assert theirs.overall.overall[name] == pytest.approx(value, rel=1e-9)
    assert [f.windows for f in theirs.folds] == [f.windows for f in mine.folds]
    nodes = {task.node_id for task in list_tasks(limit=10_000) if task.node_id}
    assert len(nodes) == 2, "tasks ran on both the head and the worker node"


def test_a_worker_killed_mid_training_is_retried_to_the_same_result(
    engine: RayCompute, rows: pd.DataFrame
) -> None:
    config = etth_config(*SMALL, "training.batch_entities=1", "training.model=xgboost")
    local = FrameHistory.of(config, rows)
    expected = fit(config, local).validation.overall
    outcome: dict[str, object] = {}
    training = threading.Thread(
        target=lambda: outcome.update(fitted=fit(config, replace(local, compute=engine)))
    )
    training.start()
    killed = _kill_a_busy_worker(deadline=time.monotonic() + 60)
    training.join(timeout=300)
    assert killed, "no Ray worker was seen running a task"
    fitted = outcome["fitted"]
    for name, value in expected.items():
        assert fitted.validation.overall[name] == pytest.approx(value, rel=1e-9)  # type: ignore[attr-defined]


def test_an_address_that_does_not_answer_is_a_clear_error_at_once() -> None:
    began = time.monotonic()
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:1.*does not answer"):
        compute_engine(ComputeConfig(engine="ray", address="127.0.0.1:1"))
    assert time.monotonic() - began < 30
    with pytest.raises(ConfigError, match="not 'auto', 'host:port'"):
        compute_engine(ComputeConfig(engine="ray", address="nowhere"))


def test_a_batch_size_of_zero_is_refused() -> None:
    with pytest.raises(ConfigError, match="batch_entities"):
        etth_config("training.batch_entities=0")


def _kill_a_busy_worker(deadline: float) -> bool:
    """SIGKILL the first Ray worker process seen running one of our tasks."""
    while time.monotonic() < deadline:
        for process in psutil.process_iter(["cmdline"]):
            title = " ".join(process.info["cmdline"] or [])
            if title.startswith("ray::") and "call" in title:  # our tasks, not Ray's own
                process.kill()
                return True
        time.sleep(0.02)
    return False


def test_forecast_all_on_the_cluster_writes_what_the_local_run_writes(
    engine: RayCompute, cluster: str, etth_release: tuple, etth_sqlite: FeastRepo, tmp_path: Path
) -> None:
    config, released, _ = etth_release
    model = load_model(
        ModelRegistry(config.tracking.uri), config.model_name, "production", released.version
    )
    tables = {}
    for engine_name in ("local", "ray"):
        settings = config.model_copy(
            update={
                "compute": ComputeConfig(engine=engine_name, address=cluster),
                "serving": config.serving.model_copy(update={"max_entities": 1}),
            }
        )
        path = tmp_path / f"{engine_name}.parquet"
        sink = open_sink(str(path), output_schema(settings, model))
        summary = forecast_fleet(settings, etth_sqlite.home, model, [1, 2, 99], sink)
        assert summary.forecast == 2 and list(summary.failed) == [99]
        tables[engine_name] = pd.read_parquet(path).drop(columns="time_point")
    pd.testing.assert_frame_equal(tables["ray"], tables["local"])


def test_tuning_trials_run_as_tasks_on_the_cluster(
    engine: RayCompute, rows: pd.DataFrame, tmp_path: Path
) -> None:
    space = (
        "tuning.space={lookback: {type: int, low: 24, high: 96, step: 24}, "
        "params.individual: {type: categorical, choices: [true, false]}}"
    )
    config = etth_config(*SMALL, "backtest.folds=2", "tuning.trials=4", space)
    history = replace(FrameHistory.of(config, rows), compute=engine)
    seen: list[int] = []
    report = tune(config, history, tmp_path, on_trial=lambda frozen: seen.append(frozen.number))
    assert sorted(seen) == [0, 1, 2, 3]
    done = [t for t in report.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and all(len(t.intermediate_values) == 2 for t in done)
    best = trial_config(config, report.study.best_params)  # the same score when run here
    local = backtest(best, FrameHistory.of(best, rows)).overall.overall["mse"]
    assert report.best_value == pytest.approx(local, rel=1e-9)
    assert report.refit.model.get_params()["individual"] == best.training.params["individual"]


def test_results_come_back_in_order_whatever_finishes_first(engine: RayCompute) -> None:
    def slow_first(item: int) -> int:
        time.sleep(0.3 if item % 3 == 0 else 0.01)
        return item * item

    assert list(engine.map(slow_first, range(9))) == [i * i for i in range(9)]
    assert list(engine.map(slow_first, [])) == []


def test_whole_steps_run_side_by_side_on_ray_and_one_after_another_locally() -> None:
    meeting = threading.Barrier(2, timeout=10)  # broken unless both steps run at once
    started: list[int] = []

    def step(number: int) -> int:
        started.append(number)
        meeting.wait()
        return number

    assert list(RayCompute(2).concurrently([partial(step, 1), partial(step, 2)])) == [1, 2]
    started.clear()
    lazy = LocalCompute().concurrently([lambda: started.append(1) or 1, lambda: 2 / 0])
    assert next(lazy) == 1 and started == [1]  # the second step has not run


def test_a_task_whose_worker_dies_on_every_retry_is_a_compute_error(engine: RayCompute) -> None:
    def crash(item: int) -> int:
        os._exit(1)

    with pytest.raises(ComputeError, match="Ray cluster failed a task"):
        list(engine.map(crash, [1]))
    with pytest.raises(ConfigError, match="not a sum"):  # the work's own errors stay themselves
        list(engine.map(_refuse, [1]))


def _refuse(item: int) -> int:
    raise ConfigError("not a sum")

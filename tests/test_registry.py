"""The registry on real MLflow stores (SQLite and PostgreSQL), and the registered bundle loaded
back by alias: in a fresh process, behind ``mlflow models serve``, and through the skew check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import psycopg
import pytest
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from skewless.cli import app
from skewless.core.errors import BundleError, RegistryError
from skewless.core.schema import EVENT_TS
from skewless.features.repo import FeastRepo
from skewless.registry.pyfunc import logged_bundle, naive_utc
from skewless.registry.registry import ModelRegistry, Promotion
from skewless.training.release import input_example
from tests.conftest import ETTH_CONFIG, copy_version, free_port
from tests.services import POSTGRES_DSN

# A schema of its own: MLflow and Optuna both keep their schema version in a table named
# alembic_version, so they must not share one.
MLFLOW_SCHEMA = "mlflow_registry"
POSTGRES_MLFLOW = (
    f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{MLFLOW_SCHEMA}"
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> ModelRegistry:
    if request.param == "sqlite":
        return ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA IF NOT EXISTS {MLFLOW_SCHEMA}")
    return ModelRegistry(POSTGRES_MLFLOW)


def register(registry: ModelRegistry, name: str, mses: list[float], artifacts: Path) -> None:
    """Versions 1..n of ``name``, each a real logged artifact, tagged with a backtest MSE (and
    no naive score, as versions registered before skewless recorded one)."""
    mlflow.set_tracking_uri(registry.uri)
    # An experiment of its own, with artifacts under the test's folder (not ./mlruns).
    experiment = registry.client.create_experiment(name, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    registry.client.create_registered_model(name)
    for mse in mses:
        with mlflow.start_run() as run:
            mlflow.log_dict({"mse": mse}, "model/info.json")
        source = f"{run.info.artifact_uri}/model"
        version = registry.client.create_model_version(name, source, run.info.run_id)
        registry.record_metrics(name, int(version.version), {"mse": mse})


def mlflow_env(uri: str) -> dict[str, str]:
    """This process's environment for an MLflow process reading ``uri``: both URIs, because
    training here sets MLFLOW_REGISTRY_URI in os.environ (mlflow.set_registry_uri), and a
    child would read whichever store trained last."""
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}


def test_promote_refuses_worse_versions_and_rollback_walks_back(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    name = f"m{uuid.uuid4().hex[:8]}"
    register(registry, name, [5.0, 4.0, 6.0], tmp_path)
    assert registry.version_of(name, "latest") == 3
    assert [v.version for v in registry.versions(name)] == [3, 2, 1]
    first = registry.promote(name, 1, "production", "mse")
    assert first.previous is None
    assert first.note is not None and "has no backtest naive mse recorded" in first.note
    assert registry.promote(name, 2, "production", "mse").previous == 1  # better: allowed
    with pytest.raises(
        RegistryError, match="version 3 has backtest mse 6, worse than 4 of version 2"
    ):
        registry.promote(name, 3, "production", "mse")
    assert registry.version_of(name, "production") == 2  # a refusal moves nothing
    assert registry.promote(name, 3, "production", "mse", force=True) == Promotion(2)
    assert registry.history(name, "production") == [1, 2, 3]
    assert registry.rollback(name, "production") == (3, 2)
    assert registry.rollback(name, "production") == (2, 1)
    assert registry.version_of(name, "production") == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback(name, "production")
    listed = {v.version: v for v in registry.versions(name)}
    assert listed[1].aliases == ["production"] and listed[3].aliases == ["latest"]
    assert listed[2].metrics == {"mse": 4.0}


def test_promote_refuses_a_version_that_loses_to_naive_even_as_the_first_holder(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    name = f"m{uuid.uuid4().hex[:8]}"
    register(registry, name, [5.0, 4.0], tmp_path)
    registry.record_metrics(name, 1, {"naive_mse": 4.5, "skill_mse": 1 - 5 / 4.5})
    registry.record_metrics(name, 2, {"naive_mse": 4.5, "naive_mae": 1.0})
    for alias in ("staging", "production"):  # neither alias is held yet
        with pytest.raises(
            RegistryError,
            match="version 1 loses to the naive forecast on its own backtest: mse 5 against "
            "naive's 4.5 on the same folds; use --force",
        ):
            registry.promote(name, 1, alias, "mse")
    assert registry.describe(name)["aliases"] == {}  # a refusal moves nothing
    assert registry.promote(name, 2, "production", "mse") == Promotion(None)  # beats naive
    with pytest.raises(RegistryError, match="loses to the naive forecast"):
        registry.promote(name, 1, "staging", "mse")
    assert registry.promote(name, 1, "staging", "mse", force=True) == Promotion(None)
    assert registry.version_of(name, "staging") == 1
    # A metric with no naive score recorded is not compared with naive, and the note says so.
    unchecked = registry.promote(name, 2, "staging", "mae")
    assert unchecked.previous == 1
    assert unchecked.note == (
        "version 2 has no backtest mae recorded (versions registered before skewless recorded "
        "naive's score have none), so it was not compared with the naive forecast"
    )


def test_unknown_names_versions_and_aliases_list_what_exists(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    name = f"m{uuid.uuid4().hex[:8]}"
    register(registry, name, [1.0], tmp_path)
    with pytest.raises(
        RegistryError, match=rf"no registered model 'nope'; registered models: .*{name}"
    ):
        registry.versions("nope")
    with pytest.raises(RegistryError, match=r"has no version 7; versions: \[1\]"):
        registry.version_of(name, "7")
    with pytest.raises(RegistryError, match=r"has no alias 'champion'; aliases: \['latest'\]"):
        registry.version_of(name, "champion")
    with pytest.raises(RegistryError, match="promote to one of"):
        registry.promote(name, 1, "latest", "mse")


def test_two_registries_in_one_process_keep_to_their_own_stores(
    etth_release: tuple, tmp_path: Path
) -> None:
    config, released, _ = etth_release
    trained = ModelRegistry(config.tracking.uri)
    other = ModelRegistry(f"sqlite:///{tmp_path / 'other.db'}")
    name = f"m{uuid.uuid4().hex[:8]}"
    other.client.create_registered_model(name)
    artifact = trained.client.get_model_version_download_uri(
        config.model_name, str(released.version)
    )
    other.client.create_model_version(name, artifact)
    other.promote(name, 1, "production", "mse")
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"  # what a third party set, process-wide
    mlflow.set_tracking_uri(elsewhere)
    mlflow.set_registry_uri(elsewhere)
    try:
        bundles = [
            trained.load_bundle(config.model_name, "production"),
            other.load_bundle(name, "production"),
            other.load_bundle(name, 1),
        ]
        assert [v.version for v in other.versions(name)] == [1]
        assert released.version in [v.version for v in trained.versions(config.model_name)]
        with pytest.raises(RegistryError, match=f"no registered model '{name}'"):
            trained.versions(name)
        with pytest.raises(RegistryError, match=f"no registered model '{config.model_name}'"):
            other.versions(config.model_name)
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (elsewhere, elsewhere)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    assert all(b.spec.targets == bundles[0].spec.targets for b in bundles)


def test_a_release_records_naive_beside_its_backtest_and_a_copy_that_loses_is_refused(
    etth_release: tuple,
) -> None:
    config, released, _ = etth_release
    registry = ModelRegistry(config.tracking.uri)
    (version,) = [v for v in registry.versions(config.model_name) if v.version == released.version]
    assert version.model == "nlinear"
    assert version.params == {"lookback": 336, "horizon": 24}
    metrics = version.metrics
    assert metrics["naive_mse"] == released.report.naive.overall["mse"]
    assert metrics["mse"] < metrics["naive_mse"]  # NLinear beats repeating the last value
    assert metrics["skill_mse"] == pytest.approx(1 - metrics["mse"] / metrics["naive_mse"])
    assert {f"{kind}_{m}" for kind in ("naive", "skill") for m in ("mae", "mase")} <= set(metrics)
    run = MlflowClient(config.tracking.uri).get_run(released.run_id).data.metrics
    assert run["naive_mse"] == metrics["naive_mse"] and run["skill_mse"] == metrics["skill_mse"]

    name = f"m{uuid.uuid4().hex[:8]}"  # a copy of the release, so that its aliases stay put
    registry.client.create_registered_model(name)
    copy = copy_version(registry, config.model_name, released.version, name)
    registry.record_metrics(name, copy, {"naive_mse": metrics["mse"] / 2})
    with pytest.raises(RegistryError) as refused:
        registry.promote(name, copy, "production", "mse")
    assert f"mse {metrics['mse']:.6g} against naive's {metrics['mse'] / 2:.6g}" in str(
        refused.value
    )
    assert registry.promote(name, copy, "production", "mse", force=True).previous is None


def test_a_fresh_process_predicts_the_same_numbers_bit_for_bit(
    etth_release: tuple, tmp_path: Path
) -> None:
    config, _, rows = etth_release
    example = naive_utc(input_example(config, rows))
    registry = ModelRegistry(config.tracking.uri)
    expected = naive_utc(registry.load_bundle(config.model_name, "production").predict(example))
    example.to_parquet(tmp_path / "input.parquet")
    script = (
        "import mlflow, pandas as pd, sys\n"
        f"model = mlflow.pyfunc.load_model('models:/{config.model_name}@production')\n"
        "model.predict(pd.read_parquet(sys.argv[1])).to_parquet(sys.argv[2])\n"
    )
    env = mlflow_env(config.tracking.uri)
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path / "input.parquet"),
            str(tmp_path / "out.parquet"),
        ],
        env=env,
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "out.parquet"), expected, check_exact=True
    )


def test_plain_mlflow_predict_takes_rows_as_the_source_has_them(
    etth_release: tuple, tmp_path: Path
) -> None:
    """The config's timestamp column with text, aware times or offsets, read as ingest reads
    them; a value ingest would refuse names the column, and the signature accepts all that."""
    config, _, rows = etth_release
    example = input_example(config, rows)
    expected = naive_utc(
        ModelRegistry(config.tracking.uri)
        .load_bundle(config.model_name, "production")
        .predict(example)
    )
    times = example.pop(EVENT_TS)  # UTC
    source = config.data.timestamp_column
    inputs = {
        "text": example.assign(**{source: times.dt.strftime("%Y-%m-%d %H:%M:%S")}),
        "aware": example.assign(**{source: times.dt.tz_convert("Europe/Berlin")}),
        "offsets": example.assign(**{source: times.dt.tz_convert("Asia/Kolkata").map(str)}),
        "ingestion_aware": example.assign(**{EVENT_TS: times}),
        "bad": example.assign(**{source: times.map(str).where(example.index != 3, "yesterday")}),
    }
    for name, frame in inputs.items():
        frame.to_parquet(tmp_path / f"{name}.parquet")
    script = (
        "import mlflow, pandas as pd, sys, pathlib\n"
        f"model = mlflow.pyfunc.load_model('models:/{config.model_name}@production')\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        model.predict(pd.read_parquet(name)).to_parquet(f'{name}.out')\n"
        "    except Exception as exc:\n"
        "        pathlib.Path(f'{name}.err').write_text(str(exc))\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, *(str(tmp_path / f"{n}.parquet") for n in inputs)],
        env=mlflow_env(config.tracking.uri),
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    for name in inputs.keys() - {"bad"}:
        answer = pd.read_parquet(tmp_path / f"{name}.parquet.out")
        pd.testing.assert_frame_equal(answer, expected, check_exact=True, obj=name)
    refusal = (tmp_path / "bad.parquet.err").read_text()
    assert f"'{source}' is empty or not a timestamp" in refusal and "'yesterday'" in refusal
    folder = ModelRegistry(config.tracking.uri).download(config.model_name, "production")
    inputs_schema = Model.load(folder).signature.inputs.to_dict()
    assert {"type": "any", "name": source, "required": False} in inputs_schema


def test_the_logged_model_pins_its_requirements_and_carries_its_code(etth_release: tuple) -> None:
    config, released, _ = etth_release
    folder = ModelRegistry(config.tracking.uri).download(config.model_name, "production")
    requirements = (folder / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements and "xgboost-cpu==" in requirements
    assert (folder / "code" / "skewless" / "bundle" / "bundle.py").is_file()
    mlmodel = (folder / "MLmodel").read_text()
    assert "signature:" in mlmodel and "input_example" in mlmodel
    run = MlflowClient(config.tracking.uri).get_run(released.run_id)
    assert run.data.tags["data_fingerprint"] and run.data.metrics["mse"] > 0


def test_an_incomplete_or_corrupt_artifact_names_what_is_wrong(
    etth_release: tuple, tmp_path: Path
) -> None:
    config, _, _ = etth_release
    folder = ModelRegistry(config.tracking.uri).download(config.model_name, "production")
    broken = shutil.copytree(folder, tmp_path / "model")
    pickled = next(broken.rglob("bundle.pkl"))
    pickled.write_bytes(b"not a pickle")
    loads = (lambda: mlflow.pyfunc.load_model(str(broken)), lambda: logged_bundle(broken))
    for load in loads:  # through MLflow, and as skewless reads it
        with pytest.raises(BundleError, match="is corrupt"):
            load()
    pickled.unlink()
    for load in loads:
        with pytest.raises(BundleError, match="'bundle.pkl' is missing"):
            load()
    (broken / "MLmodel").unlink()
    with pytest.raises(BundleError, match="holds no logged forecast bundle"):
        logged_bundle(broken)


def test_mlflow_models_serve_answers_with_the_same_forecasts(
    etth_release: tuple, tmp_path: Path
) -> None:
    config, _, rows = etth_release
    example = naive_utc(input_example(config, rows))
    bundle = ModelRegistry(config.tracking.uri).load_bundle(config.model_name, "production")
    expected = naive_utc(bundle.predict(example))
    port = free_port()
    env = {
        **mlflow_env(config.tracking.uri),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{config.model_name}@production",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not come up"
                time.sleep(0.5)
        body = json.dumps(
            {"dataframe_split": json.loads(example.to_json(orient="split", date_format="iso"))}
        )
        answer = urllib.request.urlopen(
            urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                body.encode(),
                {"Content-Type": "application/json"},
            ),
            timeout=30,
        )
        served = pd.DataFrame(json.loads(answer.read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(served) == len(expected)
    np.testing.assert_allclose(served["forecast"], expected["forecast"], rtol=1e-9)
    np.testing.assert_allclose(served["upper_95"], expected["upper_95"], rtol=1e-9)


def test_skew_check_and_forecast_commands_on_the_shipped_data(
    etth_release: tuple, etth_sqlite: FeastRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, released, _ = etth_release
    monkeypatch.setenv("SKEWLESS_HOME", str(etth_sqlite.home))
    common = [
        "--set",
        f"feature_store.project={config.project}",
        "--set",
        f"tracking.uri={config.tracking.uri}",
    ]
    checked = CliRunner().invoke(app, ["verify-skew", str(ETTH_CONFIG), "--samples", "10", *common])
    assert checked.exit_code == 0, checked.output
    assert "10 pairs compared, 0 differ; largest absolute difference 0" in checked.output
    shown = CliRunner().invoke(app, ["forecast", str(ETTH_CONFIG), "--entity", "2", *common])
    assert shown.exit_code == 0, shown.output
    assert f"etth_forecaster@production (version {released.version})" in shown.output
    assert "2018-06-27 19:00:00" in shown.output  # ETTh ends 2018-06-26 19:00; horizon 24
    unknown = CliRunner().invoke(app, ["forecast", str(ETTH_CONFIG), "--alias", "canary", *common])
    assert unknown.exit_code == 1 and "has no alias 'canary'" in unknown.output

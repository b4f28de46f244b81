"""``skewless models list / describe / promote / rollback`` through Typer's runner, against a
real MLflow registry (SQLite under a temporary SKEWLESS_HOME), read back as a user reads it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skewless.cli import app
from skewless.registry.registry import ModelRegistry
from tests.test_registry import register

NAME = "cli_forecaster"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1..3 of NAME (backtest MSE 5, 4, 6), version 1 in production, in a SQLite
    registry made once: MLflow's migrations of a new database take seconds."""
    folder = tmp_path_factory.mktemp("registry")
    made = ModelRegistry(f"sqlite:///{folder / 'mlflow.db'}")
    register(made, NAME, [5.0, 4.0, 6.0], folder / "artifacts")
    made.promote(NAME, 1, "production", "mse")
    return folder / "mlflow.db"


@pytest.fixture
def registry(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    """A copy of the template registry of this test's own, where the commands look by
    default: SQLite under SKEWLESS_HOME."""
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SKEWLESS__TRACKING__URI", raising=False)
    (tmp_path / "home").mkdir()
    shutil.copyfile(template, tmp_path / "home" / "mlflow.db")
    return ModelRegistry(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")


def models(*arguments: str, exit_code: int = 0) -> str:
    """What ``skewless models ...`` printed, on one line (the console wraps where it likes)."""
    result = CliRunner().invoke(app, ["models", *arguments])
    assert result.exit_code == exit_code, result.output
    return " ".join(result.output.split())


def listed(output: str) -> dict[int, tuple[str, str]]:
    """The rows of a versions table (``models list``, ``describe``): version -> (aliases, mse)."""
    rows = re.findall(r"│ (\d+) │ ([a-z, ]*?) ?│ [\d-]+ [\d:]+ │[^│]*│[^│]*│ ([\d.]+) │", output)
    return {int(version): (aliases, mse) for version, aliases, mse in rows}


def test_list_shows_every_version_newest_first_with_aliases_and_metrics(
    registry: ModelRegistry,
) -> None:
    output = models("list", NAME)
    assert list(listed(output)) == [3, 2, 1]
    assert listed(output) == {
        3: ("latest", "6.000"),
        2: ("", "4.000"),
        1: ("production", "5.000"),
    }


def test_list_shows_the_model_its_key_parameters_and_the_skill_against_naive(
    registry: ModelRegistry,
) -> None:
    registry.record_model(NAME, 2, "xgboost", {"lookback": 336, "horizon": 24, "lags": 48})
    registry.record_metrics(NAME, 2, {"naive_mse": 21.394, "skill_mse": 1 - 4 / 21.394})
    registry.record_metrics(NAME, 3, {"mae": 0.0085554})
    output = models("list", NAME)
    assert "│ 2 │ │ " in output
    assert "│ xgboost │ lookback=336, horizon=24, lags=48 │ 4.000 │ 21.39 │ 0.8130 │" in output
    # A version registered before models and naive were recorded: blanks, not errors.
    assert re.search(r"│ 1 │ production │ [\d-]+ [\d:]+ │ │ │ 5.000 │ │ │", output)
    assert "│ 0.008555 │ │ │" in models("list", NAME, "--metric", "mae")  # not 0.0086


def test_promote_refuses_a_version_that_loses_to_naive_and_notes_one_never_compared(
    registry: ModelRegistry,
) -> None:
    registry.record_metrics(NAME, 3, {"naive_mse": 5.5})
    refused = models("promote", NAME, "3", "--alias", "staging", exit_code=1)
    assert (
        "error: version 3 loses to the naive forecast on its own backtest: mse 6 against "
        "naive's 5.5 on the same folds; use --force to promote anyway" in refused
    )
    assert "staging" not in models("describe", NAME)  # nothing moved
    forced = models("promote", NAME, "3", "--alias", "staging", "--force")
    assert "cli_forecaster@staging -> version 3 (was unset)" in forced and "note" not in forced
    noted = models("promote", NAME, "2", "--alias", "staging")
    assert "cli_forecaster@staging -> version 2 (was 3)" in noted
    assert (
        "note: version 2 has no backtest naive mse recorded (versions registered before skewless "
        "recorded naive's score have none), so it was not compared with the naive forecast" in noted
    )


def test_describe_shows_the_versions_when_no_alias_but_latest_is_set(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    register(registry, "unpromoted", [3.0, 2.0], tmp_path / "artifacts")
    described = models("describe", "unpromoted")
    assert "unpromoted: 2 version(s)" in described and "->" not in described
    assert listed(described) == {2: ("latest", "2.000"), 1: ("", "3.000")}


def test_promote_refuses_a_worse_version_until_forced_and_rollback_moves_the_alias_back(
    registry: ModelRegistry,
) -> None:
    assert "cli_forecaster@production -> version 2 (was 1)" in models(
        "promote", NAME, "2", "--alias", "production"
    )
    refused = models("promote", NAME, "latest", "--alias", "production", exit_code=1)
    assert (
        "error: version 3 has backtest mse 6, worse than 4 of version 2 (production); use "
        "--force to promote anyway" in refused
    )
    assert registry.version_of(NAME, "production") == 2  # a refusal moves nothing
    assert "-> version 3 (was 2)" in models(
        "promote", NAME, "latest", "--alias", "production", "--force"
    )
    described = models("describe", NAME)
    assert "cli_forecaster: 3 version(s)" in described
    assert "production -> version 3" in described
    assert "production history (oldest first): [1, 2, 3]" in described

    assert "cli_forecaster@production -> version 2 (was 3)" in models("rollback", NAME)
    assert listed(models("list", NAME))[2] == ("production", "4.000")
    assert "cli_forecaster@production -> version 1 (was 2)" in models("rollback", NAME)
    assert registry.version_of(NAME, "production") == 1
    nothing = models("rollback", NAME, exit_code=1)
    assert "'cli_forecaster@production' has no earlier version to roll back to" in nothing


def test_a_promotion_to_the_same_version_says_so_and_staging_is_its_own_alias(
    registry: ModelRegistry,
) -> None:
    assert "cli_forecaster@production -> version 1 (already there)" in models(
        "promote", NAME, "1", "--alias", "production"
    )
    assert "cli_forecaster@staging -> version 3 (was unset)" in models(
        "promote", NAME, "3", "--alias", "staging"
    )
    assert listed(models("list", NAME))[3] == ("latest, staging", "6.000")
    assert "production -> version 1" in models("describe", NAME)


def test_mistakes_are_one_line_errors_naming_what_exists(registry: ModelRegistry) -> None:
    unknown = models("list", "nope", exit_code=1)
    assert f"error: no registered model 'nope'; registered models: ['{NAME}']" in unknown
    assert "Traceback" not in unknown
    missing = models("promote", NAME, "7", "--alias", "production", exit_code=1)
    assert "has no version 7; versions: [3, 2, 1]" in missing
    latest = models("promote", NAME, "2", "--alias", "latest", exit_code=1)
    assert "promote to one of" in latest
    assert "roll back one of" in models("rollback", NAME, "--alias", "latest", exit_code=1)


def test_the_tracking_uri_option_reads_another_registry(
    registry: ModelRegistry, template: Path, tmp_path: Path
) -> None:
    other = ModelRegistry(f"sqlite:///{shutil.copyfile(template, tmp_path / 'other.db')}")
    other.promote(NAME, 2, "staging", "mse")
    assert listed(models("list", NAME, "--tracking-uri", other.uri))[2] == ("staging", "4.000")
    assert listed(models("list", NAME))[2] == ("", "4.000")  # the home's registry is another

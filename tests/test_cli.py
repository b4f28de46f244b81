"""The command line, in-process through Typer's runner, against a real home folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skewless.cli import app
from tests.conftest import ETTH_CONFIG, raw_rows

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_ingest_materialize_push_and_read_windows(home: Path, tmp_path: Path) -> None:
    config = str(ETTH_CONFIG)
    small = ["--set", "feature_store.window_size=48", "--set", "feature_store.project=cli"]
    for station in (1, 2):
        raw_rows(None, "2020-01-01", 72, seed=station).to_csv(
            tmp_path / f"s{station}.csv", index=False
        )
        assert "72" in run(
            "ingest",
            config,
            "--source",
            str(tmp_path / f"s{station}.csv"),
            "--entity",
            str(station),
            *small,
        )
    assert "full materialization" in run("materialize", config, *small)
    assert "windows of 0 entities" in run("materialize", config, "--incremental", *small)

    raw_rows(1, "2020-01-04", 2, seed=9).to_csv(tmp_path / "new.csv", index=False)
    pushed = run("push", config, "--file", str(tmp_path / "new.csv"), *small)
    assert "new rows" in pushed and "│        2 │" in pushed

    shown = run("windows", config, "--entity", "1", "--tail", "2", *small)
    assert "2020-01-04 01:00" in shown and "48 points, ending 2020-01-04T01:00:00+00:00" in shown
    assert (home / "feast" / "cli" / "feature_store.yaml").is_file()

    parts = home / "offline" / "cli" / "series"
    assert len(list(parts.glob("part-*.parquet"))) == 3  # two ingests and a push
    assert "merged 3 parts into one" in run("compact", config, *small)
    assert len(list(parts.glob("part-*.parquet"))) == 1
    assert "nothing to compact" in run("compact", config, *small)
    assert "2020-01-04 01:00" in run("windows", config, "--entity", "1", "--tail", "2", *small)


def test_user_errors_exit_1_without_traceback(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    frame = raw_rows(1, "2020-01-01", 5)
    frame.loc[2, "OT"] = "oops"
    frame.to_csv(bad, index=False)
    result = runner.invoke(app, ["ingest", str(ETTH_CONFIG), "--source", str(bad)])
    assert result.exit_code == 1
    assert "'OT' must be numeric but has 'oops' at row 3" in result.output
    assert "Traceback" not in result.output

    result = runner.invoke(
        app, ["materialize", str(ETTH_CONFIG), "--set", "feature_store.window_size=-1"]
    )
    assert result.exit_code == 1 and "feature_store.window_size" in result.output

    result = runner.invoke(app, ["windows", str(ETTH_CONFIG), "--entity", "9"])
    assert result.exit_code == 1 and "run 'skewless ingest CONFIG' first" in result.output


def test_non_integer_entity_ids_are_a_usage_error(home: Path) -> None:
    result = runner.invoke(app, ["windows", str(ETTH_CONFIG), "--entity", "abc"])
    assert result.exit_code == 2
    assert "must be integer ids" in result.output


# What each command must not import: each verb imports what it uses when it runs.
HEAVY = {"feast", "torch", "ray"}


@pytest.mark.parametrize(
    ("args", "unused", "says"),
    [
        (["--help"], HEAVY | {"mlflow", "pandas", "nats", "aio_pika"}, "Usage"),
        (["models", "list", "nothing_here"], HEAVY, "no registered model 'nothing_here'"),
        (
            ["windows", str(ETTH_CONFIG), "--set", "feature_store.window_size=-1"],
            HEAVY | {"mlflow"},
            "feature_store.window_size",
        ),
        (
            ["publish", str(ETTH_CONFIG), "--file", "rows.csv"],
            HEAVY | {"mlflow", "nats", "aio_pika"},
            "no 'streaming' section",
        ),
    ],
    ids=["help", "models-list", "bad-config", "publish-without-streaming"],
)
def test_commands_import_only_what_they_use(
    home: Path, args: list[str], unused: set[str], says: str
) -> None:
    """In a fresh process (the CLI's real start-up), and quietly: a fresh registry's database
    migrations are not announced."""
    script = (
        "import sys\n"
        "from skewless.cli import app\n"
        f"sys.argv = ['skewless', *{args!r}]\n"
        "try:\n"
        "    app()\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(set({sorted(unused)!r}) & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert says in result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
    assert "INFO" not in result.stderr and "Warning" not in result.stderr, result.stderr

"""The config: validation messages, overrides from the command line and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from skewless.core.config import RedisOnlineStore, load_config
from skewless.core.errors import ConfigError
from tests.conftest import ETTH_CONFIG


def write(tmp_path: Path, mutate: dict) -> Path:
    raw = yaml.safe_load(ETTH_CONFIG.read_text())
    for dotted, value in mutate.items():
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_config_is_valid_and_resolves_sources() -> None:
    config = load_config(ETTH_CONFIG, environ={})
    assert config.data.variables == ["OT", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]
    assert [s.entity for s in config.data.sources] == [1, 2]
    assert all(s.path is not None and s.path.is_file() for s in config.data.sources)


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (
            {"feature_store.online_store.type": "cassandra"},
            ["feature_store.online_store", "'sqlite', 'redis'", "cassandra"],
        ),
        ({"data.frequency": "bh"}, ["data.frequency", "not supported", "'W-SUN'", "'bh'"]),
        (
            {"data.frequency": "W-SUN", "training.lookback": "30D"},
            ["training.lookback", "not a whole number of 'W-SUN' periods", "4 and 5", "'30D'"],
        ),
        (
            {"training.horizon": "a while"},
            ["training.horizon", "not a count nor a duration", "'52W'", "'a while'"],
        ),
        (
            {"data.frequency": "fortnightly"},
            ["data.frequency", "not a pandas frequency", "fortnightly"],
        ),
        (
            {"feature_store.window_size": 0},
            ["feature_store.window_size", "greater than or equal to 1", "0"],
        ),
        ({"data.timezone": "Mars/Olympus"}, ["data.timezone", "unknown time zone", "Mars/Olympus"]),
        ({"data.tragets": ["OT"]}, ["data.tragets", "unknown key"]),
        ({"validation.on_gap": "ignore"}, ["validation.on_gap", "'warn' or 'error'", "ignore"]),
    ],
)
def test_bad_config_names_key_value_and_what_is_allowed(
    tmp_path: Path, mutation: dict, expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, mutation), environ={})
    for text in expected:
        assert text in str(error.value)


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    raw = yaml.safe_load(ETTH_CONFIG.read_text())
    del raw["data"]["targets"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"data\.targets: required key is missing"):
        load_config(path, environ={})


def test_set_overrides_any_key_with_yaml_typed_values() -> None:
    config = load_config(
        ETTH_CONFIG,
        [
            "feature_store.window_size=336",
            "feature_store.online_store.type=redis",
            "data.covariates=[HUFL]",
        ],
        environ={},
    )
    assert config.feature_store.window_size == 336
    assert isinstance(config.feature_store.online_store, RedisOnlineStore)
    assert config.data.covariates == ["HUFL"]


def test_environment_switches_stores_and_command_line_wins() -> None:
    env = {
        "SKEWLESS__FEATURE_STORE__ONLINE_STORE__TYPE": "redis",
        "SKEWLESS__FEATURE_STORE__WINDOW_SIZE": "100",
    }
    config = load_config(ETTH_CONFIG, ["feature_store.window_size=200"], environ=env)
    assert isinstance(config.feature_store.online_store, RedisOnlineStore)
    assert config.feature_store.window_size == 200


@pytest.mark.parametrize("override", ["no_equals_sign", "=3", "name.sub=1"])
def test_malformed_override_is_explained(override: str) -> None:
    with pytest.raises(ConfigError, match="override"):
        load_config(ETTH_CONFIG, [override], environ={})


def test_unreadable_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml", environ={})


def test_store_errors_name_the_key_users_write() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(
            ETTH_CONFIG,
            ["feature_store.online_store.type=redis", "feature_store.online_store.url=http://x"],
            environ={},
        )
    assert "feature_store.online_store.url: 'http://x' is not a redis:// URL" in str(error.value)


def test_durations_become_counts_of_the_frequency() -> None:
    config = load_config(
        ETTH_CONFIG,
        [
            "data.frequency=W-SUN",
            "training.lookback=52W",
            "training.horizon=28D",
            "backtest.test_periods=12W",
            "backtest.train_periods=104W",
            "backtest.gap=1W",
            "monitoring.reference_periods=364D",
        ],
        environ={"SKEWLESS__TRAINING__HORIZON": "8"},
    )
    assert (config.training.lookback, config.training.horizon) == (52, 4)
    assert (config.backtest.test_periods, config.backtest.train_periods) == (12, 104)
    assert (config.backtest.gap, config.monitoring.reference_periods) == (1, 52)


def test_durations_count_on_the_calendar_of_monthly_data() -> None:
    config = load_config(
        ETTH_CONFIG,
        ["data.frequency=MS", "training.lookback=2Y", "training.horizon=365D"],
        environ={},
    )
    assert (config.training.lookback, config.training.horizon) == (24, 12)

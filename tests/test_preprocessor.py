"""The stateful preprocessor: fitted on training rows only, the same transform everywhere."""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from skewless.core.errors import ConfigError, DataValidationError, NotFittedError
from skewless.preprocessing.preprocessor import Preprocessor
from tests.conftest import VARIABLES, etth_config


def rows(entity: int, start: str, count: int, offset: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "station_id": entity,
            "event_timestamp": pd.date_range(start, periods=count, freq="h", tz="UTC"),
        }
    )
    for k, column in enumerate(VARIABLES):
        frame[column] = (rng.normal(10 * k, 1 + k, count) + offset).astype(np.float32)
    return frame


def test_standard_scaling_uses_training_statistics_only() -> None:
    train = pd.concat([rows(1, "2020-01-01", 200), rows(2, "2020-01-01", 200, seed=1)])
    later = rows(1, "2020-02-01", 50, offset=100.0)
    pre = Preprocessor(etth_config()).fit(train)
    scaled = pre.transform(train)
    np.testing.assert_allclose(scaled[VARIABLES].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(scaled[VARIABLES].std(ddof=0), 1, atol=1e-4)
    shifted = pre.transform(later)  # the offset is not learned away
    assert (shifted["OT"] > 10).all()
    assert list(scaled.columns) == pre.output_columns and pre.output_columns[0] == "OT"
    assert all(dtype == np.float32 for dtype in scaled.dtypes)


@pytest.mark.parametrize("method", ["robust", "minmax"])
def test_other_scalers(method: str) -> None:
    train = rows(1, "2020-01-01", 500)
    scaled = (
        Preprocessor(etth_config(f"preprocessing.scaling.method={method}"))
        .fit(train)
        .transform(train)
    )
    if method == "minmax":
        np.testing.assert_allclose(scaled[VARIABLES].min(), 0, atol=1e-6)
        np.testing.assert_allclose(scaled[VARIABLES].max(), 1, atol=1e-6)
    else:
        np.testing.assert_allclose(scaled[VARIABLES].median(), 0, atol=1e-3)


def test_per_entity_scaling_and_unseen_entities_use_global_statistics() -> None:
    train = pd.concat([rows(1, "2020-01-01", 300), rows(2, "2020-01-01", 300, offset=50.0)])
    pre = Preprocessor(etth_config("preprocessing.scaling.per_entity=true")).fit(train)
    scaled = pre.transform(train)
    for entity in (1, 2):
        part = scaled[train["station_id"].to_numpy() == entity]
        np.testing.assert_allclose(part[VARIABLES].mean(), 0, atol=1e-4)
    raw = rows(9, "2020-01-01", 10, offset=25.0)
    stranger = pre.transform(raw)
    center, scale = pre.global_stats_.center[0], pre.global_stats_.scale[0]
    np.testing.assert_allclose(stranger["OT"], (raw["OT"].to_numpy() - center) / scale, rtol=1e-5)


def test_inverse_transform_restores_original_units() -> None:
    train = pd.concat([rows(1, "2020-01-01", 100), rows(2, "2020-01-01", 100, offset=30.0)])
    pre = Preprocessor(etth_config("preprocessing.scaling.per_entity=true")).fit(train)
    scaled = pre.transform(train)["OT"].to_numpy().reshape(2, 100, 1)
    restored = pre.inverse_transform_targets(np.array([1, 2]), scaled)
    np.testing.assert_allclose(restored.reshape(-1), train["OT"].to_numpy(), rtol=1e-5)


def test_imputation_ffill_with_limit_then_training_mean() -> None:
    train = rows(1, "2020-01-01", 20)
    pre = Preprocessor(
        etth_config("preprocessing.scaling.method=none", "preprocessing.imputation.limit=2")
    ).fit(train)
    gappy = train.copy()
    gappy.loc[5:9, "HULL"] = np.nan  # five missing in a row
    out = pre.transform(gappy)
    assert (out["HULL"].iloc[5:7] == train["HULL"].iloc[4]).all()  # filled forward twice
    np.testing.assert_allclose(out["HULL"].iloc[7:10], train["HULL"].mean(), rtol=1e-5)
    median = Preprocessor(
        etth_config("preprocessing.scaling.method=none", "preprocessing.imputation.method=median")
    ).fit(train)
    np.testing.assert_allclose(
        median.transform(gappy)["HULL"].iloc[5], train["HULL"].median(), rtol=1e-5
    )


def test_forward_fill_never_crosses_entities() -> None:
    train = pd.concat(
        [rows(1, "2020-01-01", 5), rows(2, "2020-01-01", 5, offset=100.0)], ignore_index=True
    )
    pre = Preprocessor(etth_config("preprocessing.scaling.method=none")).fit(train)
    gappy = train.copy()
    gappy.loc[5, "OT"] = np.nan  # first row of entity 2
    assert pre.transform(gappy)["OT"].iloc[5] == pytest.approx(train["OT"].mean(), rel=1e-5)


def test_categoricals_are_encoded_with_a_defined_unseen_behaviour() -> None:
    train = rows(1, "2020-01-01", 6).assign(site=["a", "b", "a", "c", "b", "a"])
    pre = Preprocessor(etth_config("data.categorical=[site]")).fit(train)
    codes = pre.transform(train.assign(site=["c", "zzz", "a", "b", None, "a"]))["site"].tolist()
    assert codes == [3, 0, 1, 2, 0, 1]
    strict = Preprocessor(
        etth_config("data.categorical=[site]", "preprocessing.categoricals.unseen=error")
    ).fit(train)
    with pytest.raises(DataValidationError, match="never seen in training"):
        strict.transform(train.assign(site="zzz"))


def test_label_columns_are_declared_under_data_not_preprocessing() -> None:
    with pytest.raises(ConfigError, match="label columns are declared as data.categorical"):
        etth_config("preprocessing.categoricals.columns=[site]")


def test_a_preprocessor_pickled_before_a_config_key_existed_still_transforms() -> None:
    """Bundles in a registry were pickled with the config of their day: keys added since
    (here data.categorical and data.static) take their defaults when loaded."""
    train = rows(1, "2020-01-01", 6)
    pre = Preprocessor(etth_config()).fit(train)
    state = pickle.dumps(pre)
    data = pre.config.data
    for key in ("categorical", "static"):  # as a DataConfig pickled before them holds it
        del data.__dict__[key]
    old = pickle.dumps(pre)
    assert old != state
    loaded = pickle.loads(old)
    assert loaded.config.data.categorical == [] and loaded.config.data.static is None
    pd.testing.assert_frame_equal(loaded.transform(train), pickle.loads(state).transform(train))


def test_calendar_features_match_the_ingestion_function() -> None:
    from skewless.core.calendar import engineer

    config = etth_config()
    train = rows(1, "2020-03-01 20:00", 10)
    out = Preprocessor(config).fit(train).transform(train)
    expected = engineer(pd.DatetimeIndex(train["event_timestamp"]), config)
    np.testing.assert_array_equal(out[expected.columns].to_numpy(), expected.to_numpy())


def test_contract_errors_and_pickling() -> None:
    train = rows(1, "2020-01-01", 30)
    with pytest.raises(NotFittedError, match="call fit on training rows"):
        Preprocessor(etth_config()).transform(train)
    pre = Preprocessor(etth_config()).fit(train)
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['LULL'\]"):
        pre.transform(train.drop(columns="LULL"))
    clone = pickle.loads(pickle.dumps(pre))
    pd.testing.assert_frame_equal(clone.transform(train), pre.transform(train))


def test_a_loaded_preprocessor_serves_many_threads_from_its_first_request() -> None:
    """A server swaps a freshly unpickled bundle in under load: its first transforms run in
    several threads at once, and a pandas Index that fills its hash table lazily then answers
    'not unique' to some of them (a 500 on the first requests after every swap)."""
    fleet = pd.concat([rows(entity, "2020-01-01", 3, seed=entity) for entity in range(2000)])
    fitted = pickle.dumps(
        Preprocessor(etth_config("preprocessing.scaling.per_entity=true")).fit(fleet)
    )
    request = fleet[fleet["station_id"].isin([1, 2])]
    for _ in range(30):
        loaded, start = pickle.loads(fitted), threading.Barrier(4)

        def first_request(pre: Preprocessor = loaded, barrier: threading.Barrier = start) -> None:
            barrier.wait()
            pre.transform(request)

        with ThreadPoolExecutor(4) as pool:
            for answer in [pool.submit(first_request) for _ in range(4)]:
                answer.result()  # raises what the thread raised

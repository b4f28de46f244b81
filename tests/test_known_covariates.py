"""Known-future covariates (``data.known``): daily sales of three stores lifted by 30 on
promotion days, the promotion planned ahead. Trained in process, a promotion schedule sent with
the history moves the forecast on exactly the promoted days; what the model reads over a
training window's horizon equals what serving builds for the same origin (no skew); a plan
that misses a step is refused, naming the entity and the step; plans are ingested into their
own table, validated whole, and a re-ingest adds nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psycopg
import pytest
import yaml
from pydantic import ValidationError

from skewless.bundle.bundle import ForecastBundle, future_channels
from skewless.core.config import SkewlessConfig, load_config
from skewless.core.errors import DataValidationError
from skewless.core.schema import EVENT_TS
from skewless.features.ingest import ingest
from skewless.features.offline import PostgresOfflineTable
from skewless.features.plans import PLAN_TABLE
from skewless.features.repo import FeastRepo
from skewless.models.exogenous import StepEquations, exogenous_terms
from skewless.training.backtest import backtest
from skewless.training.packaging import package
from skewless.training.pipeline import fit, window_batch
from tests.services import POSTGRES_DSN
from tests.test_calendar_frequencies import released_server, run

STORES = (1, 2, 3)
DAYS = 240
LIFT = 30.0


def sales(seed: int = 0) -> pd.DataFrame:
    """Sales = a level per store + LIFT on promotion days (a fifth of them) + noise."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2021-01-01", periods=DAYS, freq="D", tz="UTC")
    parts = []
    for store in STORES:
        promo = (rng.random(DAYS) < 0.2).astype(np.float32)
        level = 50 + 5 * store + LIFT * promo + rng.normal(0, 1, DAYS)
        parts.append(
            pd.DataFrame(
                {"store": store, EVENT_TS: dates, "sales": level.astype(np.float32), "promo": promo}
            )
        )
    return pd.concat(parts, ignore_index=True)


def settings(model: str = "xgboost", **data: object) -> dict:
    params = {
        "nlinear": {},
        "xgboost": {"n_estimators": 80, "lags": 7},
        "tft": {"hidden_size": 8, "attention_heads": 2, "epochs": 1, "windows_per_epoch": 64},
    }[model]
    return {
        "name": "shops",
        "data": {
            "entity_key": "store",
            "frequency": "D",
            "timezone": "UTC",
            "targets": ["sales"],
            "covariates": ["promo"],
            "known": {"columns": ["promo"]},
            **data,
        },
        "feature_store": {"project": "known"},
        "backtest": {"folds": 1, "test_periods": 14},
        "training": {"model": model, "lookback": 14, "horizon": 7, "params": params},
    }


def trained(config: SkewlessConfig, rows: pd.DataFrame) -> ForecastBundle:
    fitted = fit(config, rows)
    bundle, _ = package(config, rows, fitted, backtest(config, rows))
    return bundle


@pytest.fixture(scope="module")
def xgboost_bundle() -> ForecastBundle:
    config = SkewlessConfig.model_validate(settings())
    return trained(config, sales())


@pytest.fixture(scope="module")
def nlinear_bundle() -> ForecastBundle:
    config = SkewlessConfig.model_validate(settings("nlinear"))
    return trained(config, sales())


def with_plan(history: pd.DataFrame, promotions: dict[int, list[float]]) -> pd.DataFrame:
    """``history`` and, per store, rows after its end with the planned promotion (no sales)."""
    plans = []
    for store, planned in promotions.items():
        last = history.loc[history.store == store, EVENT_TS].max()
        days = last + pd.to_timedelta(np.arange(1, len(planned) + 1), unit="D")
        plans.append(
            pd.DataFrame({"store": store, EVENT_TS: days, "sales": np.nan, "promo": planned})
        )
    return pd.concat([history, *plans], ignore_index=True)


@pytest.mark.parametrize("model", ["xgboost_bundle", "nlinear_bundle"])
def test_a_promotion_schedule_moves_the_forecast_on_the_promoted_days(
    model: str, request: pytest.FixtureRequest
) -> None:
    """XGBoost reads the plan as features; NLinear adds a linear term per step."""
    bundle: ForecastBundle = request.getfixturevalue(model)
    history = sales().query("store in (1, 2)")
    schedule = [0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    quiet = bundle.predict(with_plan(history, {1: [0.0] * 7, 2: [0.0] * 7}))
    promoted = bundle.predict(with_plan(history, {1: schedule, 2: [0.0] * 7}))
    lift = promoted["forecast"].to_numpy() - quiet["forecast"].to_numpy()
    store_one = (promoted["store"] == 1).to_numpy()
    assert np.allclose(lift[~store_one], 0)  # store 2's plan did not change
    on, off = np.array(schedule) == 1, np.array(schedule) == 0
    assert (lift[store_one][on] > LIFT / 2).all(), lift
    assert (np.abs(lift[store_one][off]) < LIFT / 4).all(), lift


def test_a_revised_plan_row_wins_over_the_one_it_revises(xgboost_bundle: ForecastBundle) -> None:
    history = sales().query("store == 1")
    first = with_plan(history, {1: [0.0] * 7})
    revised = first.tail(7).assign(promo=1.0)  # sent after the first version of the plan
    both = xgboost_bundle.predict(pd.concat([first, revised], ignore_index=True))
    only_revised = xgboost_bundle.predict(with_plan(history, {1: [1.0] * 7}))
    assert np.allclose(both["forecast"], only_revised["forecast"])


def test_a_plan_that_misses_a_step_is_refused_naming_the_entity_and_step(
    xgboost_bundle: ForecastBundle,
) -> None:
    history = sales().query("store in (1, 2)")
    short = with_plan(history, {1: [0.0] * 7, 2: [0.0] * 3})
    with pytest.raises(DataValidationError) as refused:
        xgboost_bundle.predict(short)
    (problem,) = refused.value.problems
    day = history[EVENT_TS].max() + pd.Timedelta(days=4)
    assert "entity 2" in problem and "['promo']" in problem and day.isoformat() in problem
    with pytest.raises(DataValidationError, match="do not cover the horizon"):
        xgboost_bundle.predict(history)  # no plan at all


def test_what_serving_reads_ahead_equals_what_training_read_for_the_same_origin() -> None:
    """The TFT reads the promotion and the calendar features over the horizon: the values
    serving builds for an origin are the training window's, bit for bit."""
    config = SkewlessConfig.model_validate(settings("tft"))
    rows = sales()
    bundle = trained(config, rows)
    channels = future_channels(bundle.preprocessor, bundle.model)
    assert len(channels) == 1 + len(bundle.preprocessor.output_columns) - 2  # promo + calendar
    store = rows[rows.store == 3].reset_index(drop=True)
    batch = window_batch(config, bundle.preprocessor, bundle.model, store)
    origin = 100  # the window whose lookback ends at row 100 + lookback - 1
    trained_ahead = batch.future()[list(batch.starts).index(origin)]
    served = store.iloc[: origin + 14 + 7].copy()
    served.loc[served.index[-7:], "sales"] = np.nan  # the horizon's sales are not known
    served_ahead = bundle.prepare(served).future
    assert served_ahead is not None
    np.testing.assert_array_equal(served_ahead[0], trained_ahead)


def test_known_columns_must_be_covariates() -> None:
    raw = settings(known={"columns": ["price"]})
    with pytest.raises(ValidationError, match="not among data.covariates"):
        SkewlessConfig.model_validate(raw)


def write_plans(folder: Path, plans: pd.DataFrame, **store: object) -> dict:
    history = sales()
    history.assign(day=history[EVENT_TS].dt.strftime("%Y-%m-%d")).drop(columns=EVENT_TS).to_csv(
        folder / "sales.csv", index=False
    )
    plans.to_csv(folder / "plans.csv", index=False)
    raw = settings(
        sources=[{"path": str(folder / "sales.csv")}],
        timestamp_column="day",
        known={"columns": ["promo"], "sources": [{"path": str(folder / "plans.csv")}]},
    )
    raw["feature_store"] |= {"project": f"k{uuid.uuid4().hex[:10]}", **store}
    (folder / "shops.yaml").write_text(yaml.safe_dump(raw))
    return raw


PLANS = pd.DataFrame(
    {
        "store": [1, 1, 2],
        "day": ["2021-08-29", "2021-08-30", "2021-08-29"],
        "promo": [1.0, 0.0, 1.0],
    }
)


@pytest.fixture(params=["file", "postgres"])
def plan_store(request: pytest.FixtureRequest) -> dict:
    """The offline store the series and plans go to."""
    if request.param == "file":
        return {}
    return {"offline_store": {"type": "postgres", "dsn": POSTGRES_DSN, "sslmode": "disable"}}


def drop_postgres_tables(repo: FeastRepo) -> None:
    """The series and plan tables a PostgreSQL test made."""
    if not isinstance(repo.offline, PostgresOfflineTable):
        return
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{repo.offline.table}"')
        conn.execute(f'DROP TABLE IF EXISTS "{repo.config.project}_{PLAN_TABLE}"')


def test_plans_are_ingested_into_their_own_table_and_a_reingest_adds_nothing(
    tmp_path: Path, plan_store: dict
) -> None:
    write_plans(tmp_path, PLANS, **plan_store)
    repo = FeastRepo(load_config(tmp_path / "shops.yaml", environ={}), tmp_path / "home")
    try:
        check_plan_ingest(tmp_path, repo)
    finally:
        drop_postgres_tables(repo)


def check_plan_ingest(tmp_path: Path, repo: FeastRepo) -> None:
    reports = {r.origin: r for r in ingest(repo)}
    planned = reports["known-future plans"]
    assert (planned.rows_read, planned.rows_written) == (3, 3)
    assert repo.plans is not None
    stored = repo.plans.read([1])
    assert stored["promo"].tolist() == [1.0, 0.0]
    assert stored[EVENT_TS].tolist() == list(pd.to_datetime(["2021-08-29", "2021-08-30"], utc=True))
    again = {r.origin: r for r in ingest(repo)}["known-future plans"]
    assert (again.rows_written, again.rows_already_stored) == (0, 3)
    PLANS.assign(promo=[0.0, 0.0, 1.0]).to_csv(tmp_path / "plans.csv", index=False)
    revised = {r.origin: r for r in ingest(repo)}["known-future plans"]
    assert (revised.rows_written, revised.rows_already_stored) == (1, 2)
    assert repo.plans.read([1])["promo"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("plans", "reason"),
    [
        (PLANS.drop(columns="promo"), "missing column(s) ['promo']"),
        (pd.concat([PLANS, PLANS.head(1)]), "share an entity and time"),
        (PLANS.assign(promo=["1", "lots", "0"]), "'promo' must be numeric"),
    ],
    ids=["missing column", "two rows for one step", "not a number"],
)
def test_a_bad_plan_refuses_the_whole_ingest(
    tmp_path: Path, plans: pd.DataFrame, reason: str
) -> None:
    write_plans(tmp_path, plans)
    repo = FeastRepo(load_config(tmp_path / "shops.yaml", environ={}), tmp_path / "home")
    with pytest.raises(DataValidationError, match=re.escape(reason)):
        ingest(repo)
    assert repo.offline.is_empty()  # the series were not written either


def test_exogenous_terms_add_up_over_batches_and_recover_each_steps_effect() -> None:
    """Per step, residual = effect[h] x known + offset[h]: the terms solved from two halves'
    equations added together are the exact effects."""
    rng = np.random.default_rng(1)
    known = rng.normal(size=(500, 7, 2))
    effect, offset = rng.normal(size=(7, 2, 1)), rng.normal(size=(7, 1))
    residuals = np.einsum("nhk,hkc->nhc", known, effect) + offset
    halves = [
        StepEquations.of(known[:200], residuals[:200]),
        StepEquations.of(known[200:], residuals[200:]),
    ]
    coefficients = (halves[0] + halves[1]).solve()
    np.testing.assert_allclose(coefficients[:, :-1], effect, atol=1e-5)
    np.testing.assert_allclose(exogenous_terms(coefficients, known), residuals, atol=1e-5)


@pytest.fixture(scope="module")
def served_plans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """Sales and their plans ingested and materialized, XGBoost trained, a FastAPI server."""
    folder = tmp_path_factory.mktemp("plans")
    last = sales()[EVENT_TS].max()
    ahead = pd.date_range(last + pd.Timedelta(days=1), periods=7, freq="D")
    plans = pd.DataFrame(
        {
            "store": np.repeat(STORES, 7),
            "day": np.tile(ahead.strftime("%Y-%m-%d"), len(STORES)),
            "promo": 0.0,
        }
    )
    raw = write_plans(folder, plans)
    raw["training"]["params"] = {"n_estimators": 80, "lags": 7}
    raw["tracking"] = {"uri": f"sqlite:///{folder / 'mlflow.db'}"}
    raw["serving"] = {"alias": "latest"}
    config = folder / "shops.yaml"
    config.write_text(yaml.safe_dump(raw))
    with released_server(config, folder / "home") as (ingested, url):
        assert "known-future plans" in ingested
        yield config, url


def answers(url: str) -> dict[int, dict]:
    answer = httpx.post(
        f"{url}/predict/feast/batch",
        json={"entities": list(STORES), "time_point": "latest"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    return {item["entity"]: item for item in answer.json()["predictions"]}


def replan(config: Path, plans: pd.DataFrame) -> None:
    """Ingest ``plans`` and bring the online windows up to date."""
    plans.to_csv(config.parent / "plans.csv", index=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKEWLESS_HOME", str(config.parent / "home"))
        assert "known-future plans" in run("ingest", str(config))
        run("materialize", str(config), "--incremental")


def test_a_revised_stored_plan_moves_the_served_forecast_and_a_gap_is_refused_by_name(
    served_plans: tuple[Path, str],
) -> None:
    config, url = served_plans
    quiet = {store: item["forecast"]["sales"] for store, item in answers(url).items()}
    plans = pd.read_csv(config.parent / "plans.csv")
    plans.loc[(plans.store == 2) & plans.index.isin([8, 10]), "promo"] = 1.0  # days 2 and 4
    replan(config, plans)
    promoted = {store: item["forecast"]["sales"] for store, item in answers(url).items()}
    lift = np.array(promoted[2]) - np.array(quiet[2])
    assert (lift[[1, 3]] > LIFT / 2).all() and (np.abs(lift[[0, 2, 4, 5, 6]]) < LIFT / 4).all()
    assert promoted[1] == quiet[1] and promoted[3] == quiet[3]

    plans.loc[plans.index == 18, "promo"] = np.nan  # store 3, day 5: not planned (yet)
    replan(config, plans)
    served = answers(url)
    assert "forecast" in served[1] and "forecast" in served[2]
    day = pd.Timestamp(plans["day"].iloc[18], tz="UTC").isoformat()
    assert "entity 3" in served[3]["error"] and day in served[3]["error"], served[3]


def test_the_skew_check_gives_both_inputs_the_same_plan_and_finds_no_difference(
    served_plans: tuple[Path, str],
) -> None:
    config, _ = served_plans
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKEWLESS_HOME", str(config.parent / "home"))
        checked = run("verify-skew", str(config), "--alias", "latest", "--samples", "50")
    assert "50 pairs compared, 0 differ; largest absolute difference 0" in checked


def test_a_request_sends_its_own_plan_as_rows_after_the_history(
    served_plans: tuple[Path, str],
) -> None:
    _, url = served_plans
    history = sales().query("store == 1").tail(14)
    with_schedule = with_plan(history, {1: [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]})
    rows = with_schedule.assign(**{EVENT_TS: with_schedule[EVENT_TS].map(pd.Timestamp.isoformat)})
    body = {"rows": rows.astype(object).where(rows.notna(), None).to_dict("records")}
    answer = httpx.post(f"{url}/predict", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    (item,) = answer.json()["predictions"]
    forecast = np.array(item["forecast"]["sales"])
    assert forecast[0] - forecast[1] > LIFT / 2 and forecast[2] - forecast[3] > LIFT / 2
    short = {"rows": body["rows"][:-2]}  # the last two steps unplanned
    refused = httpx.post(f"{url}/predict", json=short, timeout=120)
    assert refused.status_code == 422 and "entity 1" in refused.text, refused.text


def test_a_request_plan_wins_over_the_stored_one_for_its_entities(
    served_plans: tuple[Path, str],
) -> None:
    _, url = served_plans
    stored = answers(url)
    first = pd.Timestamp(stored[1]["timestamps"][0])
    days = [(first + pd.Timedelta(days=k)).isoformat() for k in range(7)]
    plan = [
        {"store": 1, "event_timestamp": day, "promo": float(k in (0, 6))}
        for k, day in enumerate(days)
    ]
    answer = httpx.post(
        f"{url}/predict/feast/batch",
        json={"entities": [1, 2], "time_point": "latest", "known": plan},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    sent = {item["entity"]: item["forecast"]["sales"] for item in answer.json()["predictions"]}
    lift = np.array(sent[1]) - np.array(stored[1]["forecast"]["sales"])
    assert (lift[[0, 6]] > LIFT / 2).all() and (np.abs(lift[1:6]) < LIFT / 4).all()
    assert sent[2] == stored[2]["forecast"]["sales"]  # no request plan: the stored one
    for wrong in ([{**plan[0], "promo": "lots"}], [{"store": 1, "promo": 1.0}]):
        refused = httpx.post(
            f"{url}/predict/feast", json={"entity": 1, "known": wrong}, timeout=120
        )
        assert refused.status_code == 422 and "'known' rows" in refused.text, refused.text

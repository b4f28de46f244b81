"""POST /push against a live server (FastAPI and Ray Serve) over a store of its own: rows land in
the offline store and the online windows before the answer, bad rows are refused with their
reasons and write nothing, the admin token guards it, the body limit and metrics apply."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pandas as pd
import pytest

from skewless.core.config import SkewlessConfig
from skewless.core.schema import EVENT_TS
from skewless.features.ingest import ingest, ingest_frames
from skewless.features.materialize import materialize
from skewless.features.repo import FeastRepo
from tests.conftest import VARIABLES, etth_config, register_copy
from tests.test_serving import SERVERS, TIMEOUT, TOKEN, start_kind, stop_server

ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Pushed:
    """A live server over a feature store that this module's tests may write to."""

    url: str
    repo: FeastRepo


@pytest.fixture(scope="module", params=SERVERS)
def pushed(
    request: pytest.FixtureRequest,
    etth_sqlite: FeastRepo,
    etth_release: tuple,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pushed]:
    """Both ETTh stations in a store of the engine's own (pushes change it), served by the
    session's release under a name of this module's own."""
    released = register_copy(etth_release[0], etth_release[1].version)
    repo = FeastRepo(etth_config(), tmp_path_factory.mktemp(f"push-{request.param}") / "home")
    ingest(repo)
    materialize(repo)
    config: SkewlessConfig = released.model_copy(
        update={"feature_store": repo.config.feature_store}
    )
    process, url = start_kind(
        request.param, request, repo, config, "serving.poll_seconds=3600", "serving.max_entities=5"
    )
    yield Pushed(url, repo)
    stop_server(process)


@pytest.fixture
def api(pushed: Pushed) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pushed.url, timeout=TIMEOUT) as client:
        yield client


def window_end(api: httpx.Client, station: int) -> pd.Timestamp:
    """Where the station's online window ends: an hour before its latest forecast starts."""
    answer = api.post("/predict/feast/batch", json={"entities": [station], "time_point": "latest"})
    assert answer.status_code == 200, answer.text
    return pd.Timestamp(answer.json()["predictions"][0]["timestamps"][0]) - pd.Timedelta(hours=1)


def source_rows(station: int, after: pd.Timestamp, hours: int, seed: int = 0) -> list[dict]:
    """New rows in the source's column names (as the ETTh files have them), JSON-ready."""
    rng = np.random.default_rng(seed)
    stamps = pd.date_range(after + pd.Timedelta(hours=1), periods=hours, freq="h")
    return [
        {
            "station_id": station,
            "date": stamp.strftime("%Y-%m-%d %H:%M:%S"),
            **{v: float(np.float32(rng.normal(10, 3))) for v in VARIABLES},
        }
        for stamp in stamps
    ]


def stored(repo: FeastRepo, station: int, since: pd.Timestamp) -> pd.DataFrame:
    return repo.offline.rows_between([station], since, since + pd.Timedelta(days=30))


def test_pushed_rows_are_in_both_stores_before_the_answer(
    api: httpx.Client, pushed: Pushed
) -> None:
    end, other = window_end(api, 1), window_end(api, 2)
    rows = source_rows(1, end, 3)
    began = time.perf_counter()
    answer = api.post("/push", json={"rows": rows}, headers=ADMIN)
    took = time.perf_counter() - began
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["rows_read"], body["rows_written"], body["rows_already_stored"]) == (3, 3, 0)
    assert body["entities"] == [1]
    # The online window moved with the answer: no materialize, no wait.
    assert window_end(api, 1) == end + pd.Timedelta(hours=3)
    assert window_end(api, 2) == other
    offline = stored(pushed.repo, 1, end + pd.Timedelta(hours=1))
    assert len(offline) == 3
    assert np.allclose(offline.sort_values(EVENT_TS)["OT"], [r["OT"] for r in rows])
    print(f"push of 3 rows answered in {took * 1000:.0f} ms")
    again = api.post("/push", json={"rows": rows}, headers=ADMIN).json()
    assert (again["rows_written"], again["rows_already_stored"]) == (0, 3)
    assert len(stored(pushed.repo, 1, end + pd.Timedelta(hours=1))) == 3


def test_bad_rows_are_refused_with_every_reason_and_nothing_is_written(
    api: httpx.Client, pushed: Pushed
) -> None:
    end = window_end(api, 2)
    first = source_rows(2, end, 1, seed=1)
    assert api.post("/push", json={"rows": first}, headers=ADMIN).status_code == 200
    end = window_end(api, 2)
    rows = source_rows(2, end, 4, seed=2)
    rows[1]["OT"] = "warm"  # not a number
    rows[2]["date"] = "yesterday"  # not a timestamp
    changed = {**first[0], "OT": first[0]["OT"] + 1}  # a stored row with another value
    answer = api.post("/push", json={"rows": [*rows, changed]}, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["detail"] == "POST /push was refused; nothing was written"
    problems = "\n".join(body["problems"])
    assert "'OT' must be numeric but has 'warm' at row 2" in problems, problems
    assert "'date' is empty or not a timestamp at row 3" in problems, problems
    assert [(r["row"], len(r["reasons"])) for r in body["rows"]] == [(2, 1), (3, 1)]
    assert body["rows"][0]["reasons"][0].startswith("'OT' must be numeric but has 'warm'")
    assert window_end(api, 2) == end
    assert len(stored(pushed.repo, 2, end + pd.Timedelta(hours=1))) == 0
    # The values are fine now; the changed stored row alone is still refused, by its row.
    rows[1]["OT"], rows[2]["date"] = 1.0, (end + pd.Timedelta(hours=3)).strftime("%Y-%m-%d %H:%M")
    conflict = api.post("/push", json={"rows": [*rows, changed]}, headers=ADMIN)
    assert conflict.status_code == 422
    assert "1 rows were ingested before with different values: row 5" in conflict.text
    assert conflict.json()["rows"] == []  # no row is wrong alone: the reason names row 5
    assert window_end(api, 2) == end
    assert len(stored(pushed.repo, 2, end + pd.Timedelta(hours=1))) == 0
    missing = api.post("/push", json={"rows": [{"station_id": 2, "OT": 1.0}]}, headers=ADMIN)
    assert missing.status_code == 422 and "missing column(s)" in missing.text


def test_push_needs_the_admin_token_before_its_body_is_read(api: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        refused = api.post("/push", json={"rows": "not rows"}, headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == "Bearer"
    assert api.post("/push", json={"rows": []}, headers=ADMIN).status_code == 422
    malformed = api.post(
        "/push", content=b"{not json", headers={**ADMIN, "content-type": "application/json"}
    )
    assert malformed.status_code == 422


def test_a_push_over_the_body_limit_is_413(api: httpx.Client) -> None:
    limit = (1 << 20) + 5 * 1024  # the default for serving.max_entities=5
    row = b'{"station_id": 1, "date": "2030-01-01 00:00:00", "OT": 1.0},'
    huge = b'{"rows": [' + row * (limit // len(row) + 1) + b"{}]}"
    answer = api.post("/push", content=huge, headers={**ADMIN, "content-type": "application/json"})
    assert answer.status_code == 413 and "serving.max_body_bytes" in answer.text


def test_pushes_are_counted_in_the_metrics(api: httpx.Client) -> None:
    end = window_end(api, 1)
    assert api.post("/push", json={"rows": source_rows(1, end, 2, 3)}, headers=ADMIN).is_success
    bad = source_rows(1, end + pd.Timedelta(hours=2), 1)
    bad[0]["OT"] = "x"
    assert api.post("/push", json={"rows": bad}, headers=ADMIN).status_code == 422
    metrics = api.get("/metrics").text
    assert 'skewless_requests_total{endpoint="/push",status="200"' in metrics
    assert 'skewless_requests_total{endpoint="/push",status="422"' in metrics
    assert 'skewless_request_seconds_count{endpoint="/push"' in metrics
    written = re.search(r'skewless_pushed_rows_total\{outcome="written"\} (\S+)', metrics)
    assert written is not None and float(written.group(1)) >= 2
    assert 'skewless_pushed_rows_total{outcome="refused"}' in metrics
    assert 'skewless_errors_total{scope="request",type="DataValidationError"}' in metrics


def test_rows_stored_offline_only_reach_the_window_when_pushed_again(
    api: httpx.Client, pushed: Pushed
) -> None:
    """A push that stopped between its offline append and its online update (its store failed,
    its process died): the client sends the rows again, and they go online then."""
    end = window_end(api, 2)
    rows = source_rows(2, end, 2, seed=4)
    (appended,) = ingest_frames(pushed.repo, [("a push cut short", pd.DataFrame(rows))])
    assert appended.rows_written == 2 and window_end(api, 2) == end  # offline only
    again = api.post("/push", json={"rows": rows}, headers=ADMIN).json()
    assert (again["rows_written"], again["rows_already_stored"]) == (0, 2)
    assert window_end(api, 2) == end + pd.Timedelta(hours=2)

"""The Feast internals the adapters rely on, checked against the installed Feast.

Rows go in through Feast's public online write and come back through the adapters
(skewless.features.feast_online, feast_sqlite, feast_redis): if a Feast upgrade changes a table
or key layout, a value encoding or a private name the adapters call, these tests fail. What to
do then: docs/feature-store.md, "Upgrading Feast".
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import pandas as pd
import pytest
import redis
from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.online_stores.redis import _versioned_fv_name
from feast.infra.online_stores.sqlite import SqliteOnlineStore, _quote_id, _table_id

from skewless.core.config import RedisOnlineStore
from skewless.core.schema import CREATED_TS, EVENT_TS
from skewless.features.feast_online import CHECKED_FEAST_VERSION, EntityKeys, OnlineReadFeature
from skewless.features.feast_redis import RedisFeatureLayout
from skewless.features.feast_sqlite import SqliteFeatureTable
from skewless.features.repo import WINDOW_FEATURE, WINDOW_VIEW, FeastRepo
from tests.conftest import MakeRepo

BLOBS = {1: b"\x00window of one\xff", 2: b"window of two" * 100}
UNKNOWN = 99


def test_the_installed_feast_is_the_one_the_adapters_were_checked_against() -> None:
    assert version("feast") == CHECKED_FEAST_VERSION, (
        "Feast changed: run this file; when it passes, set CHECKED_FEAST_VERSION and the "
        "adapters' docstrings to the new version (docs/feature-store.md, 'Upgrading Feast')"
    )


@pytest.mark.parametrize(
    ("function", "parameters"),
    [
        (serialize_entity_key, ["entity_key", "entity_key_serialization_version"]),
        (OnlineStore.online_read, ["self", "config", "table", "entity_keys", "requested_features"]),
        (_table_id, ["project", "table", "enable_versioning"]),
        (_quote_id, ["identifier"]),
        (SqliteOnlineStore._get_conn, ["self", "config"]),
        (_mmh3, ["key"]),
        (_versioned_fv_name, ["table", "config"]),
    ],
    ids=lambda f: getattr(f, "__qualname__", None),
)
def test_the_internals_the_adapters_call_keep_their_parameters(
    function: Callable[..., Any], parameters: list[str]
) -> None:
    assert list(inspect.signature(function).parameters) == parameters


def test_the_store_exposes_its_provider_and_online_store(make_repo: MakeRepo) -> None:
    store = _written(make_repo())
    assert isinstance(FeatureStore.__dict__["provider"], property)
    assert isinstance(store.provider.online_store, SqliteOnlineStore)


def test_sqlite_table_reads_what_feast_wrote(make_repo: MakeRepo) -> None:
    repo = make_repo()
    store = _written(repo)
    serialized = _keys(repo).serializer()
    table = SqliteFeatureTable(store, WINDOW_VIEW, WINDOW_FEATURE)
    assert table.read([serialized(e) for e in [2, UNKNOWN, 1]]) == [BLOBS[2], None, BLOBS[1]]
    _assert_online_read_agrees(repo)


@pytest.mark.redis
def test_redis_layout_locates_what_feast_wrote(make_repo: MakeRepo) -> None:
    repo = make_repo("feature_store.online_store.type=redis")  # the machine's, at the default URL
    online = repo.config.feature_store.online_store
    assert isinstance(online, RedisOnlineStore)
    store = _written(repo)
    serialized = _keys(repo).serializer()
    layout = RedisFeatureLayout(store, WINDOW_VIEW, WINDOW_FEATURE)
    client = redis.Redis.from_url(online.url)
    stored = [client.hget(layout.key(serialized(e)), layout.field) for e in [2, UNKNOWN, 1]]
    assert stored[1] is None
    assert [layout.value(stored[0]), layout.value(stored[2])] == [BLOBS[2], BLOBS[1]]
    _assert_online_read_agrees(repo)


def _written(repo: FeastRepo) -> FeatureStore:
    """The repo's store, with ``BLOBS`` written as windows through Feast's public API."""
    repo.apply()
    end = pd.Timestamp("2024-01-01", tz="UTC")
    rows = pd.DataFrame(
        {
            repo.config.data.entity_key: list(BLOBS),
            WINDOW_FEATURE: list(BLOBS.values()),
            "window_end": end,
            EVENT_TS: end,
            CREATED_TS: end,
        }
    )
    repo.store.write_to_online_store(WINDOW_VIEW, rows)
    return repo.store


def _keys(repo: FeastRepo) -> EntityKeys:
    return EntityKeys.of(repo.store, repo.config.data.entity_key, repo.config.data.entity_type)


def _assert_online_read_agrees(repo: FeastRepo) -> None:
    """Feast's own online_read, through the adapter every store shares, reads the same."""
    feature = OnlineReadFeature(repo.store, WINDOW_VIEW, WINDOW_FEATURE, _keys(repo))
    assert feature.read([2, UNKNOWN, 1]) == [BLOBS[2], None, BLOBS[1]]

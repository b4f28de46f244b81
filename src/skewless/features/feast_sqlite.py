"""Feast's SQLite online store, read straight from its table.

Assumes, as Feast 0.67.0 writes it (``feast.infra.online_stores.sqlite``): one table per feature
view, named by ``_table_id`` and quoted by ``_quote_id``; one row per (entity, feature) with the
serialized entity key in ``entity_key``, the feature name in ``feature_name`` and a serialized
``Value`` proto in ``value``; and the store's own connection from ``_get_conn``. Reading there
skips ``online_read``'s per-row timestamp parsing. Re-check on a Feast upgrade with
``tests/test_feast_contract.py`` (see :mod:`skewless.features.feast_online`).
"""

from __future__ import annotations

from collections.abc import Sequence

from feast import FeatureStore
from feast.infra.online_stores.sqlite import SqliteOnlineStore, _quote_id, _table_id

from skewless.features.feast_online import bytes_value, online_store


class SqliteFeatureTable:
    """One Bytes feature of one view, selected from the table Feast's SQLite store wrote."""

    def __init__(self, store: FeatureStore, view: str, feature: str) -> None:
        online = online_store(store)
        if not isinstance(online, SqliteOnlineStore):
            raise TypeError(
                f"the Feast store's online store is {type(online).__name__}, not SQLite"
            )
        self._online, self._config, self._feature = online, store.config, feature
        versioned = store.config.registry.enable_online_feature_view_versioning
        table = _table_id(store.config.project, store.get_feature_view(view), versioned)
        self._select = (
            f"SELECT entity_key, value FROM {_quote_id(table)} "
            "WHERE feature_name = ? AND entity_key IN "
        )

    def read(self, serialized_keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of Feast's serialized entity keys, in order; None where a key has none."""
        connection = self._online._get_conn(self._config)
        placeholders = f"({','.join('?' * len(serialized_keys))})"
        rows = connection.execute(self._select + placeholders, [self._feature, *serialized_keys])
        found = dict(rows)
        return [None if (v := found.get(k)) is None else bytes_value(v) for k in serialized_keys]

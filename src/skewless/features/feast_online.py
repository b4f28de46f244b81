"""Feast's online-store layer below ``get_online_features``: what every store's reader shares.

skewless reads windows one level below Feast's public API, where reads are several times faster
(:mod:`skewless.features.online`). What that assumes about Feast's internals lives in three
adapter modules, and the rest of the feature layer calls only them:

- this one: the provider's online store, Feast's entity-key encoding, its stored value protos;
- :mod:`skewless.features.feast_sqlite`: the table layout of Feast's SQLite store;
- :mod:`skewless.features.feast_redis`: the key and field layout of Feast's Redis store.

Checked against Feast 0.67.0 (:data:`CHECKED_FEAST_VERSION`, the version pyproject pins). On an
upgrade run ``tests/test_feast_contract.py``: it writes through Feast's public API and reads back
through these adapters, and checks the private names they call; docs/feature-store.md
("Upgrading Feast") says what to do when it fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.online_store import OnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

CHECKED_FEAST_VERSION = "0.67.0"
_KEY_CACHE_SIZE = 1 << 17


@dataclass(frozen=True)
class EntityKeys:
    """How Feast's online stores key one entity of a single join key."""

    join_key: str
    value_type: Literal["int64", "string"]
    serialization_version: int

    @classmethod
    def of(
        cls, store: FeatureStore, join_key: str, value_type: Literal["int64", "string"]
    ) -> EntityKeys:
        return cls(join_key, value_type, store.config.entity_key_serialization_version)

    def proto(self, entity: Any) -> EntityKeyProto:
        value = (
            ValueProto(int64_val=int(entity))
            if self.value_type == "int64"
            else ValueProto(string_val=str(entity))
        )
        return EntityKeyProto(join_keys=[self.join_key], entity_values=[value])

    def serializer(self) -> Callable[[Any], bytes]:
        """Feast's serialized key of an entity id, cached: encoding costs more than reading."""

        @lru_cache(maxsize=_KEY_CACHE_SIZE)
        def serialized(entity: Any) -> bytes:
            return serialize_entity_key(self.proto(entity), self.serialization_version)

        return serialized


def online_store(store: FeatureStore) -> OnlineStore:
    """The online store that Feast's provider reads and writes through."""
    return store.provider.online_store


def bytes_value(serialized: bytes) -> bytes:
    """The Bytes feature in a stored value (a serialized ``Value`` proto)."""
    value = ValueProto()
    value.ParseFromString(serialized)
    return value.bytes_val


class OnlineReadFeature:
    """One Bytes feature of one view through ``OnlineStore.online_read``: any store, no
    response protos."""

    def __init__(self, store: FeatureStore, view: str, feature: str, keys: EntityKeys) -> None:
        self._config = store.config
        self._online = online_store(store)
        self._view = store.get_feature_view(view)
        self._feature, self._keys = feature, keys

    def read(self, entities: Sequence[Any]) -> list[bytes | None]:
        """The values of ``entities``, in order; None where an entity has none."""
        protos = [self._keys.proto(e) for e in entities]
        rows = self._online.online_read(self._config, self._view, protos, [self._feature])
        # Stores differ on absent keys (no row, or an empty value); a real value is never empty.
        return [
            (values or {}).get(self._feature, ValueProto()).bytes_val or None for _, values in rows
        ]

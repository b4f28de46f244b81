"""Feast's Redis online store: where it keeps a feature, so a reader can fetch it with HGET.

Assumes, as Feast 0.67.0 writes it (``feast.infra.online_stores.redis``): one hash per entity,
keyed by the serialized entity key followed by the project name; in it one field per feature,
named by ``_mmh3`` of "VIEW:FEATURE" with VIEW from ``_versioned_fv_name``, holding a serialized
``Value`` proto (beside a ``_ts:VIEW`` field with the event time, which skewless does not read).
Re-check on a Feast upgrade with ``tests/test_feast_contract.py`` (see
:mod:`skewless.features.feast_online`).
"""

from __future__ import annotations

from feast import FeatureStore
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import _versioned_fv_name

from skewless.features.feast_online import bytes_value


class RedisFeatureLayout:
    """The hash key of an entity and the field of one feature of one view."""

    def __init__(self, store: FeatureStore, view: str, feature: str) -> None:
        name = _versioned_fv_name(store.get_feature_view(view), store.config)
        self.field: bytes = _mmh3(f"{name}:{feature}")
        self._project = store.config.project.encode()

    def key(self, serialized_entity_key: bytes) -> bytes:
        """The hash of an entity, from Feast's serialized entity key."""
        return serialized_entity_key + self._project

    @staticmethod
    def value(stored: bytes) -> bytes:
        """The Bytes feature in a field's stored value."""
        return bytes_value(stored)

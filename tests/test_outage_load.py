"""Concurrent requests while the real redis-server is stopped and restarted: no 5xx, degraded only meanwhile.

A bounded loop of ``N_REQUESTS`` recommendation requests runs on ``CONCURRENCY`` concurrent httpx
workers against the app served by a real uvicorn server (lifespan, Redis pool and all) on a free
loopback port, in the same event loop as the workers. (Litestar's AsyncTestClient would not do: it
runs requests one at a time on a portal thread, so nothing would be in flight.) Request numbers are
handed out in order; the worker that takes number ``STOP_AT`` first stops Redis, the one that takes
``START_AT`` first starts it again — synchronously, before sending, with no other request number
handed out in between. So every request from ``STOP_AT`` to ``START_AT - 1`` is sent while Redis is
down and every request from ``START_AT`` on is sent after it answers again; requests already in
flight at a switch may land on either side: they must still get a 200 with one of the two known answers.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from dataclasses import dataclass

import httpx
import uvicorn

from features.settings import Settings
from service.app import create_app
from service.redis_server import LocalRedis
from tests.conftest import TinyStore, publish_tiny

KEY = "test-key"
N_REQUESTS, CONCURRENCY = 300, 8
STOP_AT, START_AT = 100, 200
USERS = ("u1", "u2", "stranger")
# Known answers for k=3 (see tiny_store): from Redis, u1 → its list C B D (A bought, G unavailable);
# u2 → its list C B, then vip's A; stranger → global A D C. Degraded (in-memory global list): A D C.
FROM_REDIS = {"u1": ["C", "B", "D"], "u2": ["C", "B", "A"], "stranger": ["A", "D", "C"]}
DEGRADED = ["A", "D", "C"]


@dataclass(frozen=True)
class Outcome:
    number: int
    user: str
    done_while: str  # Redis state when the answer arrived: "up", "down" or "back"
    status: int
    degraded: bool | None
    items: list[str]


async def load_through_outage(server: LocalRedis) -> list[Outcome]:
    """Run the request loop; Redis goes down at request ``STOP_AT`` and comes back at ``START_AT``."""
    app = create_app(Settings(home=server.home, redis_url=server.url, api_keys=[KEY]))
    listener = socket.create_server(("127.0.0.1", 0))  # a free port, listening before uvicorn starts: no wait loop
    web = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
    serving = asyncio.create_task(web.serve(sockets=[listener]))
    numbers = itertools.count()
    state = {"redis": "up"}
    outcomes: list[Outcome] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while (n := next(numbers)) < N_REQUESTS:
            if n == STOP_AT:  # blocking on purpose: nothing else runs until Redis has exited
                server.stop()
                state["redis"] = "down"
            elif n == START_AT:
                server.start()
                state["redis"] = "back"
            user = USERS[n % len(USERS)]
            response = await client.get(f"/v1/users/{user}/recommendations", params={"k": 3})
            body = response.json()
            items = [item["item_id"] for item in body.get("items", [])]
            outcomes.append(Outcome(n, user, state["redis"], response.status_code, body.get("degraded"), items))

    host, port = listener.getsockname()[:2]
    limits = httpx.Limits(max_connections=CONCURRENCY)
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", headers={"X-API-Key": KEY}, limits=limits) as c:
            await asyncio.gather(*(worker(c) for _ in range(CONCURRENCY)))
    finally:
        web.should_exit = True
        await serving
        listener.close()
    return sorted(outcomes, key=lambda o: o.number)


def test_no_5xx_and_degraded_only_while_redis_is_down(own_redis: LocalRedis, tiny_store: TinyStore) -> None:
    publish_tiny(own_redis, tiny_store)
    outcomes = asyncio.run(load_through_outage(own_redis))

    assert len(outcomes) == N_REQUESTS
    assert {o.status for o in outcomes} == {200}  # no 5xx (nor anything else) at any point

    before = [o for o in outcomes if o.number < STOP_AT and o.done_while == "up"]
    during = [o for o in outcomes if STOP_AT <= o.number < START_AT and o.done_while == "down"]
    after = [o for o in outcomes if o.number >= START_AT]
    # At most CONCURRENCY - 1 other requests are in flight when a switch happens.
    assert len(before) >= STOP_AT - CONCURRENCY
    assert len(during) >= START_AT - STOP_AT - CONCURRENCY
    assert len(after) == N_REQUESTS - START_AT

    assert all(o.degraded is False and o.items == FROM_REDIS[o.user] for o in before)
    assert all(o.degraded is True and o.items == DEGRADED for o in during)
    assert all(o.degraded is False and o.items == FROM_REDIS[o.user] for o in after)
    # Requests in flight across a switch (the rest) get one of the two known answers.
    assert all(o.items == (DEGRADED if o.degraded else FROM_REDIS[o.user]) for o in outcomes)

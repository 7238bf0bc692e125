"""The tenants' API under load, on PostgreSQL with Redis as the broker (nobody consumes the queue).

Three measurements, against a real `lorafleet api serve` process on a fresh PostgreSQL database
(created, migrated to head, dropped at the end) and a Redis database (flushed before and after):
1. `POST /v1/fine_tuning/jobs` at 1 client (one keep-alive connection, as the openai client
   keeps), interleaved in the same run with the same job submitted by `lorafleet job submit` in a
   fresh process and through the console script with `lorafleet cli-server` running (what a
   script calling the CLI pays). Target: API p50 <= 20 ms.
2. 50 concurrent clients over 10 tenants (a key each; quotas and the rate limit raised so nothing
   is refused, refusals counted apart), with `--workers 1` and `--workers 2`: submits/s, p50/p99.
   Target: >= 100 submits/s, p99 <= 500 ms. The load generator (asyncio over raw HTTP/1.1
   keep-alive connections) shares the 2 cores: its CPU (getrusage of this process), the
   server's (psutil, the uvicorn processes) and PostgreSQL's (the backends of this database) over
   the wall time, in cores, and per submit in CPU milliseconds (what moves least with the
   machine's load). The broker's queue must hold exactly one message per job in the registry.
3. `GET /v1/fine_tuning/jobs?limit=20` with --fill (100,000) jobs in the registry, inserted with
   one INSERT ... SELECT generate_series, 60% of them one tenant's: the first page, a page deep
   into that tenant's list (`after=` its middle job) and a small tenant's first page, p50; and
   the queries the service runs for the deep page and the small tenant's page, counted, with the
   page query's EXPLAIN ANALYZE (an index scan, no OFFSET, no N+1). Target: p50 <= 50 ms.

usage: python bench/bench_api.py [--runs 20] [--requests 1000] [--fill 100000]
       [--redis-url redis://127.0.0.1:6379/15]
Prints one JSON object (the 1-minute load average at start and end). The machine is shared, so
compare the ratios (API over CLI) and the CPU per submit, not the seconds. About 3 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from benchlib import DEFAULT_DATA, ROOT

from orchestrator.config import load_settings
from orchestrator.registry import db
from orchestrator.registry.db import session_scope
from orchestrator.services.keys import create_key
from orchestrator.services.tenants import create_tenant
from tests.api_server import free_port
from tests.registry_fixtures import create_pg_database, drop_pg_database, pg_database_url

BASE = "tiny-bert"
BODY = {"model": BASE, "training_file": "builtin-glue-sst2"}
CLI_ARGS = ["job", "submit", "--tenant", "t0", "--task", "sst2", "--base-model", BASE]
TENANTS = 10
CLIENTS = 50
BIG_SHARE = 0.6  # of the --fill jobs, the first tenant's


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(seconds: list[float]) -> dict[str, float]:
    return {"n": len(seconds), "p50_ms": round(1000 * statistics.median(seconds), 2),
            "p90_ms": round(1000 * _pct(seconds, 0.9), 2), "p99_ms": round(1000 * _pct(seconds, 0.99), 2)}


class Server:
    """`lorafleet api serve` as a process (its CPU: the process and its uvicorn workers)."""

    def __init__(self, env: dict[str, str], workers: int, log: Path):
        self.port = free_port()
        argv = [sys.executable, "-m", "orchestrator.cli.entry", "api", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", str(workers)]
        self.log = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the API did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        time.sleep(1.0 if workers > 1 else 0.0)  # every worker up, not only the first

    def cpu_s(self) -> float:
        procs = [psutil.Process(self.proc.pid)]
        procs += procs[0].children(recursive=True)
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def _cli_env(env: dict[str, str], socket_path: Path) -> dict[str, str]:
    return {**env, "LORAFLEET_CLI_SOCKET": str(socket_path)}


def one_client(env: dict[str, str], server: Server, key: str, runs: int) -> dict:
    """API submits on one keep-alive connection, interleaved with the CLI's (fresh / served)."""
    script = str(Path(sys.executable).with_name("lorafleet"))
    served = _cli_env(env, Path(env["LORAFLEET_HOME"]) / "run" / "cli.sock")
    subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "cli-server", "start"], env=served,
                   cwd=ROOT, check=True, capture_output=True)
    conn = http.client.HTTPConnection("127.0.0.1", server.port)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = json.dumps(BODY)
    api, fresh, via_server, fresh_cpu = [], [], [], []
    try:
        for i in range(runs * 5 + 5):
            t0 = time.perf_counter()
            conn.request("POST", "/v1/fine_tuning/jobs", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise SystemExit(f"submit answered {response.status}: {data[:500]!r}")
            if i >= 5:  # the first requests warm the process (imports on first use, the pool)
                api.append(time.perf_counter() - t0)
            if i == 4:
                server_cpu0 = server.cpu_s()  # the server idles while the CLI runs
            if i % 5 == 0 and i // 5 < runs:
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "orchestrator.cli.main", *CLI_ARGS], env=env, cwd=ROOT,
                               check=True, capture_output=True)
                fresh.append(time.perf_counter() - t0)
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                fresh_cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
                t0 = time.perf_counter()
                subprocess.run([script, *CLI_ARGS], env=served, cwd=ROOT, check=True, capture_output=True)
                via_server.append(time.perf_counter() - t0)
                # uvicorn closes a connection idle for 5 s: a new one, opened before the next timing.
                conn.close()
                conn.request("GET", "/healthz")
                conn.getresponse().read()
        server_cpu = server.cpu_s() - server_cpu0
    finally:
        conn.close()
        subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "cli-server", "stop"], env=served,
                       cwd=ROOT, capture_output=True)
    out = {"api": _summary(api), "cli_fresh_process": _summary(fresh),
           "cli_served": _summary(via_server),
           "cli_fresh_cpu_s_p50": round(statistics.median(fresh_cpu), 3),
           "api_server_cpu_ms_per_submit": round(1000 * server_cpu / len(api), 2)}
    out["api_p50_over_cli_fresh"] = round(statistics.median(api) / statistics.median(fresh), 4)
    out["api_p50_over_cli_served"] = round(statistics.median(api) / statistics.median(via_server), 4)
    return out


async def _client(port: int, key: str, count: int, latencies: list[float], statuses: dict[int, int],
                  body: bytes) -> None:
    """One client: `count` submits on one keep-alive connection (HTTP/1.1 written by hand: the
    generator must take as little of the shared cores as it can)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (f"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _load(port: int, keys: list[str], requests: int) -> tuple[list[float], dict[int, int], float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    body = json.dumps(BODY).encode()
    per_client = requests // CLIENTS
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(port, keys[i % len(keys)], per_client, latencies, statuses, body)
                           for i in range(CLIENTS)))
    return latencies, statuses, time.perf_counter() - t0


class PostgresCpu(threading.Thread):
    """CPU seconds of the PostgreSQL backends connected to a database while it runs (the pool
    opens and closes connections under load: each is sampled every 0.2 s; its CPU after the last
    sample of a backend that exits is missed)."""

    def __init__(self, database: str):
        super().__init__(daemon=True)
        import psycopg

        from tests.registry_fixtures import PG_ADMIN_URL

        self.conn = psycopg.connect(PG_ADMIN_URL, autocommit=True)
        self.database, self.first, self.last = database, {}, {}
        self.done = threading.Event()
        self._sample(baseline=True)

    def _sample(self, baseline: bool = False) -> None:
        query = "SELECT pid FROM pg_stat_activity WHERE datname = %s"
        for (pid,) in self.conn.execute(query, (self.database,)).fetchall():
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            self.first.setdefault(pid, t.user + t.system if baseline else 0.0)
            self.last[pid] = t.user + t.system

    def run(self) -> None:
        while not self.done.wait(0.2):
            self._sample()

    def stop(self) -> float:
        self.done.set()
        self.join()
        self._sample()
        self.conn.close()
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


def _jobs_in_registry(database: str) -> int:
    import psycopg

    from tests.registry_fixtures import pg_database_url

    with psycopg.connect(pg_database_url(database).replace("+psycopg", ""), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]


def concurrent(server: Server, keys: list[str], requests: int, redis_client, queue: str,
               database: str) -> dict:
    asyncio.run(_load(server.port, keys, CLIENTS * 2))  # warm every worker and connection
    queued_before = redis_client.llen(queue)
    memory_before = redis_client.info("memory")["used_memory"]
    cpu_server0, postgres = server.cpu_s(), PostgresCpu(database)
    postgres.start()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    latencies, statuses, wall = asyncio.run(_load(server.port, keys, requests))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_server = server.cpu_s() - cpu_server0
    cpu_postgres = postgres.stop()
    accepted = statuses.get(200, 0)
    # A job's message is sent once its request's session closes, after the response: wait for the
    # last ones. Nobody consumes the queue, so it must hold exactly one message per job submitted.
    jobs = _jobs_in_registry(database)
    deadline = time.monotonic() + 10
    while redis_client.llen(queue) < jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    grown = redis_client.llen(queue) - queued_before
    return {
        "clients": CLIENTS, "tenants": len(keys), "requests": len(latencies), "statuses": statuses,
        "wall_s": round(wall, 2), "submits_per_s": round(accepted / wall, 1), **_summary(latencies),
        "generator_cores": round((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / wall, 3),
        "server_cores": round(cpu_server / wall, 3),
        "postgres_cores": round(cpu_postgres / wall, 3),  # the backends serving this database
        "server_cpu_ms_per_submit": round(1000 * cpu_server / max(accepted, 1), 2),
        "postgres_cpu_ms_per_submit": round(1000 * cpu_postgres / max(accepted, 1), 2),
        "queue_growth": grown,
        "queue_messages_per_job_in_registry": round(redis_client.llen(queue) / jobs, 4),
        "redis_bytes_per_message": round((redis_client.info("memory")["used_memory"] - memory_before)
                                         / max(grown, 1)),
    }


def fill(url: str, total: int, tenant_ids: list[str]) -> float:
    """`total` finished jobs copied from one real job row, 60% the first tenant's, the rest spread;
    one created second apart, the newest an hour ago (so they sort below what the bench submits)."""
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs' "
            "ORDER BY ordinal_position")]
        big = int(total * BIG_SHARE)
        others = f"(%(others)s::text[])[1 + g %% {len(tenant_ids) - 1}]"
        chosen = {
            "id": "md5(random()::text || g)::uuid::text",
            "tenant_id": f"CASE WHEN g <= {big} THEN %(big)s ELSE {others} END",
            "state": "(ARRAY['succeeded','failed','cancelled'])[1 + g %% 3]",
            "created_at": "now() - interval '1 hour' - g * interval '1 second'",
            "finished_at": "now() - interval '1 hour' - g * interval '1 second' + interval '1 minute'",
            "idempotency_key": "NULL",
        }
        select = ", ".join(chosen.get(c, f"j.{c}") for c in columns)
        template = conn.execute("SELECT id FROM jobs LIMIT 1").fetchone()[0]
        conn.execute(f"INSERT INTO jobs ({', '.join(columns)}) SELECT {select} FROM jobs j, "
                     f"generate_series(1, %(total)s) g WHERE j.id = %(template)s",
                     {"big": tenant_ids[0], "others": tenant_ids[1:], "total": total, "template": template})
        conn.execute("ANALYZE jobs")
    return time.perf_counter() - t0


def _get(conn: http.client.HTTPConnection, path: str, key: str) -> dict:
    conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise SystemExit(f"{path} answered {response.status}: {data[:500]!r}")
    return json.loads(data)


def listing(server: Server, key: str, small_key: str, runs: int, middle: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", server.port)
    first = _get(conn, "/v1/fine_tuning/jobs?limit=20", key)
    # The middle of the big tenant's list: walk there by pages of 100 (what a client does).
    after, walked = first["last_id"], 20
    while walked < middle:
        got = _get(conn, f"/v1/fine_tuning/jobs?limit=100&after={after}", key)
        after, walked = got["last_id"], walked + 100
    times: dict[str, list[float]] = {"first_page": [], "deep_page": [], "small_tenant_first_page": []}
    paths = {"first_page": ("/v1/fine_tuning/jobs?limit=20", key),
             "deep_page": (f"/v1/fine_tuning/jobs?limit=20&after={after}", key),
             "small_tenant_first_page": ("/v1/fine_tuning/jobs?limit=20", small_key)}
    for _ in range(runs):
        for name, (path, k) in paths.items():
            t0 = time.perf_counter()
            page = _get(conn, path, k)
            times[name].append(time.perf_counter() - t0)
            assert len(page["data"]) == 20, page
    conn.close()
    return {"deep_page_after_position": walked, **{k: _summary(v) for k, v in times.items()}}, after


def explain(settings, tenant_slug: str, after: str | None) -> dict:
    """The statements the service runs for a page (after the job `after`), and their plans."""
    from sqlalchemy import event

    from orchestrator.services.fine_tuning_views import list_fine_tuning_jobs

    engine = db.get_engine(settings.database_url)
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        # (the process's first session checks the schema's revision once: not the listing's)
        if statement.lstrip().upper().startswith("SELECT") and "alembic_version" not in statement:
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with session_scope(settings) as s:
            list_fine_tuning_jobs(s, tenant_slug, after=after, limit=20)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    plans = []
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        for statement, parameters in statements:
            with raw.cursor() as cur:
                cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + statement, parameters)
                plans.append([r[0] for r in cur.fetchall()])
        raw.rollback()
    jobs_plan = next(p for p, (s, _) in zip(plans, statements, strict=True)
                     if "FROM jobs" in s and "ORDER BY" in s)
    text = "\n".join(jobs_plan)
    return {"queries": len(statements), "statements": [" ".join(s.split())[:90] for s, _ in statements],
            "page_query_plan": jobs_plan,
            "page_query_uses_index": "Index" in text and "Seq Scan" not in text,
            "offset_in_any_query": any("OFFSET" in s.upper() for s, _ in statements)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--fill", type=int, default=100_000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--redis-url", default=os.environ.get("LORAFLEET_BENCH_REDIS_URL",
                                                              "redis://127.0.0.1:6379/15"))
    args = parser.parse_args()
    import redis

    load_before = os.getloadavg()[0]
    redis_client = redis.Redis.from_url(args.redis_url)
    redis_client.flushdb()
    name = create_pg_database()
    url = pg_database_url(name)
    results: dict = {"load_average_1min": None}
    try:
        db.upgrade(url)
        with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
            home = Path(tmp) / "home"
            home.mkdir()
            env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
            env.update({"LORAFLEET_HOME": str(home), "LORAFLEET_DATA_DIR": DEFAULT_DATA,
                        "LORAFLEET_DATA_ROOTS": str(home.parent), "HF_HUB_OFFLINE": "1",
                        "PYTHONPATH": str(ROOT), "LORAFLEET_DATABASE_URL": url,
                        "LORAFLEET_BROKER_URL": args.redis_url, "LORAFLEET_TENANT_MAX_QUEUED": "10000000",
                        "LORAFLEET_API_RATE_LIMIT_PER_MINUTE": "10000000"})
            settings = load_settings(env)
            os.environ.update({k: v for k, v in env.items() if k.startswith("LORAFLEET_")})
            keys, tenant_ids = [], []
            with session_scope(settings) as s:
                for i in range(TENANTS):
                    tenant_ids.append(create_tenant(s, f"t{i}").id)
                    keys.append(create_key(s, f"t{i}")[1])
            db.forget_engine(url)

            server = Server(env, 1, home / "api-1.log")
            try:
                results["one_client"] = one_client(env, server, keys[0], args.runs)
                results["concurrent"] = {"workers_1": concurrent(server, keys, args.requests, redis_client,
                                                                 settings.queue, name)}
            finally:
                server.stop()
            for workers in [int(w) for w in args.workers.split(",") if w != "1"]:
                server = Server(env, workers, home / f"api-{workers}.log")
                try:
                    results["concurrent"][f"workers_{workers}"] = concurrent(
                        server, keys, args.requests, redis_client, settings.queue, name)
                finally:
                    server.stop()

            results["fill"] = {"jobs": args.fill, "seconds": round(fill(url, args.fill, tenant_ids), 2)}
            server = Server(env, 1, home / "api-list.log")
            try:
                results["list"], after = listing(server, keys[0], keys[1], args.runs,
                                                   int(BIG_SHARE * args.fill / 2))
            finally:
                server.stop()
            results["list"]["explain_deep_page"] = explain(settings, "t0", after)
            results["list"]["explain_small_tenant_first_page"] = explain(settings, "t1", None)
            db.forget_engine(url)
    finally:
        drop_pg_database(name)
        redis_client.flushdb()
    results["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # start, end
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

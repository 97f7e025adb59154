"""Serving benchmark: a published feed fetched by many clients at once, as retailCRM and browsers poll it.

The app runs as in production (gunicorn, two workers, ``wsgi:app`` with its scheduler, the download
limit off) on loopback, on a data directory whose feed is built from the emulator (N assortment rows, no pictures). The
scheduler builds every feed once at start; the feed's interval is a day, so that build is the only
one: the load starts after it has ended, and the emulator is stopped. Then C clients load the feed
for D seconds per kind of request: a full GET, a full GET with Accept-Encoding: gzip (the
precompressed copy) and a conditional GET with If-None-Match (304). Clients keep their connection
while the server does (gunicorn's sync workers close it after each response). Every response is
checked (status, encoding, body length = Content-Length = the published file's size); anything
else counts as an error. The load comes from wrk when it is installed, else from a Python loop
(threads, http.client). Prints requests/s, MB/s, p50/p95/p99 latency and errors per kind, and the
peak RSS of the gunicorn workers during each kind (VmHWM, reset after the build). Goals: no
errors, p95 latency under 2 s for every kind, worker peak RSS < 150 MB.

    python bench/serve_bench.py                          # 20,000 rows, 50 clients, 10 s per kind
    python bench/serve_bench.py --rows 100000 --clients 20 --seconds 30
    python bench/serve_bench.py --loader python          # the Python loop even where wrk is installed
    python bench/serve_bench.py --json                   # the figures as JSON for bench/summary.py
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from output import bench_parser, print_json, table_output

from emulator.harness import ROOT, Gunicorn, PeakRss, emulator_process

sys.path.insert(0, str(ROOT))
from core.settings import FeedSettings  # noqa: E402
from feeds.build import feed_source  # noqa: E402  (the app's modules, for the first build's run record)
from store import CatalogStore, open_catalog  # noqa: E402

FEED = "bench"
WORKERS = 2
BUILD_TIMEOUT = 900  # seconds the first build may take (100k rows with MoySklad's rate limits take minutes)
P95_GOAL_MS = 2000  # a client polling while 49 others do still has the whole feed (or its 304) within 2 s
RSS_GOAL_MB = 150
READ_CHUNK = 256 * 1024
ERROR_EXAMPLES = 3

WRK_SCRIPT = r"""
-- Checks every response in wrk's threads and reports one JSON line (prefixed BENCH) at the end.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  want_status, want_length, want_encoding = tonumber(args[1]), tonumber(args[2]), args[3]
  bad, body_bytes = 0, 0
end

local function header(headers, name)
  for key, value in pairs(headers) do
    if key:lower() == name then return value end
  end
end

function response(status, headers, body)
  local declared = tonumber(header(headers, "content-length") or "0")
  local encoding = header(headers, "content-encoding") or "identity"
  if status ~= want_status or #body ~= want_length or declared ~= #body or (want_encoding ~= "any" and encoding ~= want_encoding) then
    bad = bad + 1
  end
  body_bytes = body_bytes + #body
end

function done(summary, latency, requests)
  local bad_total, bytes_total = 0, 0
  for _, thread in ipairs(threads) do
    bad_total = bad_total + thread:get("bad")
    bytes_total = bytes_total + thread:get("body_bytes")
  end
  local e = summary.errors
  io.write(string.format('BENCH {"requests": %d, "seconds": %.3f, "bytes": %d, "bad": %d, "socket_errors": %d, '
    .. '"p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f}\n', summary.requests, summary.duration / 1e6, bytes_total,
    bad_total, e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""


@dataclass(frozen=True)
class Kind:
    """One kind of request and what every complete answer to it looks like."""

    name: str
    headers: dict
    status: int
    length: int
    encoding: str | None = "identity"  # None: not checked (a 304 carries no entity headers)


@dataclass
class Tally:
    """What one client (or all of them) saw of one kind of request."""

    latencies: list[float] = field(default_factory=list)
    bytes: int = 0
    errors: int = 0
    examples: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.errors += 1
        if len(self.examples) < ERROR_EXAMPLES:
            self.examples.append(problem)

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.bytes += other.bytes
        self.errors += other.errors
        self.examples += other.examples[:ERROR_EXAMPLES - len(self.examples)]


def config_text(workdir: Path, base_url: str) -> str:
    """The served app's config: one feed built from the emulator, rebuilt only once a day. Without the
    per-worker download limit (``max_feed_downloads``, 6 by default): beyond it the app answers 503 with
    Retry-After, as it should under 50 clients, and this benchmark measures serving, not refusing (the
    limit has its own tests, tests/feeds/test_serving_under_load.py)."""
    return (f"data_dir: {workdir / 'data'}\nlog_level: WARNING\nmax_feed_downloads: 0\n"
            f"moysklad:\n  base_url: {base_url}\n  token: bench-token\n"
            f"feeds:\n  - name: {FEED}\n    pictures: none\n    min_ratio: 0\n    interval_minutes: 1440\n")


def wait_for_first_build(store: CatalogStore) -> dict:
    """The scheduler builds every feed at start (next_run_time=now); the load must not overlap that build."""
    deadline = time.monotonic() + BUILD_TIMEOUT
    while time.monotonic() < deadline:
        sync = store.last_run("moysklad", "sync")
        if sync and sync["status"] not in ("running", "ok"):
            raise SystemExit(f"the first build's sync failed: {sync['error']}")
        build = store.last_run(feed_source(FeedSettings(name=FEED)), "build")
        if build and build["status"] != "running":
            if build["status"] != "ok":
                raise SystemExit(f"the first build failed: {build['error']}")
            return build
        time.sleep(0.5)
    raise SystemExit(f"the first build did not end within {BUILD_TIMEOUT} s")


def fetch(conn: http.client.HTTPConnection, path: str, headers: dict, buffer: memoryview) -> tuple[int, dict, int]:
    """One request on a kept connection: status, headers (lowercase names) and the body's length, read to the end."""
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    received = 0
    while count := response.readinto(buffer):
        received += count
    return response.status, {k.lower(): v for k, v in response.getheaders()}, received


def problem_with(kind: Kind, status: int, headers: dict, received: int) -> str | None:
    """Why a response is not a complete answer of its kind, or None."""
    declared = int(headers.get("content-length", 0))
    encoding = headers.get("content-encoding", "identity")
    if status != kind.status:
        return f"status {status}, expected {kind.status}"
    if kind.encoding and encoding != kind.encoding:
        return f"Content-Encoding {encoding}, expected {kind.encoding}"
    if received != declared or received != kind.length:
        return f"{received} bytes received, Content-Length {declared}, published file {kind.length}"
    return None


def kinds_of_request(host: str, port: int, path: str) -> list[Kind]:
    """The three kinds, with the sizes and the ETag the published feed answers with now."""
    conn, buffer = http.client.HTTPConnection(host, port, timeout=60), memoryview(bytearray(READ_CHUNK))
    try:
        plain_status, plain, _ = fetch(conn, path, {}, buffer)
        gzip_status, gzipped, _ = fetch(conn, path, {"Accept-Encoding": "gzip"}, buffer)
    finally:
        conn.close()
    if plain_status != 200 or gzip_status != 200 or gzipped.get("content-encoding") != "gzip":
        raise SystemExit(f"the feed is not served as expected: {plain_status} / {gzip_status} {gzipped}")
    return [Kind("plain", {}, 200, int(plain["content-length"])),
            Kind("gzip", {"Accept-Encoding": "gzip"}, 200, int(gzipped["content-length"]), "gzip"),
            Kind("304", {"Accept-Encoding": "gzip", "If-None-Match": gzipped["etag"]}, 304, 0, None)]


def python_load(host: str, port: int, path: str, kind: Kind, clients: int, seconds: float) -> tuple[Tally, float]:
    """C threads, each a client on one connection (reopened when the server closes it), for D seconds."""
    deadline = time.monotonic() + seconds
    tallies = [Tally() for _ in range(clients)]

    def client(tally: Tally) -> None:
        conn, buffer = http.client.HTTPConnection(host, port, timeout=60), memoryview(bytearray(READ_CHUNK))
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                status, headers, received = fetch(conn, path, kind.headers, buffer)
            except (OSError, http.client.HTTPException) as exc:
                tally.fail(f"{type(exc).__name__}: {exc}")
                conn.close()
                continue
            tally.bytes += received
            problem = problem_with(kind, status, headers, received)
            if problem:
                tally.fail(problem)
            else:
                tally.latencies.append(time.perf_counter() - started)
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(tally,)) for tally in tallies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    return total, elapsed


def wrk_load(wrk: str, url: str, kind: Kind, clients: int, seconds: float) -> dict:
    """The same load from wrk; its Lua script checks each response and sums the figures."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        headers = [arg for name, value in kind.headers.items() for arg in ("-H", f"{name}: {value}")]
        done = subprocess.run([wrk, "-t", str(min(clients, os.cpu_count() or 1)), "-c", str(clients), "-d", f"{max(1, round(seconds))}s",
                               "--timeout", "60s", "-s", script.name, *headers, url, "--",
                               str(kind.status), str(kind.length), kind.encoding or "any"],
                              capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode or not lines:
        raise SystemExit(f"wrk failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads(lines[-1][len("BENCH "):])


def measure(kind: Kind, wrk: str | None, host: str, port: int, clients: int, seconds: float) -> dict:
    """One kind's figures, from wrk when given, else from the Python loop."""
    path = f"/feeds/{FEED}.xml"
    if wrk:
        result = wrk_load(wrk, f"http://{host}:{port}{path}", kind, clients, seconds)
        figures = {"requests": result["requests"], "errors": result["bad"] + result["socket_errors"], "error_examples": [],
                   "elapsed": result["seconds"], "bytes": result["bytes"],
                   "p50_ms": result["p50_ms"], "p95_ms": result["p95_ms"], "p99_ms": result["p99_ms"]}
    else:
        tally, elapsed = python_load(host, port, path, kind, clients, seconds)
        cuts = statistics.quantiles(tally.latencies, n=100, method="inclusive") if len(tally.latencies) > 1 else [0.0] * 99
        figures = {"requests": len(tally.latencies) + tally.errors, "errors": tally.errors, "error_examples": tally.examples,
                   "elapsed": elapsed, "bytes": tally.bytes,
                   "p50_ms": cuts[49] * 1000, "p95_ms": cuts[94] * 1000, "p99_ms": cuts[98] * 1000}
    figures["req_per_s"] = figures["requests"] / figures["elapsed"]
    figures["mb_per_s"] = figures["bytes"] / 1e6 / figures["elapsed"]
    return figures


def run(args, workdir: Path, out) -> dict:
    """Build, serve, load each kind in turn; the figures of every kind and of the setup."""
    emulator, base_url = emulator_process(args.rows, token="bench-token")
    try:
        store = open_catalog(workdir / "data" / "catalog.sqlite")  # opened before the server, so never waits for its writes
        gunicorn = Gunicorn(workdir, config_text(workdir, base_url), WORKERS).wait_ready()
        server, base = gunicorn.process, gunicorn.base
        try:
            started = time.monotonic()
            build = wait_for_first_build(store)
        finally:
            store.close()
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    try:
        print(f"first build (full sync + render + publish, in the server's scheduler): {time.monotonic() - started:.1f} s, "
              f"{build['counts'].get('offers', 0)} offers", file=out)
        host, port = base.removeprefix("http://").split(":")
        kinds = kinds_of_request(host, int(port), f"/feeds/{FEED}.xml")
        wrk = None if args.loader == "python" else shutil.which("wrk")
        if args.loader == "wrk" and not wrk:
            raise SystemExit("wrk is not installed")
        print(f"feed {kinds[0].length / 1e6:.1f} MB, gzip {kinds[1].length / 1e6:.1f} MB; gunicorn {WORKERS} workers; "
              f"{args.clients} clients, {args.seconds:g} s per kind, load from {'wrk' if wrk else 'a Python loop'}", file=out)
        print(f"{'kind':<6} {'requests':>9} {'errors':>7} {'req/s':>8} {'MB/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'worker RSS MB':>14}", file=out)
        rss = PeakRss(server.pid)
        results = []
        for kind in kinds:
            reset = rss.reset()
            figures = measure(kind, wrk, host, int(port), args.clients, args.seconds)
            rss.sample()
            workers = rss.of_role("worker")
            figures.update(kind=kind.name, rss_reset=reset, worker_rss_mb=workers, peak_rss_mb=max(workers, default=0.0))
            figures["goals"] = {"no errors": figures["errors"] == 0, f"p95 < {P95_GOAL_MS / 1000:g} s": figures["p95_ms"] < P95_GOAL_MS,
                                f"worker RSS < {RSS_GOAL_MB} MB": figures["peak_rss_mb"] < RSS_GOAL_MB}
            results.append(figures)
            print(f"{kind.name:<6} {figures['requests']:>9} {figures['errors']:>7} {figures['req_per_s']:>8.0f} "
                  f"{figures['mb_per_s']:>8.1f} {figures['p50_ms']:>8.1f} {figures['p95_ms']:>8.1f} {figures['p99_ms']:>8.1f} "
                  f"{' + '.join(f'{mb:.0f}' for mb in workers):>14}", file=out, flush=True)
            for example in figures["error_examples"]:
                print(f"       error: {example}", file=out)
    finally:
        server.terminate()
        server.wait(timeout=60)
    if not all(r["rss_reset"] for r in results):
        print("note: VmHWM could not be reset, so the workers' peak RSS includes the first build", file=out)
    return {"rows": args.rows, "offers": build["counts"].get("offers", 0), "feed_bytes": kinds[0].length,
            "gzip_bytes": kinds[1].length, "clients": args.clients, "seconds": args.seconds,
            "loader": "wrk" if wrk else "python", "kinds": results}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rows", type=int, default=20_000, help="assortment rows of the feed's catalog")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=10, help="load per kind of request")
    parser.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto",
                        help="wrk, the Python loop, or wrk when installed (default)")
    args = parser.parse_args()
    out = table_output(args)
    print(f"serve benchmark: {args.rows} assortment rows", file=out, flush=True)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as workdir:
        result = run(args, Path(workdir), out)
    errors = sum(r["errors"] for r in result["kinds"])
    slow = max(r["p95_ms"] for r in result["kinds"])
    rss = max(r["peak_rss_mb"] for r in result["kinds"])
    print(f"goal no errors: {'met' if errors == 0 else 'MISSED'}; goal p95 < {P95_GOAL_MS / 1000:g} s: "
          f"{'met' if slow < P95_GOAL_MS else 'MISSED'}; goal worker peak RSS < {RSS_GOAL_MB} MB: "
          f"{'met' if rss < RSS_GOAL_MB else 'MISSED'}", file=out)
    if args.json:
        print_json("serve", result.pop("kinds"), **result)


if __name__ == "__main__":
    main()

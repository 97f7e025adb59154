"""Many clients on one instance: hundreds of MoySklad accounts, each with one feed built every 2 minutes.

The app runs as deployed (``gunicorn -c gunicorn.conf.py wsgi:app``, two workers, the scheduler in
one of them) on loopback. One emulator process stands in for every account: the same generated
catalog, a token per account (``emulator run --other-tokens``), each token with its own rate budget
(45 units / 3 s) and parallel slots, as MoySklad counts them per user; every answer is 20 ms late
(``--latency-ms``). No pictures are fetched (``--pictures`` to change that).

For each scenario (accounts × products) it measures: the time until the first feed and until every
feed is published (files on disk); the peak RSS (VmHWM) and the steady RSS (VmRSS, after the rounds
that follow the first) of both workers together, and their threads; the longest wait in the build
queue (the scheduler's state file); and whether the rounds keep up with the interval: the first
round ends within one interval, and afterwards no feed goes longer than an interval (plus 10 s)
between two builds. Goals (issue 16): peak RSS < 600 MB at 200 accounts and flat from 50 to 200
(within 25 %); every feed published within 2 minutes of the start at 200 × 500.

    python bench/many_clients_bench.py                      # 50 and 200 accounts × 500, 20 accounts × 20,000
    python bench/many_clients_bench.py --scenarios 200x500 --pool 16
    python bench/many_clients_bench.py --scenarios 50x500,200x500 --app-root /tmp/before   # another checkout
    python bench/many_clients_bench.py --size small --json  # 30 accounts × 300, every 30 s (bench/summary.py)
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path

from output import bench_parser, print_json, table_output

from emulator.harness import EMULATOR_TOKEN, ROOT, Gunicorn, PeakRss, descendant_pids, emulator_process

WORKERS = 2
PEAK_GOAL_MB = 600  # both workers, 200 accounts
FLAT_TOLERANCE = 0.25  # peak RSS at 200 accounts within 25 % of that at 50
PUBLISHED_GOAL_SECONDS = 120  # every feed of 200 × 500 published within this long of the start
GAP_SLACK_SECONDS = 10  # a feed's builds may be this much further apart than the interval (queue, 1 s times)
SCENARIOS = {"full": "50x500,200x500,20x20000", "small": "30x300"}
INTERVALS = {"full": 2.0, "small": 0.5}  # minutes between a feed's builds
# The "before" table of issue 16 (one thread per account, all starting at once), for comparison.
BEFORE = {50: {"first_s": 31, "all_s": 36, "peak_mb": 928, "steady_mb": 520, "threads": 57},
          200: {"first_s": 155, "all_s": 240, "peak_mb": 3300, "steady_mb": 1500, "threads": 208}}


def config_text(workdir: Path, base_url: str, accounts: int, pool: int, pictures: str, interval: float) -> str:
    lines = [f"data_dir: {workdir / 'data'}", "public_url: http://127.0.0.1:8080"]
    if pool:
        lines.append(f"max_concurrent_builds: {pool}")
    lines.append("accounts:")
    for number in range(1, accounts + 1):
        name = f"shop-{number:03d}"
        lines += [f"  - name: {name}",
                  f"    moysklad: {{base_url: '{base_url}', token: '{EMULATOR_TOKEN}-{number}'}}",
                  f"    feeds: [{{name: {name}, pictures: {pictures}, interval_minutes: {interval:g}}}]"]
    return "\n".join(lines) + "\n"


def worker_status(master_pid: int) -> list[dict]:
    """VmRSS, VmHWM and threads of each gunicorn worker."""
    found = []
    for pid in descendant_pids(master_pid):
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if "VmRSS" in fields:
            found.append({"pid": pid, "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
                          "hwm_mb": int(fields["VmHWM"].split()[0]) / 1024, "threads": int(fields["Threads"])})
    return found


def build_starts(data_dir: Path, accounts: int) -> dict[str, list[float]]:
    """Each feed's build start times (Unix seconds) from its account's runs table."""
    starts = {}
    for number in range(1, accounts + 1):
        name = f"shop-{number:03d}"
        path = data_dir / "accounts" / name / "catalog.sqlite"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT started_at FROM runs WHERE source = ? AND kind = 'build' ORDER BY id",
                                [f"feed:{name}"]).fetchall()
        finally:
            conn.close()
        starts[name] = [datetime.fromisoformat(started).timestamp() for (started,) in rows]
    return starts


def longest_wait(data_dir: Path) -> float | None:
    """The longest any work waited in the build queue (the scheduler's state file; None before the pool)."""
    import json

    try:
        return json.loads((data_dir / "build-queue.json").read_text())["longest_wait_seconds"]
    except (OSError, ValueError, KeyError):
        return None


def run_scenario(accounts: int, products: int, args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"many-clients-{accounts}x{products}-"))
    print(f"{accounts} accounts × {products} products: starting the emulator ...", file=sys.stderr, flush=True)
    emulator, base_url = emulator_process(products, latency_ms=args.latency_ms, other_tokens=accounts)
    try:
        server = Gunicorn(workdir, config_text(workdir, base_url, accounts, args.pool, args.pictures, args.interval), WORKERS,
                          deployed=True, root=Path(args.app_root))
        started = time.monotonic()
        try:
            result = observe(server, accounts, started, args)
        finally:
            server.stop()
    finally:
        emulator.terminate()
        emulator.wait()
    result.update(accounts=accounts, products=products, pool=args.pool or "default")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def observe(server: Gunicorn, accounts: int, started: float, args) -> dict:
    """Watch the files appear and the workers' memory, then the rounds that follow for ``--rounds`` intervals."""
    feeds = [server.data_dir / "accounts" / f"shop-{n:03d}" / "feeds" / f"shop-{n:03d}.xml" for n in range(1, accounts + 1)]
    rss = PeakRss(server.process.pid)
    first = every = None
    most_threads = 0
    deadline = started + args.timeout
    while every is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"not every feed was published within {args.timeout} s:\n{server.log()[-3000:]}")
        if server.process.poll() is not None:
            raise SystemExit(f"gunicorn exited:\n{server.log()[-3000:]}")
        rss.sample()
        most_threads = max(most_threads, sum(w["threads"] for w in worker_status(server.process.pid)))
        published = sum(path.exists() for path in feeds)
        now = time.monotonic() - started
        if published and first is None:
            first = now
        if published == accounts:
            every = now
        time.sleep(0.5)
    print(f"  every feed published after {every:.0f} s; watching {args.rounds} more rounds ...", file=sys.stderr, flush=True)
    interval = args.interval * 60
    watch_until = time.monotonic() + args.rounds * interval + GAP_SLACK_SECONDS
    while time.monotonic() < watch_until:
        rss.sample()
        most_threads = max(most_threads, sum(w["threads"] for w in worker_status(server.process.pid)))
        time.sleep(1)
    steady = worker_status(server.process.pid)
    peaks = rss.of_role("worker")
    starts = build_starts(server.data_dir, accounts)
    later_gaps = [later - earlier for times in starts.values() for earlier, later in pairwise(times[1:])]
    builds = sum(len(times) for times in starts.values())
    return {"first_published_s": round(first, 1), "all_published_s": round(every, 1),
            "peak_rss_mb": round(sum(peaks), 1), "peak_rss_per_worker_mb": [round(mb, 1) for mb in peaks],
            "steady_rss_mb": round(sum(w["rss_mb"] for w in steady), 1), "threads": most_threads,
            "longest_wait_s": longest_wait(server.data_dir), "builds": builds,
            "first_round_within_interval": every <= interval,
            "max_gap_after_first_s": round(max(later_gaps), 1) if later_gaps else None,
            "rounds_within_interval": bool(later_gaps) and max(later_gaps) <= interval + GAP_SLACK_SECONDS}


def goals(results: list[dict], interval: float) -> None:
    """Each result's goals, as issue 16 states them."""
    by_accounts = {(r["accounts"], r["products"]): r for r in results}
    for r in results:
        r["goals"] = {f"first round within {interval:g} min": r["first_round_within_interval"],
                      "later rounds within the interval": r["rounds_within_interval"]}
        if r["accounts"] >= 200 and r["products"] <= 500:
            r["goals"][f"peak RSS < {PEAK_GOAL_MB} MB"] = r["peak_rss_mb"] < PEAK_GOAL_MB
            r["goals"][f"every feed within {PUBLISHED_GOAL_SECONDS} s"] = r["all_published_s"] <= PUBLISHED_GOAL_SECONDS
            small = by_accounts.get((50, r["products"]))
            if small:
                r["goals"]["peak RSS flat from 50 accounts"] = r["peak_rss_mb"] <= small["peak_rss_mb"] * (1 + FLAT_TOLERANCE)


def print_table(results: list[dict], out) -> None:
    header = ("scenario", "pool", "first feed", "every feed", "peak RSS (2 workers)", "steady RSS", "threads",
              "longest wait", "rounds keep up", "before (issue 16)")
    rows = [header]
    for r in results:
        before = BEFORE.get(r["accounts"]) if r["products"] == 500 else None
        rows.append((f"{r['accounts']} × {r['products']:,}", str(r["pool"]), f"{r['first_published_s']:.0f} s",
                     f"{r['all_published_s']:.0f} s", f"{r['peak_rss_mb']:.0f} MB", f"{r['steady_rss_mb']:.0f} MB",
                     str(r["threads"]), "—" if r["longest_wait_s"] is None else f"{r['longest_wait_s']:.0f} s",
                     (f"{'yes' if r['first_round_within_interval'] and r['rounds_within_interval'] else 'NO'}"
                      f" (max gap {r['max_gap_after_first_s']} s)"),
                     (f"{before['first_s']} s / {before['all_s']} s / {before['peak_mb']} MB / {before['steady_mb']} MB"
                      f" / {before['threads']} thr") if before else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * width for width in widths), file=out)
    for r in results:
        missed = [goal for goal, met in r["goals"].items() if not met]
        print(f"{r['accounts']} × {r['products']:,}: {'goals met' if not missed else 'MISSED: ' + ', '.join(missed)} "
              f"({', '.join(r['goals'])})", file=out)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--size", choices=SCENARIOS, default="full")
    parser.add_argument("--scenarios", help="accounts×products, comma-separated (e.g. 50x500,200x500)")
    parser.add_argument("--pool", type=int, default=0, help="max_concurrent_builds (0: the default for the cores)")
    parser.add_argument("--latency-ms", type=int, default=20, help="added to every emulator answer")
    parser.add_argument("--pictures", default="none", choices=("none", "cache"))
    parser.add_argument("--interval", type=float, help="minutes between a feed's builds (full: 2, small: 0.5)")
    parser.add_argument("--rounds", type=float, default=2.5,
                        help="intervals to watch after every feed is published (2.5: every feed builds twice more)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds the first round may take")
    parser.add_argument("--app-root", default=str(ROOT), help="the checkout whose app runs (to measure another version)")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args()
    args.interval = args.interval or INTERVALS[args.size]
    results = []
    for scenario in (args.scenarios or SCENARIOS[args.size]).split(","):
        accounts, products = (int(part) for part in scenario.lower().split("x"))
        results.append(run_scenario(accounts, products, args))
    goals(results, args.interval)
    out = table_output(args)
    print(f"many clients: {WORKERS} gunicorn workers, builds every {args.interval:g} min, emulator latency "
          f"{args.latency_ms} ms, one token and rate budget per account", file=out)
    print_table(results, out)
    if args.json:
        print_json("many_clients", results, interval_minutes=args.interval, latency_ms=args.latency_ms)


if __name__ == "__main__":
    main()

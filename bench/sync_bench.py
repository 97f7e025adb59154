"""Sync benchmark: N assortment rows from the emulator (20 ms latency) into a fresh store, then an
incremental sync after a few changes.

The emulator runs in this process; each sync runs as a process of its own, so its CPU seconds
(``resource.getrusage``: every thread's user + system time) and peak RSS are its own. For each size
it prints, for the full sync and the incremental one: requests, the units of MoySklad's budget they
cost, wall time, CPU seconds and peak RSS, and the goals, each with what it is measured against:

- full sync: assortment rows per CPU-second >= 15,000 (before this work: about 4,000 on the
  development machine, printed beside it);
- full sync under MoySklad's limits: wall time within 1.3x of its rate-limit floor (units / 15 per
  second: 45 units per 3 s), the floor printed beside the time;
- incremental sync after C changes (default 50: price edits, stock moves, new goods): <= 15 requests;
- full-sync requests <= 2 * ceil(N/1000) + ceil(B/100) + 10 (B bundles, read at 100 a page to
  expand their components); peak RSS < 150 MB, flat from 10k to 100k rows.

    python bench/sync_bench.py                    # 10,000 and 100,000 rows, MoySklad's limits on
    python bench/sync_bench.py --rows 20000       # one size
    python bench/sync_bench.py --no-limits        # no rate limit on either side: the client's CPU alone
    python bench/sync_bench.py --profile out.prof # cProfile of the full sync (top functions to stderr)
    python bench/sync_bench.py --json             # the figures as JSON for bench/summary.py
"""

from __future__ import annotations

import argparse
import math
import pstats
import random
import tempfile
from pathlib import Path

from output import PEAK_RSS_MB, bench_parser, print_json, run_measured, table_output

from emulator.harness import ROOT, start_emulator

FLOOR_UNITS_PER_SECOND = 45 / 3  # MoySklad's budget: 45 units per 3 s
GOAL_ROWS_PER_CPU_SECOND = 15_000
BEFORE_ROWS_PER_CPU_SECOND = 4_000  # measured at commit 9ea4397 on the development machine (limits off, 100k rows)
GOAL_FLOOR_RATIO = 1.3
GOAL_INCREMENTAL_REQUESTS = 15

CHILD = r"""
import cProfile, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from moysklad.client import MoySkladClient
from moysklad.sync import sync_catalog
from core.settings import MoySkladSettings
from store import open_catalog

base_url, store_path, mode, limits, profile = sys.argv[2:7]
client = MoySkladClient(MoySkladSettings(base_url=base_url, token=sys.argv[7]))
if limits == "off":
    client.gate.limit = 10 ** 9  # the emulator sends no rate headers either
store = open_catalog(store_path)

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

cpu_before, started = cpu(), time.monotonic()
profiler = cProfile.Profile() if profile else None
if profiler:
    profiler.enable()
result = sync_catalog(client, store, full=mode == "full")
if profiler:
    profiler.disable()
    profiler.dump_stats(profile)
print(json.dumps({"mode": result.mode, "requests": result.requests, "units": result.units,
                  "throttled": result.throttled, "retries": result.retries, "seconds": time.monotonic() - started,
                  "cpu_seconds": cpu() - cpu_before, "rows": result.counts.get("assortment_rows", 0),
                  "costs_read": result.counts.get("costs_read", 0), "stock_read": result.counts.get("stock_read", ""),
                  "peak_rss_mb": PEAK_RSS_MB}))
""".replace("PEAK_RSS_MB", PEAK_RSS_MB)


def apply_changes(catalog, count: int, seed: int = 1) -> None:
    """``count`` changes as a shop makes them between two builds: price edits, stock moves and new goods."""
    from emulator.catalog import KIND_PRODUCT, KIND_VARIANT

    rng = random.Random(seed)
    goods = [item for item in catalog.items.values()
             if item.kind in (KIND_PRODUCT, KIND_VARIANT) and item.operated and not item.archived]
    new = stock = count // 10
    for item in rng.sample(goods, count - new - stock):
        catalog.update_item(item.id, sale_price=rng.randrange(100, 100_000) * 100)
    for item in rng.sample(goods, stock):
        catalog.set_stock(item.id, catalog.stores[0].id, stock=item.stock[0] + rng.randrange(1, 20))
    for n in range(new):
        catalog.add_product(f"Новый товар {n}", rng.randrange(100, 100_000) * 100, stock=5)


def sync_child(base_url: str, store_path: Path, mode: str, limits: bool, profile: str, token: str) -> dict:
    return run_measured(CHILD, str(ROOT), base_url, str(store_path), mode, "on" if limits else "off", profile, token,
                        what=f"{mode} sync")


def warm(server) -> None:
    """Have the emulator render the big lists once (a full sync, no limits, into a store thrown away):
    it keeps them rendered, so the measured syncs are paced by MoySklad's limits, not by the emulator."""
    from emulator.harness import EMULATOR_TOKEN

    limited, server.rate_limiter.units_limited = server.rate_limiter.units_limited, False
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sync_child(server.base_url, Path(tmp) / "warm.sqlite", "full", False, "", EMULATOR_TOKEN)
    finally:
        server.rate_limiter.units_limited = limited


def measure(rows: int, latency_ms: int, limits: bool = True, changes: int = 50, profile: str = "") -> dict:
    """A full sync of ``rows`` assortment rows, ``changes`` changes in MoySklad, an incremental sync."""
    from emulator.catalog import KIND_BUNDLE
    from emulator.harness import EMULATOR_TOKEN

    server = start_emulator(rows, seed=7, rate_limited=limits, webhook_interval=10 ** 9)
    server.faults.latency_ms = latency_ms
    try:
        bundles = sum(1 for item in server.catalog.items.values() if item.kind == KIND_BUNDLE)
        warm(server)
        with tempfile.TemporaryDirectory() as tmp:
            store_path = Path(tmp) / "catalog.sqlite"
            full = sync_child(server.base_url, store_path, "full", limits, profile, EMULATOR_TOKEN)
            apply_changes(server.catalog, changes)
            incremental = sync_child(server.base_url, store_path, "incremental", limits, "", EMULATOR_TOKEN)
    finally:
        server.stop()
    figures = dict(full, bundles=bundles, incremental=incremental, changes=changes, limits=limits)
    figures["peak_rss_mb"] = max(full["peak_rss_mb"], incremental["peak_rss_mb"])
    figures["budget"] = 2 * math.ceil(rows / 1000) + math.ceil(bundles / 100) + 10
    figures["rows_per_s"] = figures["rows"] / figures["seconds"]
    figures["rows_per_cpu_s"] = figures["rows"] / figures["cpu_seconds"]
    figures["floor_seconds"] = figures["units"] / FLOOR_UNITS_PER_SECOND
    figures["floor_ratio"] = figures["seconds"] / figures["floor_seconds"]
    goals = {f"requests <= {figures['budget']}": figures["requests"] <= figures["budget"],
             f"rows/CPU-s >= {GOAL_ROWS_PER_CPU_SECOND:,}": figures["rows_per_cpu_s"] >= GOAL_ROWS_PER_CPU_SECOND,
             f"incremental after {changes} changes <= {GOAL_INCREMENTAL_REQUESTS} requests":
                 incremental["requests"] <= GOAL_INCREMENTAL_REQUESTS,
             "peak RSS < 150 MB": figures["peak_rss_mb"] < 150}
    if limits:
        goals[f"time <= {GOAL_FLOOR_RATIO}x rate-limit floor"] = figures["floor_ratio"] <= GOAL_FLOOR_RATIO
    figures["goals"] = goals
    return figures


def size_arguments(description: str, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The catalog sizes (``rows``, default 10k and 100k), emulator latency and --json a benchmark runs with."""
    parser = parser or bench_parser(description)
    parser.add_argument("--rows", type=int, action="append", help="assortment rows (repeatable)")
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--changes", type=int, default=50, help="changes in MoySklad before the incremental run")
    args = parser.parse_args()
    args.rows = args.rows or [10_000, 100_000]
    return args


def print_profile(path: str, out) -> None:
    print(f"cProfile of the full sync ({path}), top 30 by cumulative time:", file=out)
    pstats.Stats(path, stream=out).sort_stats("cumulative").print_stats(30)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--no-limits", action="store_true",
                        help="no rate limit in the emulator nor in the client: measures the client's CPU alone")
    parser.add_argument("--profile", default="", help="write a cProfile of the full sync to this file")
    args = size_arguments(__doc__, parser)
    limits = not args.no_limits
    out = table_output(args)
    print(f"sync benchmark: emulator latency {args.latency_ms} ms, "
          f"{'MoySklad limits on (45 units / 3 s)' if limits else 'limits off'}; "
          f"incremental after {args.changes} changes", file=out)
    print(f"{'rows':>8} {'bundles':>7} {'requests':>9} {'units':>6} {'budget':>7} {'429s':>5} {'wall s':>7} "
          f"{'floor s':>7} {'x floor':>7} {'CPU s':>6} {'rows/CPU-s':>10} {'RSS MB':>7} | "
          f"{'incr. req':>9} {'units':>5} {'costs':>5} {'stock':>7} {'wall s':>6} {'CPU s':>5}", file=out)
    results = []
    for rows in args.rows:
        f = measure(rows, args.latency_ms, limits, args.changes, args.profile)
        results.append(f)
        inc = f["incremental"]
        floor = f"{f['floor_seconds']:>7.1f} {f['floor_ratio']:>7.2f}" if limits else f"{'-':>7} {'-':>7}"
        print(f"{f['rows']:>8} {f['bundles']:>7} {f['requests']:>9} {f['units']:>6} {f['budget']:>7} {f['throttled']:>5} "
              f"{f['seconds']:>7.1f} {floor} {f['cpu_seconds']:>6.1f} {f['rows_per_cpu_s']:>10,.0f} "
              f"{f['peak_rss_mb']:>7.1f} | {inc['requests']:>9} {inc['units']:>5} {inc['costs_read']:>5} "
              f"{inc['stock_read']:>7} {inc['seconds']:>6.1f} {inc['cpu_seconds']:>5.1f}", file=out, flush=True)
    for f in results:
        print(f"{f['rows']:,} rows:", file=out)
        print(f"  rows per CPU-second {f['rows_per_cpu_s']:,.0f}: goal >= {GOAL_ROWS_PER_CPU_SECOND:,} "
              f"({f['rows_per_cpu_s'] / GOAL_ROWS_PER_CPU_SECOND:.2f}x the goal; before: about "
              f"{BEFORE_ROWS_PER_CPU_SECOND:,}, {f['rows_per_cpu_s'] / BEFORE_ROWS_PER_CPU_SECOND:.1f}x that)", file=out)
        if limits:
            print(f"  full sync {f['seconds']:.1f} s for {f['units']} units: floor {f['floor_seconds']:.1f} s, "
                  f"{f['floor_ratio']:.2f}x the floor (goal <= {GOAL_FLOOR_RATIO}x)", file=out)
        inc = f["incremental"]
        print(f"  incremental after {f['changes']} changes: {inc['requests']} requests (goal <= "
              f"{GOAL_INCREMENTAL_REQUESTS}), {inc['units']} units against the full sync's {f['units']} "
              f"({inc['units'] / f['units']:.0%}), {inc['seconds']:.1f} s", file=out)
        missed = [goal for goal, met in f["goals"].items() if not met]
        print(f"  goals: {'all met' if not missed else 'MISSED: ' + '; '.join(missed)}", file=out)
    if len(results) > 1:
        growth = results[-1]["peak_rss_mb"] - results[0]["peak_rss_mb"]
        print(f"peak RSS growth from {results[0]['rows']} to {results[-1]['rows']} rows: {growth:+.1f} MB", file=out)
    if args.profile:
        print_profile(args.profile, out)
    if args.json:
        print_json("sync", results, latency_ms=args.latency_ms)


if __name__ == "__main__":
    main()

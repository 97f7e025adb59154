"""Sync benchmark: N assortment rows from the emulator (20 ms latency) into a fresh store.

Runs the emulator and the sync as separate processes so the sync's peak RSS is its own.
Prints, for a full sync and the incremental one after it, requests made and the units of
MoySklad's budget they cost, wall time, rows/s and peak RSS for each size, and the goals:
full-sync requests <= 2 * ceil(N/1000) + ceil(B/100) + 10 (B bundles, read at 100 a page to
expand their components) and peak RSS < 150 MB, flat from 10k to 100k rows.

    python bench/sync_bench.py                 # 10,000 and 100,000 rows
    python bench/sync_bench.py --rows 20000    # one size
    python bench/sync_bench.py --json          # the figures as JSON for bench/summary.py
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import requests
from output import bench_parser, print_json, run_measured, table_output

from emulator.harness import ROOT, emulator_process

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from moysklad.client import MoySkladClient
from moysklad.sync import sync_catalog
from core.settings import MoySkladSettings
from store import open_catalog

client = MoySkladClient(MoySkladSettings(base_url=sys.argv[2], token="bench-token"))
store = open_catalog(sys.argv[3])
figures = {}
for mode in ("full", "incremental"):
    requests, units = client.requests, client.units
    started = time.monotonic()
    result = sync_catalog(client, store, full=mode == "full")
    figures[mode] = {"mode": result.mode, "requests": result.requests, "units": client.units - units,
                     "throttled": result.throttled, "retries": result.retries, "seconds": time.monotonic() - started,
                     "rows": result.counts.get("assortment_rows", 0)}
figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(figures))
"""


def bundle_count(base_url: str) -> int:
    """How many bundles (archived ones too) the emulator's catalog holds, as MoySklad would say."""
    answer = requests.get(base_url + "/entity/bundle", params={"limit": 1, "filter": "archived=true;archived=false"},
                          headers={"Authorization": "Bearer bench-token", "Accept-Encoding": "gzip"}, timeout=60)
    answer.raise_for_status()
    return answer.json()["meta"]["size"]


def measure(rows: int, latency_ms: int) -> dict:
    emulator, base_url = emulator_process(rows, latency_ms=latency_ms, token="bench-token")
    try:
        bundles = bundle_count(base_url)
        with tempfile.TemporaryDirectory() as tmp:
            runs = run_measured(CHILD, str(ROOT), base_url, str(Path(tmp) / "catalog.sqlite"), what="sync")
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    figures = dict(runs["full"], peak_rss_mb=runs["peak_rss_mb"], bundles=bundles, incremental=runs["incremental"])
    figures["budget"] = 2 * math.ceil(rows / 1000) + math.ceil(bundles / 100) + 10
    figures["rows_per_s"] = figures["rows"] / figures["seconds"]
    figures["goals"] = {f"requests <= {figures['budget']}": figures["requests"] <= figures["budget"],
                        "peak RSS < 150 MB": figures["peak_rss_mb"] < 150}
    return figures


def size_arguments(description: str) -> argparse.Namespace:
    """The catalog sizes (``rows``, default 10k and 100k), emulator latency and --json a benchmark runs with."""
    parser = bench_parser(description)
    parser.add_argument("--rows", type=int, action="append", help="assortment rows (repeatable)")
    parser.add_argument("--latency-ms", type=int, default=20)
    args = parser.parse_args()
    args.rows = args.rows or [10_000, 100_000]
    return args


def main() -> None:
    args = size_arguments(__doc__)
    out = table_output(args)
    print(f"sync benchmark: emulator latency {args.latency_ms} ms, MoySklad limits on (45 units / 3 s)", file=out)
    print(f"{'rows':>8} {'bundles':>7} {'requests':>9} {'units':>6} {'budget':>7} {'429s':>5} {'retries':>7} "
          f"{'wall s':>8} {'rows/s':>8} {'peak RSS MB':>12} {'incr. req':>9} {'incr. units':>11} {'incr. s':>8}",
          file=out)
    results = []
    for rows in args.rows:
        f = measure(rows, args.latency_ms)
        results.append(f)
        inc = f["incremental"]
        print(f"{f['rows']:>8} {f['bundles']:>7} {f['requests']:>9} {f['units']:>6} {f['budget']:>7} {f['throttled']:>5} "
              f"{f['retries']:>7} {f['seconds']:>8.1f} {f['rows_per_s']:>8.0f} {f['peak_rss_mb']:>12.1f} "
              f"{inc['requests']:>9} {inc['units']:>11} {inc['seconds']:>8.1f}", file=out, flush=True)
    ok_requests = all(f["requests"] <= f["budget"] for f in results)
    ok_memory = all(f["peak_rss_mb"] < 150 for f in results)
    print(f"goal requests <= 2*ceil(N/1000)+ceil(B/100)+10: {'met' if ok_requests else 'MISSED'}; "
          f"goal peak RSS < 150 MB: {'met' if ok_memory else 'MISSED'}", file=out)
    if len(results) > 1:
        growth = results[-1]["peak_rss_mb"] - results[0]["peak_rss_mb"]
        print(f"peak RSS growth from {results[0]['rows']} to {results[-1]['rows']} rows: {growth:+.1f} MB", file=out)
    if args.json:
        print_json("sync", results, latency_ms=args.latency_ms)


if __name__ == "__main__":
    main()

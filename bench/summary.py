"""Benchmark summary: runs the start-up, sync, feed (build, render, incremental build, scheduled render),
serve, import, retailCRM push and many-clients benchmarks, prints one table.

Each benchmark runs as its own script with --json, so its processes (and their peak RSS) are its own
and the figures come from the same code that prints its own table. Each table row gives what was
measured, its size, throughput, time, requests where they count, peak RSS, the goals the script
checks and whether they were met. Progress goes to stderr.

    python bench/summary.py                  # --size small: sync and render 10k rows, serve 20k rows, import 20k goods,
                                             #   retailCRM push 10k rows, 30 accounts x 300 rows every 30 s
    python bench/summary.py --size full      # 100k rows and 100k goods everywhere, 50 and 200 accounts x 500 and
                                             #   20 x 20,000 every 2 min (half an hour more)
    python bench/summary.py --clients 20 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

BENCH = Path(__file__).resolve().parent
SIZES = {  # (sync rows, feed rows, serve rows, import goods, retailCRM push rows)
    "small": (10_000, 10_000, 20_000, 20_000, 10_000),
    "full": (100_000, 100_000, 100_000, 100_000, 100_000),
}
COLUMNS = ("benchmark", "size", "throughput", "time", "requests", "peak RSS", "goal", "result")


class Row(NamedTuple):
    benchmark: str
    size: str
    throughput: str
    time: str
    requests: str
    rss_mb: float
    goals: dict[str, bool]
    failure: str = ""

    def met(self) -> bool:
        return not self.failure and all(self.goals.values())

    def cells(self) -> tuple[str, ...]:
        missed = [goal for goal, met in self.goals.items() if not met]
        result = f"FAILED: {self.failure}" if self.failure else f"MISSED: {', '.join(missed)}" if missed else "met"
        return (self.benchmark, self.size, self.throughput, self.time, self.requests,
                f"{self.rss_mb:.0f} MB" if self.rss_mb else "", "; ".join(self.goals), result)


def run_script(rows_of: Callable[[dict], Iterator[Row]], script: str, *options: str) -> list[Row]:
    """One benchmark script with --json, as table rows; a script that fails gives one row saying so."""
    command = [sys.executable, str(BENCH / script), *options, "--json"]
    print(f"running {script} {' '.join(options)} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        print(f"{script} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        last_line = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return [Row(script, "", "", "", "", 0.0, {}, failure=last_line[:100])]
    print(f"  done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return list(rows_of(json.loads(done.stdout.strip().splitlines()[-1])))


def startup_rows(figures: dict) -> Iterator[Row]:
    for r in figures["results"]:
        yield Row(f"start-up: {r['command']}", "", f"{r['seconds'] / r['baseline_seconds']:.2f}x `import flask.cli` "
                  f"({r['baseline_seconds']:.3f} s)", f"{r['seconds']:.3f} s", "", r["peak_rss_mb"], r["goals"])


def sync_rows(figures: dict) -> Iterator[Row]:
    for r in figures["results"]:
        floor = f", {r['floor_ratio']:.2f}x floor {r['floor_seconds']:.0f} s" if r.get("limits") else ""
        yield Row("sync", f"{r['rows']:,} rows", f"{r['rows_per_s']:,.0f} rows/s, {r['rows_per_cpu_s']:,.0f} rows/CPU-s",
                  f"{r['seconds']:.1f} s{floor}",
                  f"{r['requests']} (budget {r['budget']}); incremental {r['incremental']['requests']}",
                  r["peak_rss_mb"], r["goals"])


def feed_rows(figures: dict) -> Iterator[Row]:
    for r in figures["results"]:
        full, render = r["full"], r["render"]
        yield Row("build (sync+render+publish)", f"{r['rows']:,} rows", f"{full['offers'] / full['seconds']:,.0f} offers/s",
                  f"{full['seconds']:.1f} s", str(full["requests"]), full["peak_rss_mb"], full["goals"])
        yield Row("first render (no markup to reuse)", f"{full['offers']:,} offers",
                  f"{full['offers'] / full['render_seconds']:,.0f} offers/s", f"{full['render_seconds']:.2f} s", "",
                  full["peak_rss_mb"], {})
        yield Row("render alone, command line (fork server starting)",
                  f"{render['offers']:,} offers, {render['size'] / 1e6:.1f} MB",
                  f"{render['offers_per_s']:,.0f} offers/s", f"{render['render_seconds']:.2f} s", "",
                  render["peak_rss_mb"], render["goals"])
        incremental = r["incremental"]
        yield Row(f"incremental build after {r['changes']} changes", f"{r['rows']:,} rows",
                  f"{incremental['seconds'] / full['seconds']:.0%} of the full build's time",
                  f"{incremental['seconds']:.1f} s", f"{incremental['requests']} ({incremental['units']} units)",
                  incremental["peak_rss_mb"], incremental["goals"])
        scheduled = r["scheduled"]
        yield Row(f"render in the scheduled path (median of {len(scheduled['next_seconds'])} builds)",
                  f"{scheduled['offers']:,} offers",
                  f"{scheduled['offers_per_s']:,.0f} offers/s = {scheduled['offers_per_s'] / scheduled['single_offers_per_s']:.1f}x "
                  f"one process", f"{scheduled['seconds']:.2f} s", "",
                  max(scheduled["peak_rss_mb"], scheduled["largest_child_rss_mb"]), scheduled["goals"])


def serve_rows(figures: dict) -> Iterator[Row]:
    sizes = {"plain": f"{figures['feed_bytes'] / 1e6:.1f} MB, ", "gzip": f"{figures['gzip_bytes'] / 1e6:.1f} MB, "}
    for r in figures["results"]:
        yield Row(f"serve {r['kind']} ({figures['loader']})",
                  f"{figures['rows']:,} rows, {sizes.get(r['kind'], '')}{figures['clients']} clients",
                  f"{r['req_per_s']:,.0f} req/s, {r['mb_per_s']:,.0f} MB/s", f"p95 {r['p95_ms']:,.0f} ms",
                  f"{r['requests']:,} ({r['errors']} errors)", r["peak_rss_mb"], r["goals"])


def import_rows(figures: dict) -> Iterator[Row]:
    for r in figures["results"]:
        yield Row(f"import {r['file']} ({r['shape']})", f"{r['goods']:,} goods, {r['mb']:.1f} MB",
                  f"{r['mb_per_s']:.1f} MB/s = {r['ratio']:.0%} of bare pass {r['bare_mb_per_s']:.1f} MB/s",
                  f"{r['seconds']:.2f} s (CPU s: writer {r['writer_cpu_seconds']:.2f}, parser {r['parser_cpu_seconds']:.2f})",
                  "", r["rss_sum_mb"], r["goals"])


def retailcrm_rows(figures: dict) -> Iterator[Row]:
    for r in figures["results"]:
        fast, full, goals = r["fast"], r["full"], r["goals"]
        yield Row("retailCRM: stock webhook → retailCRM", f"{r['offers']:,} offers, {r['changes']} changes",
                  f"{r['changes'] / fast['seconds']:,.0f} values/s", f"{fast['seconds']:.1f} s",
                  f"MoySklad {fast['moysklad_requests']} ({fast['moysklad_units']} units), "
                  f"retailCRM {fast['retailcrm_requests']}",
                  0.0, {goal: met for goal, met in goals.items() if not goal.startswith("full push")})
        yield Row("retailCRM: full push", f"{r['offers']:,} offers, {full['records']:,} values",
                  f"{full['records'] / full['seconds']:,.0f} values/s",
                  f"{full['seconds']:.1f} s ({full['ratio']:.2f}x floor)",
                  f"{full['requests']} (floor {full['floor_seconds']:.0f} s)",
                  0.0, {goal: met for goal, met in goals.items() if goal.startswith(("full push", "no 503"))})


def many_clients_rows(figures: dict) -> Iterator[Row]:
    for r in figures["results"]:
        wait = "" if r["longest_wait_s"] is None else f", longest wait {r['longest_wait_s']:.0f} s"
        yield Row("many clients: every feed published", f"{r['accounts']} accounts x {r['products']:,} rows",
                  f"{r['accounts'] / r['all_published_s']:.1f} feeds/s",
                  f"{r['all_published_s']:.0f} s (steady RSS {r['steady_rss_mb']:.0f} MB{wait})",
                  f"{r['builds']} builds", r["peak_rss_mb"], r["goals"])


def print_table(rows: list[Row]) -> None:
    cells = [COLUMNS] + [row.cells() for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    for n, line in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * width for width in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--clients", type=int, default=50, help="serve: concurrent clients")
    parser.add_argument("--seconds", type=float, default=10, help="serve: load per kind of request")
    args = parser.parse_args()
    sync_size, feed_size, serve_size, import_size, push_size = SIZES[args.size]
    started = time.monotonic()
    rows = [
        *run_script(startup_rows, "startup_bench.py"),
        *run_script(sync_rows, "sync_bench.py", "--rows", str(sync_size)),
        *run_script(feed_rows, "feed_bench.py", "--rows", str(feed_size)),
        *run_script(serve_rows, "serve_bench.py", "--rows", str(serve_size), "--clients", str(args.clients),
                    "--seconds", f"{args.seconds:g}"),
        *run_script(import_rows, "exchange_parse_bench.py", "--goods", str(import_size)),
        *run_script(retailcrm_rows, "retailcrm_bench.py", "--rows", str(push_size)),
        *run_script(many_clients_rows, "many_clients_bench.py", "--size", args.size),
    ]
    print(f"benchmark summary (--size {args.size}), {time.monotonic() - started:.0f} s; "
          "sync and build against the emulator at 20 ms latency with MoySklad's limits")
    print_table(rows)
    met = sum(row.met() for row in rows)
    print(f"{met} of {len(rows)} rows met their goals")
    if any(row.failure for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

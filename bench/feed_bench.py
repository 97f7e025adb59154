"""Feed benchmark: a full build (sync + render + publish) from the emulator, a render alone, and an
incremental build after a few changes in MoySklad.

For each size: the emulator runs in this process (20 ms latency, MoySklad's limits on); a child
process does the full build and reports wall time and peak RSS; a second child renders and
publishes again from the synced store without syncing (render alone); then C goods change in
MoySklad (default 50: price edits, stock moves, new goods) and a third child builds again, as a
webhook's rebuild does (incremental sync + render + publish); a fourth renders the way the scheduler
does inside gunicorn: on a thread of its own with another thread alive, 1 + --repeats times in a row
(the first build of a process also starts the fork server the rendering processes come from; the
goal takes the median of the others, each printed, as one render of 10k offers lasts a fifth of a
second and a shared machine's noise is that large), beside the median of as many single-process
renders of the same store as the baseline. A render takes the offers that did not
change from the markup files of the render before (feeds/markup_cache.py): the full build's render
has none to take and is printed beside the others as "1st render"; the baseline never takes any.
Goals: render >= 50,000 offers/s in the scheduled path (the render alone from the command line is
printed beside it: its process starts the fork server, some 0.2 s, when the render needs it, since
the offers are always rendered by processes of their own; see feeds/icml.py); the incremental build
after <= 50 changes makes <= 15 MoySklad requests and takes <= 10 s at any size (printed beside the
full build of the same run); peak RSS < 150 MB per process and flat from 10k to 100k.

    python bench/feed_bench.py                  # 10,000 and 100,000 assortment rows
    python bench/feed_bench.py --rows 20000 --changes 20
    python bench/feed_bench.py --json           # the figures as JSON for bench/summary.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# noqa: E402 below: bench scripts live side by side
from output import PEAK_RSS_MB, bench_parser, print_json, run_measured, table_output  # noqa: E402
from sync_bench import GOAL_INCREMENTAL_REQUESTS, apply_changes, size_arguments, warm  # noqa: E402

from emulator.harness import EMULATOR_TOKEN, ROOT, start_emulator  # noqa: E402

GOAL_INCREMENTAL_SECONDS = 10
GOAL_RENDER_RATE = 50_000

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from feeds.build import build_feed
from core.settings import FeedSettings, MoySkladSettings, Settings

settings = Settings(data_dir=Path(sys.argv[3]), moysklad=MoySkladSettings(base_url=sys.argv[2], token=sys.argv[5]),
                    feeds=(FeedSettings(name="bench", pictures="none", min_ratio=0),))
started = time.monotonic()
result = build_feed(settings, settings.feeds[0], sync=sys.argv[4] == "sync")
seconds = time.monotonic() - started
print(json.dumps({"offers": result.offers, "seconds": seconds, "size": result.size,
                  "render_seconds": result.render_seconds,
                  "requests": result.sync.requests if result.sync else 0,
                  "units": result.sync.units if result.sync else 0,
                  "sync_seconds": result.sync.seconds if result.sync else 0,
                  "peak_rss_mb": max(PEAK_RSS_MB, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}))
""".replace("PEAK_RSS_MB", PEAK_RSS_MB)


SCHEDULED = r"""
import json, os, resource, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from core.settings import FeedSettings, MoySkladSettings, Settings
from emulator.harness import descendant_pids
from feeds.build import build_feed
from feeds.icml import render_icml, resolve_options
from store import CatalogReader

settings = Settings(data_dir=Path(sys.argv[3]), moysklad=MoySkladSettings(base_url=sys.argv[2], token="bench-token"),
                    feeds=(FeedSettings(name="bench", pictures="none", min_ratio=0),))
peaks, stop = {}, threading.Event()

def sample():  # the thread beside the build, as gunicorn's and the scheduler's are: VmHWM of every process under this one
    while not stop.wait(0.02):
        for pid in descendant_pids(os.getpid()):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            peaks[pid] = int(status.split("VmHWM:")[1].split()[0]) / 1024

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
with ThreadPoolExecutor(1) as builds:  # the scheduler builds on a thread of its own
    renders = [builds.submit(build_feed, settings, settings.feeds[0], sync=False).result().render_seconds
               for _ in range(1 + int(sys.argv[4]))]
singles = []
for _ in range(int(sys.argv[4])):
    started = time.monotonic()
    with CatalogReader(settings.store_path) as reader, open(settings.feeds_dir / "single.xml", "wb") as out:
        options = resolve_options(reader, settings.feeds[0], settings.images_url)
        offers = render_icml(reader, options, out, processes=1).offers
    singles.append(time.monotonic() - started)
stop.set()
sampler.join()
print(json.dumps({"offers": offers, "first_seconds": renders[0], "next_seconds": renders[1:], "single_seconds": singles,
                  "peak_rss_mb": PEAK_RSS_MB, "children_rss_mb": sorted(peaks.values())}))
""".replace("PEAK_RSS_MB", PEAK_RSS_MB)  # VmHWM: ru_maxrss would count the benchmark's own (with the emulator), inherited at exec


def child(base_url: str, data_dir: str, mode: str) -> dict:
    return run_measured(CHILD, str(ROOT), base_url, data_dir, mode, EMULATOR_TOKEN, what="build")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5,
                        help="scheduled-path renders after the first (and one-process renders) to take the median of")
    args = size_arguments(__doc__, parser)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1: the goal is the median of those renders")
    out = table_output(args)
    print(f"feed benchmark: emulator latency {args.latency_ms} ms, MoySklad limits on; "
          f"incremental build after {args.changes} changes", file=out)
    print(f"{'rows':>8} {'offers':>8} {'MB':>6} | {'full build s':>12} {'requests':>8} {'RSS MB':>7} "
          f"{'1st render/s':>12} | "
          f"{'render s':>8} {'offers/s':>9} {'+publish s':>10} {'RSS MB':>7} | {'incr. build s':>13} {'sync s':>6} "
          f"{'requests':>8} {'units':>5}", file=out)
    results, scheduled_rows = [], []
    for rows in args.rows:
        server = start_emulator(rows, seed=7, webhook_interval=10 ** 9)
        server.faults.latency_ms = args.latency_ms
        try:
            warm(server)
            with tempfile.TemporaryDirectory() as tmp:
                full = child(server.base_url, tmp, "sync")
                render = child(server.base_url, tmp, "render")
                apply_changes(server.catalog, args.changes)
                incremental = child(server.base_url, tmp, "sync")
                scheduled = run_measured(SCHEDULED, str(ROOT), server.base_url, tmp, str(args.repeats),
                                         what="scheduled render")
        finally:
            server.stop()
        rate = render["offers"] / render["render_seconds"]
        results.append((full, render, rate, incremental))
        scheduled_rows.append(scheduled_row(scheduled))
        print(f"{rows:>8} {render['offers']:>8} {render['size'] / 1e6:>6.1f} | {full['seconds']:>12.1f} "
              f"{full['requests']:>8} {full['peak_rss_mb']:>7.1f} {full['offers'] / full['render_seconds']:>12.0f} | "
              f"{render['render_seconds']:>8.2f} {rate:>9.0f} "
              f"{render['seconds']:>10.2f} {render['peak_rss_mb']:>7.1f} | {incremental['seconds']:>13.1f} "
              f"{incremental['sync_seconds']:>6.1f} {incremental['requests']:>8} {incremental['units']:>5}",
              file=out, flush=True)
    small = all(max(full["peak_rss_mb"], render["peak_rss_mb"], inc["peak_rss_mb"]) < 150 for full, render, _, inc in results)
    print(f"goal peak RSS < 150 MB: {'met' if small else 'MISSED'} (the render goal is the scheduled path's, below)",
          file=out)
    for rows, (full, _, _, inc) in zip(args.rows, results):
        print(f"{rows:,} rows: incremental build after {args.changes} changes {inc['seconds']:.1f} s "
              f"(goal <= {GOAL_INCREMENTAL_SECONDS} s: {'met' if inc['seconds'] <= GOAL_INCREMENTAL_SECONDS else 'MISSED'}; "
              f"the full build of this run {full['seconds']:.1f} s, {inc['seconds'] / full['seconds']:.0%} of it), "
              f"{inc['requests']} requests (goal <= {GOAL_INCREMENTAL_REQUESTS}: "
              f"{'met' if inc['requests'] <= GOAL_INCREMENTAL_REQUESTS else 'MISSED'}; the full build {full['requests']}), "
              f"{inc['units']} units (the full build {full['units']})", file=out)
    print(f"scheduled path (build on a thread, another thread alive): render offers/s, first build of the process "
          f"(starts the fork server) and the median of the {args.repeats} next; the median of {args.repeats} renders "
          f"of the same store from scratch in one process as the baseline", file=out)
    print(f"{'rows':>8} {'offers':>8} | {'first':>8} {'next':>8} {'1 process':>9} {'ratio':>6} | "
          f"{'build MB':>8} {'largest child MB':>16} {'all MB':>7}", file=out)
    for rows, r in zip(args.rows, scheduled_rows):
        print(f"{rows:>8} {r['offers']:>8} | {r['first_offers_per_s']:>8.0f} {r['offers_per_s']:>8.0f} "
              f"{r['single_offers_per_s']:>9.0f} {r['offers_per_s'] / r['single_offers_per_s']:>5.1f}x | "
              f"{r['peak_rss_mb']:>8.1f} {r['largest_child_rss_mb']:>16.1f} {r['all_rss_mb']:>7.1f} | next: "
              f"{' '.join(f'{rate:.0f}' for rate in r['next_offers_per_s'])}", file=out)
    for goal in scheduled_rows[0]["goals"] if scheduled_rows else ():
        print(f"goal scheduled path {goal}: {'met' if all(r['goals'][goal] for r in scheduled_rows) else 'MISSED'}", file=out)
    if len(results) > 1:
        growth = results[-1][1]["peak_rss_mb"] - results[0][1]["peak_rss_mb"]
        print(f"render peak RSS growth from {args.rows[0]} to {args.rows[-1]} rows: {growth:+.1f} MB", file=out)
    if args.json:
        print_json("feed", [{**json_row(rows, *figures, args.changes), "scheduled": scheduled}
                            for rows, figures, scheduled in zip(args.rows, results, scheduled_rows)],
                   latency_ms=args.latency_ms)


def json_row(rows: int, full: dict, render: dict, rate: float, incremental: dict, changes: int) -> dict:
    """One size's figures for bench/summary.py: the full build, the render alone and the incremental
    build, each with its goals."""
    return {"rows": rows, "changes": changes,
            "full": {**full, "goals": {"peak RSS < 150 MB": full["peak_rss_mb"] < 150}},
            "render": {**render, "offers_per_s": rate, "goals": {"peak RSS < 150 MB": render["peak_rss_mb"] < 150}},
            "incremental": {**incremental, "goals": {
                f"<= {GOAL_INCREMENTAL_REQUESTS} requests": incremental["requests"] <= GOAL_INCREMENTAL_REQUESTS,
                f"<= {GOAL_INCREMENTAL_SECONDS} s": incremental["seconds"] <= GOAL_INCREMENTAL_SECONDS,
                "peak RSS < 150 MB": incremental["peak_rss_mb"] < 150}}}


def scheduled_row(figures: dict) -> dict:
    """The scheduled path's figures: offers/s of its first and next render, of one process, and the goals.

    Peak RSS: the build's process, and the largest of the processes under it (the fork server and the
    rendering processes); ``all_rss_mb`` adds them all up (shared pages counted in each).
    """
    offers = figures["offers"]
    seconds, single = statistics.median(figures["next_seconds"]), statistics.median(figures["single_seconds"])
    row = {**figures, "seconds": seconds, "first_offers_per_s": offers / figures["first_seconds"],
           "offers_per_s": offers / seconds, "single_offers_per_s": offers / single,
           "next_offers_per_s": [offers / s for s in figures["next_seconds"]],
           "largest_child_rss_mb": max(figures["children_rss_mb"], default=0.0),
           "all_rss_mb": figures["peak_rss_mb"] + sum(figures["children_rss_mb"])}
    row["goals"] = {"render >= 50,000 offers/s": row["offers_per_s"] >= GOAL_RENDER_RATE,
                    "peak RSS < 150 MB per process": max(row["peak_rss_mb"], row["largest_child_rss_mb"]) < 150}
    return row


if __name__ == "__main__":
    main()

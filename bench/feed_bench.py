"""Feed benchmark: a full build (sync + render + publish) from the emulator, and a render alone.

For each size: the emulator runs in its own process (20 ms latency, MoySklad's limits on); a child
process does the full build and reports wall time and peak RSS; a second child renders and
publishes again from the synced store without syncing (render alone, as the command line does); a
third renders the way the scheduler does inside gunicorn: on a thread of its own with another
thread alive, twice in a row (the first build of a process also starts the fork server the
rendering processes come from), beside a single-process render of the same store as the
baseline. Goals: render >= 50,000 offers/s (the command line and the scheduled path), peak RSS
< 150 MB per process and flat from 10k to 100k.

    python bench/feed_bench.py                  # 10,000 and 100,000 assortment rows
    python bench/feed_bench.py --rows 20000
    python bench/feed_bench.py --json           # the figures as JSON for bench/summary.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import print_json, run_measured, table_output  # noqa: E402  (bench scripts live side by side)
from sync_bench import size_arguments  # noqa: E402

from emulator.harness import ROOT, emulator_process  # noqa: E402

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from feeds.build import build_feed
from core.settings import FeedSettings, MoySkladSettings, Settings

settings = Settings(data_dir=Path(sys.argv[3]), moysklad=MoySkladSettings(base_url=sys.argv[2], token="bench-token"),
                    feeds=(FeedSettings(name="bench", pictures="none", min_ratio=0),))
started = time.monotonic()
result = build_feed(settings, settings.feeds[0], sync=sys.argv[4] == "sync")
seconds = time.monotonic() - started
print(json.dumps({"offers": result.offers, "seconds": seconds, "size": result.size,
                  "render_seconds": result.render_seconds,
                  "requests": result.sync.requests if result.sync else 0,
                  "peak_rss_mb": max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024}))
"""


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
    renders = [builds.submit(build_feed, settings, settings.feeds[0], sync=False).result().render_seconds for _ in range(2)]
started = time.monotonic()
with CatalogReader(settings.store_path) as reader, open(settings.feeds_dir / "single.xml", "wb") as out:
    offers = render_icml(reader, resolve_options(reader, settings.feeds[0], settings.images_url), out).offers
single = time.monotonic() - started
stop.set()
sampler.join()
print(json.dumps({"offers": offers, "first_seconds": renders[0], "seconds": renders[1], "single_seconds": single,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "children_rss_mb": sorted(peaks.values())}))
"""


def child(base_url: str, data_dir: str, mode: str) -> dict:
    return run_measured(CHILD, str(ROOT), base_url, data_dir, mode, what="build")


def main() -> None:
    args = size_arguments(__doc__)
    out = table_output(args)
    print(f"feed benchmark: emulator latency {args.latency_ms} ms", file=out)
    print(f"{'rows':>8} {'offers':>8} {'MB':>6} | {'full build s':>12} {'requests':>8} {'RSS MB':>7} | "
          f"{'render s':>8} {'offers/s':>9} {'+publish s':>10} {'RSS MB':>7}", file=out)
    results, scheduled_rows = [], []
    for rows in args.rows:
        emulator, base_url = emulator_process(rows, latency_ms=args.latency_ms, token="bench-token")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                full = child(base_url, tmp, "sync")
                render = child(base_url, tmp, "render")
                scheduled = run_measured(SCHEDULED, str(ROOT), base_url, tmp, what="scheduled render")
        finally:
            emulator.terminate()
            emulator.wait(timeout=30)
        rate = render["offers"] / render["render_seconds"]
        results.append((full, render, rate))
        scheduled_rows.append(scheduled_row(scheduled))
        print(f"{rows:>8} {render['offers']:>8} {render['size'] / 1e6:>6.1f} | {full['seconds']:>12.1f} "
              f"{full['requests']:>8} {full['peak_rss_mb']:>7.1f} | {render['render_seconds']:>8.2f} {rate:>9.0f} "
              f"{render['seconds']:>10.2f} {render['peak_rss_mb']:>7.1f}", file=out, flush=True)
    fast = all(rate >= 50_000 for _, _, rate in results)
    small = all(max(full["peak_rss_mb"], render["peak_rss_mb"]) < 150 for full, render, _ in results)
    print(f"goal render >= 50,000 offers/s: {'met' if fast else 'MISSED'}; goal peak RSS < 150 MB: {'met' if small else 'MISSED'}",
          file=out)
    print("scheduled path (build on a thread, another thread alive): render offers/s, first build of the process "
          "(starts the fork server) and the next; one process rendering the same store as the baseline", file=out)
    print(f"{'rows':>8} {'offers':>8} | {'first':>8} {'next':>8} {'1 process':>9} {'ratio':>6} | "
          f"{'build MB':>8} {'largest child MB':>16} {'all MB':>7}", file=out)
    for rows, r in zip(args.rows, scheduled_rows):
        print(f"{rows:>8} {r['offers']:>8} | {r['first_offers_per_s']:>8.0f} {r['offers_per_s']:>8.0f} "
              f"{r['single_offers_per_s']:>9.0f} {r['offers_per_s'] / r['single_offers_per_s']:>5.1f}x | "
              f"{r['peak_rss_mb']:>8.1f} {r['largest_child_rss_mb']:>16.1f} {r['all_rss_mb']:>7.1f}", file=out)
    for goal in scheduled_rows[0]["goals"] if scheduled_rows else ():
        print(f"goal scheduled path {goal}: {'met' if all(r['goals'][goal] for r in scheduled_rows) else 'MISSED'}", file=out)
    if len(results) > 1:
        growth = results[-1][1]["peak_rss_mb"] - results[0][1]["peak_rss_mb"]
        print(f"render peak RSS growth from {args.rows[0]} to {args.rows[-1]} rows: {growth:+.1f} MB", file=out)
    if args.json:
        print_json("feed", [{**json_row(rows, full, render, rate), "scheduled": scheduled}
                            for rows, (full, render, rate), scheduled in zip(args.rows, results, scheduled_rows)],
                   latency_ms=args.latency_ms)


def json_row(rows: int, full: dict, render: dict, rate: float) -> dict:
    """One size's figures for bench/summary.py: the full build and the render alone, each with its goals."""
    return {"rows": rows,
            "full": {**full, "goals": {"peak RSS < 150 MB": full["peak_rss_mb"] < 150}},
            "render": {**render, "offers_per_s": rate,
                       "goals": {"render >= 50,000 offers/s": rate >= 50_000, "peak RSS < 150 MB": render["peak_rss_mb"] < 150}}}


def scheduled_row(figures: dict) -> dict:
    """The scheduled path's figures: offers/s of its first and next render, of one process, and the goals.

    Peak RSS: the build's process, and the largest of the processes under it (the fork server and the
    rendering processes); ``all_rss_mb`` adds them all up (shared pages counted in each).
    """
    offers = figures["offers"]
    row = {**figures, "first_offers_per_s": offers / figures["first_seconds"], "offers_per_s": offers / figures["seconds"],
           "single_offers_per_s": offers / figures["single_seconds"],
           "largest_child_rss_mb": max(figures["children_rss_mb"], default=0.0),
           "all_rss_mb": figures["peak_rss_mb"] + sum(figures["children_rss_mb"])}
    row["goals"] = {"render >= 50,000 offers/s": row["offers_per_s"] >= 50_000,
                    "peak RSS < 150 MB per process": max(row["peak_rss_mb"], row["largest_child_rss_mb"]) < 150}
    return row


if __name__ == "__main__":
    main()

"""Feed benchmark: a full build (sync + render + publish) from the emulator, and a render alone.

For each size: the emulator runs in its own process (20 ms latency, MoySklad's limits on); a child
process does the full build and reports wall time and peak RSS; a second child renders and
publishes again from the synced store without syncing (render alone). Goals: render >= 50,000
offers/s, peak RSS < 150 MB and flat from 10k to 100k.

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


def child(base_url: str, data_dir: str, mode: str) -> dict:
    return run_measured(CHILD, str(ROOT), base_url, data_dir, mode, what="build")


def main() -> None:
    args = size_arguments(__doc__)
    out = table_output(args)
    print(f"feed benchmark: emulator latency {args.latency_ms} ms", file=out)
    print(f"{'rows':>8} {'offers':>8} {'MB':>6} | {'full build s':>12} {'requests':>8} {'RSS MB':>7} | "
          f"{'render s':>8} {'offers/s':>9} {'+publish s':>10} {'RSS MB':>7}", file=out)
    results = []
    for rows in args.rows:
        emulator, base_url = emulator_process(rows, latency_ms=args.latency_ms, token="bench-token")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                full = child(base_url, tmp, "sync")
                render = child(base_url, tmp, "render")
        finally:
            emulator.terminate()
            emulator.wait(timeout=30)
        rate = render["offers"] / render["render_seconds"]
        results.append((full, render, rate))
        print(f"{rows:>8} {render['offers']:>8} {render['size'] / 1e6:>6.1f} | {full['seconds']:>12.1f} "
              f"{full['requests']:>8} {full['peak_rss_mb']:>7.1f} | {render['render_seconds']:>8.2f} {rate:>9.0f} "
              f"{render['seconds']:>10.2f} {render['peak_rss_mb']:>7.1f}", file=out, flush=True)
    fast = all(rate >= 50_000 for _, _, rate in results)
    small = all(max(full["peak_rss_mb"], render["peak_rss_mb"]) < 150 for full, render, _ in results)
    print(f"goal render >= 50,000 offers/s: {'met' if fast else 'MISSED'}; goal peak RSS < 150 MB: {'met' if small else 'MISSED'}",
          file=out)
    if len(results) > 1:
        growth = results[-1][1]["peak_rss_mb"] - results[0][1]["peak_rss_mb"]
        print(f"render peak RSS growth from {args.rows[0]} to {args.rows[-1]} rows: {growth:+.1f} MB", file=out)
    if args.json:
        print_json("feed", [json_row(rows, full, render, rate) for rows, (full, render, rate) in zip(args.rows, results)],
                   latency_ms=args.latency_ms)


def json_row(rows: int, full: dict, render: dict, rate: float) -> dict:
    """One size's figures for bench/summary.py: the full build and the render alone, each with its goals."""
    return {"rows": rows,
            "full": {**full, "goals": {"peak RSS < 150 MB": full["peak_rss_mb"] < 150}},
            "render": {**render, "offers_per_s": rate,
                       "goals": {"render >= 50,000 offers/s": rate >= 50_000, "peak RSS < 150 MB": render["peak_rss_mb"] < 150}}}


if __name__ == "__main__":
    main()

"""retailCRM push benchmark: a stock webhook's way into retailCRM, and a full push of a big catalog.

Both emulators run in this process on loopback (MoySklad: N assortment rows, its limits on, stock
webhooks sent only when the benchmark says so; retailCRM: 10 requests/s per key, 503 over it).
The app runs as in production: gunicorn with two workers (``wsgi:app`` and its scheduler).

1. ``feeds build`` (a process of its own) syncs the catalog and publishes the feed; retailCRM loads it.
2. Full push: ``retailcrm push --full`` as a process of its own sends every offer's stock (two
   retailCRM warehouses: all MoySklad warehouses, and the St Petersburg one) and wholesale price.
   Measured: requests, seconds, and the ratio to the floor the rate limit sets (requests / 10 s).
3. The app starts (its first build and push at start run to the end), a MoySklad stock webhook
   pointing at it is registered, C goods get new stock in MoySklad, and the stock webhook goes out.
   Measured: seconds from the webhook to the last of the C values visible in the retailCRM
   emulator, MoySklad requests and units spent on it, retailCRM requests. Done R times (the
   scheduler reads its mailbox every 2 s, so the time varies by up to that); the worst counts.

Goals: webhook → retailCRM ≤ 10 s; ≤ 4 MoySklad requests per stock webhook; full push within
1.2× the rate-limit floor; no 503 from retailCRM's rate limit.

    python bench/retailcrm_bench.py                 # 100,000 rows, 50 stock changes
    python bench/retailcrm_bench.py --rows 20000 --changes 20 --rounds 5
    python bench/retailcrm_bench.py --json          # the figures as JSON for bench/summary.py
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from output import bench_parser, print_json, run_measured, table_output

from emulator.harness import EMULATOR_TOKEN, ROOT, Gunicorn, start_emulator, wait_for

sys.path.insert(0, str(ROOT))
from emulator.retailcrm import RetailCrmEmulator  # noqa: E402  (the app's modules, for the emulators and runs)
from store import CatalogStore  # noqa: E402

KEY = "bench-retailcrm-key"
SITE = "shop"
SECRET = "bench-webhook-secret-0123456789"
RATE = 10  # retailCRM's requests per second per key
GOAL_SECONDS = 10
GOAL_MOYSKLAD_REQUESTS = 4
GOAL_RATIO = 1.2
SETUP_TIMEOUT = 1800

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from core.settings import load_settings
from retailcrm.push import push_feed

settings = load_settings(sys.argv[2])
account, feed = settings.find_feed("main")
started = time.monotonic()
result = push_feed(account, feed, full=True)
print(json.dumps({"seconds": time.monotonic() - started, "requests": result.requests, "offers": result.offers,
                  "records": result.records, "batches": result.batches, "throttled": result.throttled,
                  "retries": result.retries, "not_found": result.not_found,
                  "plan_seconds": result.counts.get("plan_seconds")}))
"""


def config_text(moysklad_url: str, crm_url: str, spb: str, wholesale: str) -> str:
    return (f"data_dir: data\nmoysklad:\n  base_url: {moysklad_url}\n  token: {EMULATOR_TOKEN}\n"
            f"webhooks:\n  secret: {SECRET}\n"
            f"feeds:\n  - name: main\n    pictures: none\n    min_ratio: 0\n    interval_minutes: 1440\n"
            f"    retailcrm:\n      url: {crm_url}\n      api_key: {KEY}\n      site: {SITE}\n"
            f"      stores: {{main: all, spb: [{spb}]}}\n      prices: {{wholesale: {wholesale}}}\n")


def runs(data_dir: Path, source: str, kind: str) -> list[dict]:
    store = CatalogStore(data_dir / "catalog.sqlite")
    try:
        return store.runs_of(source, kind, 10)
    finally:
        store.close()


def expected_stock(item, spb: int) -> dict:
    """What the push sends for a good (quantity rule "free"): on spb, and on main ("all" beside spb: every other
    warehouse and the reserve MoySklad ties to none, since retailCRM adds its warehouses up)."""
    others = [s for s in range(len(item.stock) // 3) if s != spb]
    reserved = sum(item.stock[3 * s + 1] for s in others) + (item.unbound_reserve or 0)
    rest = max(sum(item.stock[3 * s] for s in others) - reserved, 0)
    return {"main": rest, "spb": max(item.stock[3 * spb] - item.stock[3 * spb + 1], 0)}


def visible(crm: RetailCrmEmulator, item_id: str, expected: dict) -> bool:
    """The feed writes quantities to three decimals (goods sold by weight)."""
    stock = crm.stock(SITE, item_id)
    return all(abs(stock.get(code, {}).get("available", -1) - value) < 0.0005 for code, value in expected.items())


def measure(rows: int, changes: int, rounds: int, out) -> dict:
    moysklad = start_emulator(rows, seed=7, webhook_interval=10 ** 9)  # stock webhooks only when flushed here
    crm = RetailCrmEmulator(api_key=KEY, sites=(SITE,)).start()
    catalog = moysklad.catalog
    spb = len(catalog.stores) - 1
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            config = config_text(moysklad.base_url, crm.base_url, catalog.stores[spb].name, catalog.price_types[1].name)
            (workdir / "config.yaml").write_text(config, encoding="utf-8")
            print(f"  building the feed of {rows:,} rows ...", file=out, flush=True)
            env = {"SKLADBRIDGE_CONFIG": str(workdir / "config.yaml")}
            build = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "feeds", "build", "main"], cwd=ROOT,
                                   env={**_clean_environ(), **env}, capture_output=True, text=True, timeout=SETUP_TIMEOUT)
            if build.returncode:
                raise SystemExit(f"feeds build failed:\n{build.stderr[-3000:]}")
            offers = crm.load_icml(workdir / "data" / "feeds" / "main.xml", SITE)

            print(f"  full push of {offers:,} offers ...", file=out, flush=True)
            crm.reset_stats()
            full = run_measured(CHILD, str(ROOT), str(workdir / "config.yaml"), what="full push")
            full_stats = crm.stats_snapshot()
            full["floor_seconds"] = full["requests"] / RATE
            full["ratio"] = full["seconds"] / full["floor_seconds"]
            full["rate_limited"] = full_stats["rate_limited"]
            full["max_batch"] = full_stats["max_upload_items"]

            print("  starting the app (its first build and push run at start) ...", file=out, flush=True)
            app = Gunicorn(workdir, config, workers=2)
            try:
                app.wait_ready(60)
                wait_for(lambda: any(r["status"] in ("ok", "failed") for r in runs(app.data_dir, "retailcrm:main", "push")
                                     if r["mode"] == "changes"), SETUP_TIMEOUT, "the app's first push")
                moysklad.webhooks.create("webhookstock", {"url": f"{app.base}/webhooks/moysklad/{SECRET}",
                                                          "stockType": "stock", "reportType": "all"})
                fast = [fast_path(moysklad, crm, app, changes, spb, round_, out) for round_ in range(rounds)]
            finally:
                app.stop()
    finally:
        crm.stop()
        moysklad.stop()
    worst = max(fast, key=lambda f: f["seconds"])
    return {"rows": rows, "offers": offers, "changes": changes, "fast": worst, "rounds": fast, "full": full,
            "goals": {f"webhook → retailCRM <= {GOAL_SECONDS} s": worst["seconds"] <= GOAL_SECONDS,
                      f"MoySklad requests per stock webhook <= {GOAL_MOYSKLAD_REQUESTS}":
                          max(f["moysklad_requests"] for f in fast) <= GOAL_MOYSKLAD_REQUESTS,
                      f"full push <= {GOAL_RATIO}x the 10 req/s floor": full["ratio"] <= GOAL_RATIO,
                      "no 503 from the rate limit": full["rate_limited"] == 0 and not any(f["rate_limited"] for f in fast)}}


def fast_path(moysklad, crm, app: Gunicorn, changes: int, spb: int, round_: int, out) -> dict:
    """C goods get new stock on the spb warehouse, one stock webhook goes out; until all C show in retailCRM."""
    catalog = moysklad.catalog
    known = crm.state()[SITE]
    candidates = [item for item in catalog.items.values() if item.operated and not item.archived and item.id in known
                  and known[item.id]["stock"]]
    chosen = random.Random(round_).sample(candidates, changes)
    print(f"  round {round_ + 1}: {changes} stock changes, then the stock webhook ...", file=out, flush=True)
    before = max((r["id"] for r in runs(app.data_dir, "retailcrm:main", "push")), default=0)
    moysklad.reset_stats()
    crm.reset_stats()
    for n, item in enumerate(chosen):
        catalog.set_stock(item.id, catalog.stores[spb].id, stock=item.stock[3 * spb + 1] + 11 + n + 100 * round_)
    expected = {item.id: expected_stock(item, spb) for item in chosen}
    started = time.monotonic()
    assert moysklad.webhooks.flush_stock() == 1
    waiting = dict(expected)
    while waiting:
        waiting = {item_id: values for item_id, values in waiting.items() if not visible(crm, item_id, values)}
        if time.monotonic() - started > 120:
            sample = {item_id: (values, crm.stock(SITE, item_id)) for item_id, values in list(waiting.items())[:3]}
            raise SystemExit(f"{len(waiting)} of {changes} values never reached retailCRM, e.g. {sample}:\n"
                             f"{app.log()[-3000:]}")
        time.sleep(0.01)
    seconds = time.monotonic() - started
    delivery = [d for d in moysklad.webhooks.deliveries if d["kind"] == "webhookstock"][-1]
    pushed = wait_for(lambda: next((r for r in runs(app.data_dir, "retailcrm:main", "push")
                                    if r["id"] > before and r["status"] != "running"), None), 10, "the fast push's run")
    stats = moysklad.stats_snapshot()
    units = sum(entry.get("cost", 0) for entry in moysklad.request_log)
    crm_stats = crm.stats_snapshot()
    return {"seconds": seconds, "webhook_answer_seconds": delivery["elapsed"], "moysklad_requests": stats["requests"],
            "moysklad_units": units, "moysklad_paths": stats["by_path"], "retailcrm_requests": crm_stats["requests"],
            "rate_limited": crm_stats["rate_limited"], "pushed_offers": pushed["counts"].get("offers"),
            "recorded_latency_seconds": pushed["counts"].get("latency_seconds")}


def _clean_environ() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MOYSKLAD_", "SKLADBRIDGE_", "RETAILCRM_"))}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="assortment rows in the MoySklad emulator")
    parser.add_argument("--changes", type=int, default=50, help="goods whose stock changes before the webhook")
    parser.add_argument("--rounds", type=int, default=3, help="stock webhooks measured one after the other")
    args = parser.parse_args()
    out = table_output(args)
    print(f"retailCRM push benchmark: {args.rows:,} rows, {args.changes} stock changes", file=out, flush=True)
    r = measure(args.rows, args.changes, args.rounds, out)
    fast, full = r["fast"], r["full"]
    times = ", ".join(f"{f['seconds']:.1f}" for f in r["rounds"])
    print(f"stock webhook → retailCRM: worst {fast['seconds']:.1f} s of {len(r['rounds'])} rounds ({times} s) "
          f"for {args.changes} goods (receiver answered in "
          f"{fast['webhook_answer_seconds'] * 1000:.0f} ms); MoySklad {fast['moysklad_requests']} requests, "
          f"{fast['moysklad_units']} units ({', '.join(f'{p} ×{n}' for p, n in fast['moysklad_paths'].items())}); "
          f"retailCRM {fast['retailcrm_requests']} requests, {fast['pushed_offers']} offers pushed", file=out)
    print(f"full push: {r['offers']:,} offers, {full['records']:,} values, {full['requests']} requests "
          f"(largest batch {full['max_batch']}) in {full['seconds']:.1f} s (of which {full['plan_seconds']:.1f} s "
          f"computing); floor {full['floor_seconds']:.1f} s at {RATE} req/s, ratio {full['ratio']:.2f}; "
          f"{full['rate_limited']} rate-limited, {full['retries']} retries", file=out)
    for goal, met in r["goals"].items():
        print(f"goal {goal}: {'met' if met else 'MISSED'}", file=out)
    if args.json:
        print_json("retailcrm", [r])


if __name__ == "__main__":
    main()

"""``/metrics``: the health data as Prometheus text (prometheus-client).

Read from the store on every scrape, so every gunicorn worker answers the same numbers; the
totals are sums over the recorded runs and sessions, which only grow.
"""

from __future__ import annotations

import datetime as dt

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

FEED_STATES = ("fresh", "stale", "failing", "building", "pending")
# Every per-feed series: feed names are unique across accounts, the account lets a dashboard group them by client.
FEED_LABELS = ["feed", "account"]


def render_metrics(data: dict) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HealthCollector(data))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _HealthCollector:
    def __init__(self, data: dict):
        self.data = data

    def collect(self):
        data = self.data
        yield _gauge("skladbridge_healthy", "1 when every feed is fresh and the store opens.", [((), int(data["ok"]))])
        yield _gauge("skladbridge_store_ok", "1 when the account's catalog store opens.",
                     [((account["name"],), int(account["store"]["ok"])) for account in data["accounts"]], ["account"])
        yield from self._feeds(data["feeds"])
        yield from self._moysklad([account for account in data["accounts"] if account["moysklad"]])
        if data.get("exchange"):
            yield from self._exchange(data["exchange"])
        if data.get("queue"):
            yield from self._queue(data["queue"])

    @staticmethod
    def _feeds(feeds: list[dict]):
        def per_feed(pick):
            return _per_feed(feeds, pick)

        def success(key):
            return per_feed(lambda f: f["last_success"] and f["last_success"][key])

        state = GaugeMetricFamily("skladbridge_feed_state", "1 for the feed's current state.",
                                  labels=[*FEED_LABELS, "state"])
        for feed in feeds:
            for name in FEED_STATES:
                state.add_metric([feed["name"], feed["account"], name], int(feed["state"] == name))
        yield state
        yield _gauge("skladbridge_feed_last_success_timestamp_seconds", "When the feed was last published (Unix time).",
                     per_feed(lambda f: f["last_success"] and _timestamp(f["last_success"]["finished_at"])), FEED_LABELS)
        yield _gauge("skladbridge_feed_build_duration_seconds", "How long the last published build took (sync included).",
                     success("seconds"), FEED_LABELS)
        yield _gauge("skladbridge_feed_offers", "Offers in the published feed.", success("offers"), FEED_LABELS)
        yield _gauge("skladbridge_feed_active_offers", "Offers on sale (productActivity Y) in the published feed.",
                     success("active"), FEED_LABELS)
        yield _gauge("skladbridge_feed_skipped_offers", "Offers the last published build left out.",
                     per_feed(lambda f: f["skipped"]["total"]), FEED_LABELS)
        yield _gauge("skladbridge_feed_size_bytes", "Size of the published feed file.",
                     per_feed(lambda f: f["file"]["size"]), FEED_LABELS)
        yield _counter("skladbridge_feed_builds", "Builds started.", per_feed(lambda f: f["totals"] and f["totals"]["runs"]),
                       FEED_LABELS)
        yield _counter("skladbridge_feed_build_failures", "Builds that failed or were interrupted.",
                       per_feed(lambda f: f["totals"] and f["totals"]["failed"]), FEED_LABELS)
        yield from _HealthCollector._retailcrm([feed for feed in feeds if feed.get("retailcrm")])

    @staticmethod
    def _retailcrm(feeds: list[dict]):
        def per_feed(pick):
            return _per_feed(feeds, lambda feed: pick(feed["retailcrm"]))

        def total(key):
            return per_feed(lambda crm: crm["totals"][key])

        yield _counter("skladbridge_retailcrm_pushes", "Pushes of stock and prices to retailCRM started.",
                       total("runs"), FEED_LABELS)
        yield _counter("skladbridge_retailcrm_push_failures", "Pushes to retailCRM that failed or were interrupted.",
                       total("failed"), FEED_LABELS)
        yield _counter("skladbridge_retailcrm_pushed_records", "Warehouse and price values retailCRM accepted.",
                       total("records"), FEED_LABELS)
        yield _counter("skladbridge_retailcrm_pushed_offers", "Offers whose values retailCRM accepted (per push, summed).",
                       total("offers"), FEED_LABELS)
        yield _counter("skladbridge_retailcrm_not_found", "Offers retailCRM answered as not found (per push, summed).",
                       total("not_found"), FEED_LABELS)
        yield _counter("skladbridge_retailcrm_requests", "Requests sent to the retailCRM API by pushes.",
                       total("requests"), FEED_LABELS)
        yield _counter("skladbridge_retailcrm_throttled", "retailCRM answers 'Rate limit exceeded' (503/429).",
                       total("throttled"), FEED_LABELS)
        yield _gauge("skladbridge_retailcrm_waiting_offers", "Offers retailCRM does not know yet (until it loads the ICML).",
                     per_feed(lambda crm: crm["waiting"]), FEED_LABELS)
        yield _gauge("skladbridge_retailcrm_last_push_timestamp_seconds", "When a push last succeeded (Unix time).",
                     per_feed(lambda crm: crm["last_success"] and _timestamp(crm["last_success"]["finished_at"])),
                     FEED_LABELS)
        latency = SummaryMetricFamily("skladbridge_retailcrm_webhook_latency_seconds",
                                      "From a MoySklad stock webhook received to its values accepted by retailCRM.",
                                      labels=FEED_LABELS)
        for feed in feeds:
            totals = feed["retailcrm"]["totals"]
            latency.add_metric([feed["name"], feed["account"]], count_value=totals["latency_count"],
                               sum_value=totals["latency_sum"])
        yield latency

    @staticmethod
    def _moysklad(accounts: list[dict]):
        """The MoySklad sync of every account that reads the API, labelled by account (``main`` for the main one)."""
        if not accounts:
            return

        def per_account(pick):
            return [((account["name"],), value) for account in accounts if (value := pick(account["moysklad"])) is not None]

        def total(key):
            return per_account(lambda moysklad: moysklad["totals"][key])

        labels = ["account"]
        yield _gauge("skladbridge_moysklad_credentials_ok", "1 when the last sync got in (or a failure was not about them).",
                     per_account(lambda moysklad: int(moysklad["credentials"] == "ok")), labels)
        yield _counter("skladbridge_moysklad_syncs", "Catalog syncs started.", total("runs"), labels)
        yield _counter("skladbridge_moysklad_sync_failures", "Catalog syncs that failed.", total("failed"), labels)
        yield _counter("skladbridge_moysklad_requests", "Requests sent to the MoySklad API.", total("requests"), labels)
        yield _counter("skladbridge_moysklad_throttled", "429 answers from the MoySklad API.", total("throttled"), labels)
        yield _counter("skladbridge_moysklad_retries", "Requests retried after a 5xx, timeout or reset.", total("retries"),
                       labels)
        yield _gauge("skladbridge_moysklad_last_sync_timestamp_seconds", "When a sync last succeeded (Unix time).",
                     per_account(lambda moysklad: moysklad["last_successful_sync"]
                                 and _timestamp(moysklad["last_successful_sync"]["finished_at"])), labels)

    @staticmethod
    def _queue(queue: dict):
        yield _gauge("skladbridge_build_pool_size", "Builds the instance runs at once (max_concurrent_builds).",
                     [((), queue["size"])])
        yield _gauge("skladbridge_build_queue_running", "Builds (and stock pushes) running now.", [((), queue["running"])])
        yield _gauge("skladbridge_build_queue_waiting", "Builds (and stock pushes) waiting for the pool.",
                     [((), queue["waiting"])])
        yield _gauge("skladbridge_build_queue_oldest_wait_seconds", "How long the longest-waiting work has waited.",
                     [((), queue["oldest_wait_seconds"])])
        yield _gauge("skladbridge_build_queue_longest_wait_seconds",
                     "The longest any work waited before it started, since the scheduler started.",
                     [((), queue["longest_wait_seconds"])])

    @staticmethod
    def _exchange(exchange: dict):
        totals, imports = exchange["totals"], exchange["imports"]
        yield _counter("skladbridge_exchange_sessions", "CommerceML exchange sessions opened.", [((), totals["sessions"])])
        yield _counter("skladbridge_exchange_failed_sessions", "Exchange sessions that ended in failure.",
                       [((), totals["failed"])])
        yield _counter("skladbridge_exchange_received_bytes", "Bytes 1C / MoySklad uploaded.", [((), totals["bytes"])])
        yield _counter("skladbridge_exchange_imports", "CommerceML files imported (or attempted).", [((), imports["runs"])])
        yield _counter("skladbridge_exchange_import_failures", "CommerceML file imports that failed.",
                       [((), imports["failed"])])
        yield _gauge("skladbridge_orders_waiting_for_1c", "Orders 1C / MoySklad has not confirmed (mode=success) yet.",
                     [((), exchange["orders"]["waiting_for_1c"])])
        last = exchange["last_import"]
        if last and last["seconds"] is not None:
            yield _gauge("skladbridge_exchange_last_import_duration_seconds", "How long the last file import took.",
                         [((), last["seconds"])])


def _per_feed(feeds: list[dict], pick) -> list[tuple[tuple[str, str], float]]:
    """(FEED_LABELS values, value) of each feed for which ``pick`` gives a value."""
    return [((feed["name"], feed["account"]), value) for feed in feeds if (value := pick(feed)) is not None]


def _family(kind, name: str, documentation: str, samples, labels: list[str] | None = None):
    """A metric family of ``kind`` (gauge or counter) from (label values, value) pairs."""
    family = kind(name, documentation, labels=labels or [])
    for label_values, value in samples:
        family.add_metric(list(label_values), value)
    return family


def _gauge(*args, **kwargs) -> GaugeMetricFamily:
    return _family(GaugeMetricFamily, *args, **kwargs)


def _counter(*args, **kwargs) -> CounterMetricFamily:
    return _family(CounterMetricFamily, *args, **kwargs)


def _timestamp(text: str | None) -> float | None:
    return dt.datetime.fromisoformat(text).timestamp() if text else None

"""A stock webhook's fast path: the stock that changed, read from MoySklad's short report into the store.

No sync and no render: three requests to ``/report/stock/bystore/current`` (``stockType`` stock,
reserve, inTransit: one figure per request, per warehouse, as the store keeps them) with
``changedSince``, which lists every good whose stock changed since then with its current figures
on every warehouse (zero lines included). The webhook's own ``reportUrl`` is never fetched: only
its ``changedSince`` is taken, and the request goes to the configured MoySklad address.

``changedSince`` is the earlier of the webhook's and the store's stock bookmark (where the last
sync or fast path left off), so a webhook that was missed, merged or failed is caught up by the
next one; MoySklad refuses moments more than 24 hours back, and then the report is read whole.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from moysklad.client import MoySkladClient
from moysklad.sync import SOURCE, STOCK_BOOKMARK, read_from, read_stock
from store import CatalogStore

log = logging.getLogger(__name__)

__all__ = ["StockUpdate", "apply_stock_changes", "read_from", "report_moment"]

MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


@dataclass
class StockUpdate:
    """What one fast-path run read and changed (recorded as a ``moysklad`` run of kind ``stock``)."""

    run_id: int
    mode: str  # "changes" (changedSince) or "full" (no usable moment: the whole report)
    changed_since: str | None
    offer_ids: list[str] | None  # the goods whose stock changed; None after a whole read (any may have)
    rows: int
    requests: int
    throttled: int
    retries: int
    seconds: float
    number: int = 0  # the update's own number among the stock runs, as the health page shows it


def report_moment(report_url) -> str | None:
    """The ``changedSince`` of a stock webhook's ``reportUrl`` (Moscow time), or None when it has none.

    Raises ValueError when ``report_url`` is not a text at all (a malformed payload).
    """
    if not isinstance(report_url, str):
        raise ValueError(f"reportUrl must be a text, got {type(report_url).__name__}")
    values = parse_qs(urlsplit(report_url).query).get("changedSince") or [""]
    moment = values[0].strip()
    return moment if MOMENT.match(moment) else None


def apply_stock_changes(client: MoySkladClient, store: CatalogStore, changed_since: str | None) -> StockUpdate:
    """Read the stock that changed since ``changed_since`` (or the bookmark) into the store, in one run."""
    started = time.monotonic()
    before = (client.requests, client.throttled, client.retries)
    with store.run(SOURCE, "stock") as run:
        since = read_from(changed_since, store.setting(SOURCE, STOCK_BOOKMARK))
        run.mode = "changes" if since else "full"
        try:
            changed = read_stock(client, run, since).changed
            run.stats.add("offers", len(changed or ()))
        finally:
            run.stats.requests = client.requests - before[0]
            run.stats.throttled = client.throttled - before[1]
            run.stats.retries = client.retries - before[2]
    update = StockUpdate(run_id=run.id, mode=run.mode, changed_since=since,
                         offer_ids=sorted(changed) if changed is not None else None,
                         rows=sum(v for k, v in run.stats.counts.items() if k.endswith("_rows")),
                         requests=run.stats.requests, throttled=run.stats.throttled, retries=run.stats.retries,
                         seconds=time.monotonic() - started, number=run.number)
    log.info("moysklad stock #%d (%s since %s) in %.1f s: %d goods changed, %d rows; %d requests",
             update.number, update.mode, since or "-", update.seconds, len(changed or ()), update.rows, update.requests)
    return update

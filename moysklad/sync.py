"""Catalog sync: MoySklad → catalog store, full or incremental, as one transaction.

Requests for N items: ceil(N/1000) assortment pages + ceil(N/1000) stock-report pages (unit cost
and first image) + three current-stock reports + a handful of reference lists.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from core.clock import MOSCOW
from moysklad.client import MoySkladClient
from moysklad.transform import (
    MalformedItem,
    assortment_records,
    category_record,
    price_type_records,
    quantity,
    reference_record,
    stock_report_record,
)
from store import CatalogRun, CatalogStore

log = logging.getLogger(__name__)

SOURCE = "moysklad"
BOOKMARK_FORMAT = "%Y-%m-%d %H:%M:%S"
ALL_ITEMS = "archived=true;archived=false"
WITHOUT_STOCK = {"X-Lognex-Remap-Beta-Feature": "assortmentWithoutStock"}
# stockType of /report/stock/bystore/current → column of the stock table
STOCK_COLUMNS = {"stock": "stock", "reserve": "reserve", "inTransit": "in_transit"}
# MoySklad's time (Moscow) up to which the store's stock is known: a stock webhook's report is read from it.
STOCK_BOOKMARK = "stock_bookmark"
# Goods whose stock was being recalculated are left out of a report: read a few minutes back again.
STOCK_OVERLAP = dt.timedelta(minutes=5)

Progress = Callable[[str, int], None]


@dataclass
class SyncResult:
    run_id: int
    mode: str
    counts: dict
    requests: int
    throttled: int
    retries: int
    seconds: float
    bookmark: str
    changed_since: str | None = None  # what this run asked for (None: everything)


def sync_catalog(
    client: MoySkladClient,
    store: CatalogStore,
    *,
    full: bool = False,
    overlap_minutes: int = 10,
    full_sync_hours: int = 24,
    progress: Progress | None = None,
) -> SyncResult:
    """Pull the catalog into the store; the bookmark moves only when the whole run commits."""
    progress = progress or (lambda stage, count: None)
    started = time.monotonic()
    before = (client.requests, client.throttled, client.retries)
    with store.run(SOURCE, "sync") as run:
        previous = store.setting(SOURCE, "bookmark")
        mode = "full" if full or not previous or _full_due(store, full_sync_hours) else "incremental"
        run.mode = mode
        try:
            changed_since = None if mode == "full" else previous
            company = client.get("/context/companysettings")
            server_now = (client.server_date or dt.datetime.now(dt.timezone.utc)).astimezone(MOSCOW)
            bookmark = (server_now - dt.timedelta(minutes=overlap_minutes)).strftime(BOOKMARK_FORMAT)
            _save_company(run, company)
            _save_references(client, run)
            consistent = _save_categories(client, run, changed_since, progress)
            consistent &= _save_assortment(client, run, changed_since, progress)
            _save_stock(client, run, progress)
            _save_costs_and_images(client, run, progress)
            if mode == "full":
                if consistent:
                    for table, count in run.mark_unseen_removed().items():
                        run.stats.add(f"removed_{table}", count)
                    run.set_setting("last_full_sync", server_now.isoformat())
                else:
                    run.stats.add("reconcile_postponed")
                    log.warning("the catalog changed while it was being read; deletions will be reconciled on the next full sync")
            run.bookmark = bookmark
            run.set_setting("bookmark", bookmark)
        finally:
            run.stats.requests = client.requests - before[0]
            run.stats.throttled = client.throttled - before[1]
            run.stats.retries = client.retries - before[2]
    result = SyncResult(
        run_id=run.id, mode=mode, counts=dict(run.stats.counts), requests=run.stats.requests,
        throttled=run.stats.throttled, retries=run.stats.retries,
        seconds=time.monotonic() - started, bookmark=bookmark, changed_since=changed_since,
    )
    log.info("moysklad sync #%d (%s) in %.1f s: %s; %d requests, %d throttled (429), %d retries",
             result.run_id, mode, result.seconds, result.counts, result.requests, result.throttled, result.retries)
    return result


def _full_due(store: CatalogStore, full_sync_hours: int) -> bool:
    """A periodic full run is what notices deletions; incremental runs cannot see them."""
    if full_sync_hours <= 0:
        return False
    last = store.setting(SOURCE, "last_full_sync")
    if not last:
        return True
    try:
        last_time = dt.datetime.fromisoformat(last)
    except ValueError:
        return True
    return dt.datetime.now(dt.timezone.utc) - last_time > dt.timedelta(hours=full_sync_hours)


def _filter(changed_since: str | None) -> str:
    return ALL_ITEMS + (f";updated>={changed_since}" if changed_since else "")


def _save_company(run: CatalogRun, company: dict) -> None:
    currency = company.get("currency") if isinstance(company, dict) else None
    if isinstance(currency, dict):
        run.set_setting("currency", currency.get("isoCode") or currency.get("name"))
        run.set_setting("currency_name", currency.get("name"))
    price_types = price_type_records(company)
    run.replace_all("price_types", price_types, ("source", "id"))
    run.stats.add("price_types", len(price_types))


def _save_references(client: MoySkladClient, run: CatalogRun) -> None:
    """Legal entity name, warehouses and units: small lists, replaced whole on every run."""
    organizations = client.get("/entity/organization", {"limit": 1}).get("rows") or []
    if organizations and isinstance(organizations[0].get("name"), str):
        run.set_setting("company", organizations[0]["name"])
    warehouses = _valid(run, "warehouse", client.iter_rows("/entity/store", {"filter": ALL_ITEMS}),
                        lambda row: reference_record(row, "warehouse", ("external_code", "externalCode"), ("archived", "archived")))
    run.stats.add("warehouses", run.replace_all("warehouses", warehouses, ("source", "id")))
    units = _valid(run, "unit", client.iter_rows("/entity/uom"),
                   lambda row: reference_record(row, "unit", ("code", "code"), ("description", "description")))
    run.stats.add("units", run.replace_all("units", units, ("source", "id")))


def _save_categories(client: MoySkladClient, run: CatalogRun, changed_since: str | None, progress: Progress) -> bool:
    sizes = set()
    for page in client.iter_pages("/entity/productfolder", {"filter": _filter(changed_since)}):
        sizes.add(page["meta"].get("size"))
        saved = run.upsert_categories(_valid(run, "folder", page["rows"], category_record))
        run.stats.add("categories", saved)
        progress("categories", run.stats.counts.get("categories", 0))
    return len(sizes) <= 1


def _save_assortment(client: MoySkladClient, run: CatalogRun, changed_since: str | None, progress: Progress) -> bool:
    """Products, variants, services and bundles, page by page (a page is at most 1000 rows)."""
    sizes = set()
    pages = client.iter_pages("/entity/assortment", {"filter": _filter(changed_since)}, WITHOUT_STOCK)
    for page in pages:
        sizes.add(page["meta"].get("size"))
        products, offers, prices, attributes, owners = [], [], [], [], []
        for row in page["rows"]:
            try:
                records = assortment_records(row)
            except MalformedItem as exc:
                _skip(run, row, "assortment", str(exc))
                continue
            offers.append(records.offer)
            owners.append(records.offer["id"])
            prices.extend(records.prices)
            attributes.extend(records.attributes)
            if records.product:
                products.append(records.product)
            run.stats.add(records.offer["kind"] + "s")
        run.upsert_products(products)
        run.upsert_offers(offers)
        run.stats.add("prices", run.replace_children("prices", "offer_id", owners, prices, ("source", "offer_id", "price_type_id")))
        run.stats.add("attributes", run.replace_children("attributes", "owner_id", owners, attributes, ("source", "owner_id", "attribute_id")))
        run.stats.add("assortment_rows", len(page["rows"]))
        progress("assortment", run.stats.counts["assortment_rows"])
        del page, products, offers, prices, attributes  # a parsed page is large: free it before the next arrives
    return len(sizes) <= 1


def stock_bookmark(server_date: dt.datetime | None) -> str | None:
    """The stock bookmark for stock read just after MoySklad's clock said ``server_date``."""
    if server_date is None:
        return None
    return (server_date.astimezone(MOSCOW) - STOCK_OVERLAP).strftime(BOOKMARK_FORMAT)


def _save_stock(client: MoySkladClient, run: CatalogRun, progress: Progress) -> None:
    """Per-warehouse stock, reserve and in transit; always read whole (three cheap requests)."""
    run.set_setting(STOCK_BOOKMARK, stock_bookmark(client.server_date))
    run.clear("stock")
    for stock_type, column in STOCK_COLUMNS.items():
        rows = client.iter_array("/report/stock/bystore/current", {"stockType": stock_type})
        count = run.merge_stock(
            ((row["assortmentId"], row.get("storeId") or "", quantity(row.get(stock_type)))
             for row in rows if isinstance(row, dict) and row.get("assortmentId")),
            column,
        )
        run.stats.add(f"stock_{column}_rows", count)
        progress(f"stock {stock_type}", count)


def _save_costs_and_images(client: MoySkladClient, run: CatalogRun, progress: Progress) -> None:
    """Unit cost (себестоимость) and the first image of every product and variant, from the stock report."""
    run.clear("images")
    done = 0
    for page in client.iter_pages("/report/stock/all", {"filter": "stockMode=all"}):
        costs, images = [], []
        for row in page["rows"]:
            try:
                offer_id, cost, image = stock_report_record(row)
            except MalformedItem as exc:
                _skip(run, row, "stock report", str(exc))
                continue
            costs.append((offer_id, cost))
            if image:
                images.append(image)
        run.update_offers("cost", costs)
        run.stats.add("images", run.upsert("images", images, ("source", "owner_id", "position")))
        done += len(page["rows"])
        progress("unit costs", done)
        del page


def _valid(run: CatalogRun, item_type: str, rows: Iterable[dict], transform) -> Iterator[dict]:
    """Transform rows, recording the malformed ones as skipped instead of failing the run."""
    for row in rows:
        try:
            yield transform(row)
        except MalformedItem as exc:
            _skip(run, row, item_type, str(exc))


def _skip(run: CatalogRun, row, item_type: str, reason: str) -> None:
    row = row if isinstance(row, dict) else {}
    name = row.get("name") if isinstance(row.get("name"), str) else None
    item_id = row.get("id") if isinstance(row.get("id"), str) else None
    log.info("skipped %s %s (%s): %s", item_type, item_id, name, reason)
    run.skip(item_type, item_id, name, reason)

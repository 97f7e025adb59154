"""Catalog sync: MoySklad → catalog store, full or incremental, as one transaction.

Requests of a full sync for N assortment rows (B of them bundles, F folders, S goods in the stock
report: operated and not archived, S ≤ N):

    4 reference requests (company settings, legal entity, warehouses, units)
    + ceil(F/1000) folder pages + ceil(N/1000) assortment pages
    + 3 current-stock reports (1 unit each) + ceil(S/1000) stock-report pages (5 units each)
    + ceil(B/100) bundle pages (``expand=components`` works only up to limit 100)
    ≤ 2 × ceil(N/1000) + ceil(F/1000) + ceil(B/100) + 7.

An incremental run asks the same lists with ``updated>=bookmark`` (one page each when little
changed, bundles included) and the stock reports whole: 10 + ceil(S/1000) when little changed.
A bundle whose components do not all come inline costs one more request (its components list).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from core.clock import MOSCOW
from moysklad.client import MoySkladClient
from moysklad.errors import AccountMismatch
from moysklad.transform import (
    MalformedItem,
    assortment_records,
    bundle_component_records,
    category_record,
    component_record,
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
# quantityMode defaults to nonEmpty: without it goods with nothing available (and their cost and
# first image) are missing from /report/stock/all (DOMAIN.md, "Details that are easy to get wrong").
STOCK_REPORT_FILTER = "stockMode=all;quantityMode=all"
EXPAND_LIMIT = 100  # MoySklad ignores expand on list pages above this limit
# Set once every bundle's components were read; until then an incremental run reads them all.
COMPONENTS_READ = "bundle_components_read"
# stockType of /report/stock/bystore/current → column of the stock table
STOCK_COLUMNS = {"stock": "stock", "reserve": "reserve", "inTransit": "in_transit"}
# MoySklad's time (Moscow) up to which the store's stock is known: a stock webhook's report is read from it.
STOCK_BOOKMARK = "stock_bookmark"
# Goods whose stock was being recalculated are left out of a report: read a few minutes back again.
STOCK_OVERLAP = dt.timedelta(minutes=5)

# Called as progress(stage, done) or progress(stage, done, total) as a step advances.
Progress = Callable[..., None]
# What a store records as the address of the demo's emulator (its port changes with every start).
DEMO_ADDRESS = "demo"


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
    units: int = 0  # what the requests cost of MoySklad's budget (45 units / 3 s)


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
    progress = progress or (lambda *step: None)
    started = time.monotonic()
    before = (client.requests, client.throttled, client.retries, client.units)
    with store.run(SOURCE, "sync") as run:
        previous = store.setting(SOURCE, "bookmark")
        mode = "full" if full or not previous or _full_due(store, full_sync_hours) else "incremental"
        run.mode = mode
        try:
            changed_since = None if mode == "full" else previous
            company = client.get("/context/companysettings")
            server_now = (client.server_date or dt.datetime.now(dt.timezone.utc)).astimezone(MOSCOW)
            bookmark = (server_now - dt.timedelta(minutes=overlap_minutes)).strftime(BOOKMARK_FORMAT)
            organizations = client.get("/entity/organization", {"limit": 1}).get("rows") or []
            _claim_account(store, run, client, organizations)
            _save_company(run, company)
            _save_references(client, run, organizations)
            consistent = _save_categories(client, run, changed_since, progress)
            consistent &= _save_assortment(client, run, changed_since, progress)
            _save_bundle_components(client, run, changed_since if store.setting(SOURCE, COMPONENTS_READ) else None,
                                    progress)
            run.set_setting(COMPONENTS_READ, server_now.isoformat())
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
        units=client.units - before[3],
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


def _claim_account(store: CatalogStore, run: CatalogRun, client: MoySkladClient, organizations: list) -> None:
    """One store holds one MoySklad account: the first sync records which (its ``accountId``, address and
    name), and a sync that reaches another account, or the demo's emulator instead of a real account or
    the other way round, is refused before it writes anything."""
    row = next((row for row in organizations if isinstance(row, dict) and isinstance(row.get("accountId"), str)), None)
    if row is None:
        return  # MoySklad always sends it; without it there is nothing to compare, and the claim stays
    reached = {"id": row["accountId"], "address": client_address(client),
               "name": row.get("name") if isinstance(row.get("name"), str) else "?"}
    held = held_account(store)
    if held["id"] is None:
        for key, value in reached.items():
            run.set_setting(f"account_{key}", value)
        return
    conflict = account_conflict(store.path, held, reached)
    if conflict:
        raise AccountMismatch(conflict + "; nothing was synced")
    if held["address"] != reached["address"]:
        log.info("MoySklad account %s is now reached at %s (was %s)", reached["id"], reached["address"], held["address"])
        run.set_setting("account_address", reached["address"])


def client_address(client: MoySkladClient) -> str:
    """The address a store records for the account a client reaches (the demo's emulator by name)."""
    return DEMO_ADDRESS if client.settings.emulator is not None else client.base_url


def held_account(store: CatalogStore) -> dict:
    """The account a store holds: id, address and name, each None before its first sync."""
    return {key: store.setting(SOURCE, f"account_{key}") for key in ("id", "address", "name")}


def account_conflict(store_path, held: dict, reached: dict) -> str | None:
    """Why the account ``reached`` must not be synced into the store holding ``held``; None when it may."""
    if held["id"] is None:
        return None
    if held["id"] == reached["id"] and (held["address"] == DEMO_ADDRESS) == (reached["address"] == DEMO_ADDRESS):
        return None
    return (f"the catalog store {store_path} holds {_account_text(held)}, but moysklad.base_url and the "
            f"credentials reach {_account_text(reached)}. One store holds one account: give this one a data_dir "
            f"of its own (or an entry in accounts:), or, to replace the old catalog, stop the service and move "
            f"{store_path.parent} aside, then sync again")


def _account_text(account: dict) -> str:
    if account["address"] == DEMO_ADDRESS:
        return f"the demo's generated catalog (the bundled emulator, account {account['id']})"
    return f"MoySklad account «{account['name']}» (accountId {account['id']} at {account['address']})"


def _save_references(client: MoySkladClient, run: CatalogRun, organizations: list) -> None:
    """Legal entity name, warehouses and units: small lists, replaced whole on every run."""
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
        total = page["meta"].get("size") if isinstance(page["meta"].get("size"), int) else None
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
        progress("assortment", run.stats.counts["assortment_rows"], total)
        del page, products, offers, prices, attributes  # a parsed page is large: free it before the next arrives
    return len(sizes) <= 1


def _save_bundle_components(client: MoySkladClient, run: CatalogRun, changed_since: str | None,
                            progress: Progress) -> None:
    """What each new or changed bundle is made of (all of them when ``changed_since`` is None).

    Read with ``expand=components`` at limit 100, the only limit at which MoySklad expands; a bundle
    whose components did not all come inline is asked for its components list. A malformed bundle
    keeps the components it had.
    """
    params = {"filter": _filter(changed_since), "expand": "components"}
    for page in client.iter_pages("/entity/bundle", params, limit=EXPAND_LIMIT):
        bundle_ids, components = [], []
        for row in page["rows"]:
            try:
                bundle_id, parts = bundle_component_records(row)
                if parts is None:
                    parts = [component_record(bundle_id, part)
                             for part in client.iter_rows(f"/entity/bundle/{bundle_id}/components")]
            except MalformedItem as exc:
                _skip(run, row, "bundle", str(exc))
                continue
            bundle_ids.append(bundle_id)
            components.extend(parts)
        run.stats.add("bundle_components", run.replace_children(
            "bundle_components", "bundle_id", bundle_ids, components, ("source", "bundle_id", "component_id")))
        run.stats.add("bundles_read", len(bundle_ids))
        progress("bundle components", run.stats.counts["bundles_read"])


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
    """Unit cost (себестоимость) and the first image of every product and variant, from the stock report.

    Goods that never took part in an operation are in no stock report: their cost stays unknown.
    """
    run.clear("images")
    done = 0
    for page in client.iter_pages("/report/stock/all", {"filter": STOCK_REPORT_FILTER}):
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

"""Catalog sync: MoySklad → catalog store, full or incremental, as one transaction.

Requests of a full sync for N assortment rows (B of them bundles, F folders, S goods in the stock
report: operated and not archived, S ≤ N):

    4 reference requests (company settings, legal entity, warehouses, units)
    + ceil(F/1000) folder pages + ceil(N/1000) assortment pages
    + 3 current-stock reports (1 unit each) + ceil(S/1000) stock-report pages (5 units each)
    + ceil(B/100) bundle pages (``expand=components`` works only up to limit 100)
    ≤ 2 × ceil(N/1000) + ceil(F/1000) + ceil(B/100) + 7.

An incremental run asks the same lists with ``updated>=bookmark`` (one page each when little
changed, bundles included) and the three current-stock reports with ``changedSince`` (only the goods
whose stock changed); the unit cost and first image it reads only for the goods that are new or
changed, or whose stock changed, ``filter=product=…;variant=…`` on ``/report/stock/all``, about 48
goods a request (MoySklad takes 8 KB of request headers): 10 + ceil(G/48) requests for G such goods.
The whole stock report (and the stock reports whole) is read on full runs and every
``stock_report_hours``: a cost that changes with nothing else (a supply edited afterwards) waits
for it. A bundle whose components do not all come inline costs one more request (its components list).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

from core.clock import MOSCOW
from moysklad.client import MoySkladClient
from moysklad.errors import ONE_ACCOUNT_PER_STORE, AccountMismatch
from moysklad.transform import (
    ATTRIBUTE_COLUMNS,
    IMAGE_COLUMNS,
    OFFER_COLUMNS,
    PRICE_COLUMNS,
    PRODUCT_COLUMNS,
    MalformedItem,
    Skipped,
    StockLine,
    assortment_page,
    bundle_component_records,
    category_record,
    component_record,
    price_type_records,
    reference_record,
    stock_report_page,
    stock_rows,
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
# MoySklad's time up to which the sync read the cost of every good whose stock changed (a stock webhook
# moves STOCK_BOOKMARK on without reading costs): the next sync reads stock changes from the earlier one.
COST_BOOKMARK = "cost_bookmark"
# When the whole /report/stock/all was last read (ISO time): it is read again every stock_report_hours.
LAST_STOCK_REPORT = "last_stock_report"
# Goods whose stock was being recalculated are left out of a report: read a few minutes back again.
STOCK_OVERLAP = dt.timedelta(minutes=5)
# MoySklad: changedSince "не должно превышать 24 часа" back; keep a margin for the clocks.
CHANGED_SINCE_LIMIT = dt.timedelta(hours=23, minutes=50)
CURRENT_STOCK = "/report/stock/bystore/current"
STOCK_REPORT = "/report/stock/all"
# The goods the stock report lists (services and bundles have no stock of their own).
STOCKED_KINDS = ("product", "variant")
# MoySklad takes at most 8 KB of request headers, the URL included (md/_restrictions.md); ours besides
# it (host, auth, agent, accept) stay well under 1 KB. About 48 goods' links fit a URL at api.moysklad.ru.
MAX_URL_BYTES = 6 * 1024

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
    number: int = 0  # the sync's own number (sync №6), as the health page shows it


def sync_catalog(
    client: MoySkladClient,
    store: CatalogStore,
    *,
    full: bool = False,
    overlap_minutes: int = 10,
    full_sync_hours: int = 24,
    stock_report_hours: int = 24,
    progress: Progress | None = None,
) -> SyncResult:
    """Pull the catalog into the store; the bookmark moves only when the whole run commits."""
    progress = progress or (lambda *step: None)
    started = time.monotonic()
    before = (client.requests, client.throttled, client.retries, client.units)
    with store.run(SOURCE, "sync") as run, fewer_collections():
        previous = store.setting(SOURCE, "bookmark")
        mode = "full" if full or not previous or _due(store, "last_full_sync", full_sync_hours) else "incremental"
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
            changed = {} if changed_since else None  # goods new or changed in this run: id → kind
            consistent &= _save_assortment(client, run, changed_since, progress, changed)
            _save_bundle_components(client, run, changed_since if store.setting(SOURCE, COMPONENTS_READ) else None,
                                    progress)
            run.set_setting(COMPONENTS_READ, server_now.isoformat())
            whole = mode == "full" or _due(store, LAST_STOCK_REPORT, stock_report_hours)
            since = None if whole else read_from(store.setting(SOURCE, COST_BOOKMARK), store.setting(SOURCE, STOCK_BOOKMARK))
            stock = read_stock(client, run, since, progress)
            run.set_setting(COST_BOOKMARK, stock.bookmark)
            if stock.changed is None or not _save_changed_costs(client, run, changed, stock.changed, progress):
                _save_costs_and_images(client, run, progress)
                run.set_setting(LAST_STOCK_REPORT, server_now.isoformat())
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
        units=client.units - before[3], number=run.number,
    )
    log.info("moysklad sync #%d (%s) in %.1f s: %s; %d requests, %d throttled (429), %d retries",
             result.number, mode, result.seconds, result.counts, result.requests, result.throttled, result.retries)
    return result


# Container allocations between two collections of the youngest generation while a sync runs (Python's
# default: 700). A sync allocates millions of short-lived tuples in no reference cycle: collecting after
# every 700 cost about a tenth of its CPU.
SYNC_GC_THRESHOLD = 100_000
_gc_lock = threading.Lock()
_gc_users = [0, None]  # syncs running in this process, and the threshold from before the first


@contextlib.contextmanager
def fewer_collections():
    """Collect garbage less often while a sync runs; the last sync of the process to end puts the threshold back."""
    with _gc_lock:
        if not _gc_users[0]:
            _gc_users[1] = gc.get_threshold()
            gc.set_threshold(max(SYNC_GC_THRESHOLD, _gc_users[1][0]), *_gc_users[1][1:])
        _gc_users[0] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users[0] -= 1
            if not _gc_users[0]:
                gc.set_threshold(*_gc_users[1])


def _due(store: CatalogStore, key: str, hours: int) -> bool:
    """Whether what the setting ``key`` dates (a full run, the whole stock report) is more than ``hours``
    old, or never happened; never with ``hours`` 0. A periodic full run is what notices deletions, the
    whole stock report what catches a cost that changed with nothing else."""
    if hours <= 0:
        return False
    last = store.setting(SOURCE, key)
    if not last:
        return True
    try:
        last_time = dt.datetime.fromisoformat(last)
    except ValueError:
        return True
    return dt.datetime.now(dt.timezone.utc) - last_time > dt.timedelta(hours=hours)


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
            f"credentials reach {_account_text(reached)}. {ONE_ACCOUNT_PER_STORE}: give this one a data_dir "
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


def _save_assortment(client: MoySkladClient, run: CatalogRun, changed_since: str | None, progress: Progress,
                     changed: dict | None = None) -> bool:
    """Products, variants, services and bundles, page by page (a page is at most 1000 rows), each
    page decoded into store rows by the thread that fetched it. ``changed`` collects the goods the
    stock report lists (id → kind)."""
    sizes = set()
    pages = client.iter_pages("/entity/assortment", {"filter": _filter(changed_since)}, WITHOUT_STOCK,
                              decode=assortment_page)
    for page in pages:
        sizes.add(page.size)
        for skipped in page.skipped:
            _record_skip(run, skipped)
        run.stage("products", PRODUCT_COLUMNS, page.products)
        run.stage("offers", OFFER_COLUMNS, page.offers)
        run.stage("prices", PRICE_COLUMNS, page.prices)
        run.stage("attributes", ATTRIBUTE_COLUMNS, page.attributes)
        for kind, count in page.kinds.items():
            run.stats.add(kind + "s", count)
        if changed is not None:
            changed.update((offer[0], offer[2]) for offer in page.offers if offer[2] in STOCKED_KINDS)
        run.stats.add("assortment_rows", page.rows)
        progress("assortment", run.stats.counts["assortment_rows"], page.size if isinstance(page.size, int) else None)
    run.merge_staged("products", "products", ("source", "id"), seen=True)
    run.merge_staged("offers", "offers", ("source", "id"), seen=True, whole=changed_since is None)
    run.stats.add("prices", run.merge_staged("prices", "prices", ("source", "offer_id", "price_type_id"),
                                             children_of=("offer_id", "offers")))
    run.stats.add("attributes", run.merge_staged("attributes", "attributes", ("source", "owner_id", "attribute_id"),
                                                 children_of=("owner_id", "offers")))
    run.drop_staged()
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


def read_from(changed_since: str | None, bookmark: str | None, now: dt.datetime | None = None) -> str | None:
    """The moment to read stock changes from: the earlier of ``changed_since`` (a webhook's) and the
    bookmark; None (read the whole report) when there is no bookmark yet or the moment is too far
    back for MoySklad."""
    if not bookmark:
        return None
    earliest = min(filter(None, (changed_since, bookmark)))
    now = now or dt.datetime.now(MOSCOW)
    moment = dt.datetime.strptime(earliest, BOOKMARK_FORMAT).replace(tzinfo=MOSCOW)
    return earliest if now - moment < CHANGED_SINCE_LIMIT else None


@dataclass
class StockRead:
    bookmark: str | None  # where the store's stock is now known from (STOCK_BOOKMARK)
    changed: set[str] | None  # the goods whose stock changed; None after a whole read (any may have)


def read_stock(client: MoySkladClient, run: CatalogRun, since: str | None, progress: Progress | None = None) -> StockRead:
    """Stock, reserve and in transit per warehouse from the three current-stock reports (1 unit each):
    whole, or with ``changedSince`` only the goods whose stock changed since ``since``, with their
    current figures on every warehouse (zero lines included)."""
    if since is None:
        run.clear("stock")
    bookmark, changed = None, set()
    for stock_type, column in STOCK_COLUMNS.items():
        params = {"stockType": stock_type, **({"changedSince": since} if since else {})}
        for lines in client.iter_array_pieces(CURRENT_STOCK, params, StockLine):
            chunk = stock_rows(lines, stock_type)
            run.stage(column, ("offer_id", "warehouse_id", column), chunk)
            if since:
                changed.update(row[0] for row in chunk)
        count = run.merge_staged(column, "stock", ("source", "offer_id", "warehouse_id"))
        bookmark = bookmark or stock_bookmark(client.server_date)
        run.stats.add(f"stock_{column}_rows", count)
        if progress:
            progress(f"stock {stock_type}", count)
    run.drop_staged()
    run.set_setting(STOCK_BOOKMARK, bookmark)
    run.stats.counts["stock_read"] = "changes" if since else "whole"
    return StockRead(bookmark, changed if since else None)


def _save_costs_and_images(client: MoySkladClient, run: CatalogRun, progress: Progress) -> None:
    """Unit cost (себестоимость) and the first image of every product and variant, from the whole stock report.

    Goods that never took part in an operation are in no stock report: their cost stays unknown.
    """
    run.clear("images")
    done = 0
    for page in client.iter_pages(STOCK_REPORT, {"filter": STOCK_REPORT_FILTER}, decode=stock_report_page):
        done += _stage_costs(run, page)
        progress("unit costs", done)
    _merge_costs(run)
    run.stats.counts["cost_read"] = "whole"


def _save_changed_costs(client: MoySkladClient, run: CatalogRun, changed: dict[str, str],
                        stock_changed: set[str], progress: Progress) -> bool:
    """Unit cost and first image of the goods new or changed in this run, or whose stock changed (a
    supply changes FIFO cost), read by their links; False when the whole report costs less."""
    goods = dict(changed)
    goods.update(run.offer_kinds(run.with_stock(stock_changed - goods.keys()), STOCKED_KINDS))
    batches = cost_filters(client.base_url, goods)
    if len(batches) >= math.ceil(run.count_offers(STOCKED_KINDS) / client.settings.page_size):
        return False
    run.delete_children("images", "owner_id", list(goods))
    done = 0
    for batch in batches:
        for page in client.iter_pages(STOCK_REPORT, {"filter": batch}, decode=stock_report_page):
            done += _stage_costs(run, page)
            progress("unit costs", done)
    _merge_costs(run)
    run.stats.add("costs_read", done)
    run.stats.counts["cost_read"] = "changes"
    return True


def cost_filters(base_url: str, goods: dict[str, str]) -> list[str]:
    """``filter`` values of /report/stock/all that pick these goods (id → product or variant): several
    values of product and variant add up (OR), as many in each as keep its URL under MAX_URL_BYTES."""
    fixed = len(f"{base_url}{STOCK_REPORT}?") + len(urlencode({"limit": 1000, "offset": 1_000_000}))
    batches, current = [], STOCK_REPORT_FILTER
    for offer_id, kind in sorted(goods.items()):
        condition = f";{kind}={base_url}/entity/{kind}/{offer_id}"
        if current != STOCK_REPORT_FILTER and fixed + len(urlencode({"filter": current + condition})) + 1 > MAX_URL_BYTES:
            batches.append(current)
            current = STOCK_REPORT_FILTER
        current += condition
    if current != STOCK_REPORT_FILTER:
        batches.append(current)
    return batches


def _stage_costs(run: CatalogRun, page) -> int:
    for skipped in page.skipped:
        _record_skip(run, skipped)
    run.stage("costs", ("cost", "id"), page.costs)
    run.stage("images", IMAGE_COLUMNS, page.images)
    return page.rows


def _merge_costs(run: CatalogRun) -> None:
    run.update_from_staged("costs", "cost")
    run.stats.add("images", run.merge_staged("images", "images", ("source", "owner_id", "position")))
    run.drop_staged()


def _valid(run: CatalogRun, item_type: str, rows: Iterable[dict], transform) -> Iterator[dict]:
    """Transform rows, recording the malformed ones as skipped instead of failing the run."""
    for row in rows:
        try:
            yield transform(row)
        except MalformedItem as exc:
            _skip(run, row, item_type, str(exc))


def _record_skip(run: CatalogRun, skipped: Skipped) -> None:
    log.info("skipped %s %s (%s): %s", skipped.item_type, skipped.item_id, skipped.name, skipped.reason)
    run.skip(skipped.item_type, skipped.item_id, skipped.name, skipped.reason)


def _skip(run: CatalogRun, row, item_type: str, reason: str) -> None:
    row = row if isinstance(row, dict) else {}
    name = row.get("name") if isinstance(row.get("name"), str) else None
    item_id = row.get("id") if isinstance(row.get("id"), str) else None
    log.info("skipped %s %s (%s): %s", item_type, item_id, name, reason)
    run.skip(item_type, item_id, name, reason)

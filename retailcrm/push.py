"""A feed's stock and prices pushed to retailCRM through API v5: what the feed publishes, only what changed.

The values come from the functions the ICML renderer uses (``feeds.icml``: ``published_name``, ``published_xml_id``,
``activity``, ``offer_quantity``, ``purchase_price``) over the same store rows, so a
push never sends a value the feed would not publish: per mapped retailCRM warehouse, ``available``
= the feed's quantity rule over that warehouse's MoySklad (or CommerceML) warehouses, 0 for
archived or removed goods, nothing for what carries no quantity (services; bundles while the feed
gives them none), with ``purchasePrice``; per mapped price type, its price (a price that disappeared
or is 0 is removed). Offers are named by ``externalId`` = the ICML ``offer@id``, in the feed's shop (``site``).

One push is one run (source ``retailcrm:<feed>``, kind ``push``): the values are staged and compared
with the last pushed ones in the store, the difference goes out in batches of 250 (paced by the
client at 10 requests a second per key), and each batch retailCRM accepted is recorded as pushed at
once, so a push that fails half-way loses nothing and the next one sends only the rest. Offers
retailCRM does not know yet (``notFoundOffers``) are recorded as waiting and sent again by later pushes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from core.money import money
from core.settings import FeedSettings, Settings
from feeds.icml import (
    MAX_PRICE_KOPECKS,
    OfferSkipped,
    RenderError,
    RenderOptions,
    activity,
    catalog_loaded,
    decimal,
    not_loaded,
    offer_quantity,
    published_name,
    published_xml_id,
    purchase_price,
    removed_before,
    resolve_options,
)
from retailcrm.client import MAX_BATCH, RetailCrmClient, UploadResult
from retailcrm.errors import RetailCrmError
from store import CatalogReader, CatalogStore, open_catalog

log = logging.getLogger(__name__)

STORE, PRICE = "store", "price"  # the two kinds of target: a retailCRM warehouse, a retailCRM price type

Progress = Callable[[str, int, int], None]  # (kind, offers sent so far, offers to send)


class MappingError(Exception):
    """A warehouse or price type named in the feed's retailcrm section that the catalog does not have."""

    title = "Склад или тип цены из настроек фида не найден в каталоге"
    action = ("Исправьте названия в настройках фида (retailcrm.stores, retailcrm.prices, price_type, stores) так, "
              "как они записаны в МоёмСкладе (или в файлах обмена 1С), и перезапустите сервис; существующие "
              "названия перечислены в тексте ошибки.")


@dataclass
class PushResult:
    """What one push sent and what retailCRM did with it (as recorded in the run)."""

    run_id: int
    feed: str
    mode: str  # full, changes (after a build or from the CLI), stock (a stock webhook's fast path)
    offers: int = 0  # offers whose values retailCRM accepted
    records: int = 0  # warehouse and price values retailCRM accepted
    batches: int = 0
    not_found: int = 0  # offers retailCRM did not know in this push
    waiting: int = 0  # offers waiting for retailCRM to know them, after this push
    requests: int = 0
    throttled: int = 0
    retries: int = 0
    seconds: float = 0.0
    latency_seconds: float | None = None  # stock webhook received → its last value accepted by retailCRM
    number: int = 0  # the feed's own push number (push №4), as the health page shows it
    counts: dict = field(default_factory=dict)


class CatalogNotLoaded(MappingError):
    """The feed's catalog was never loaded (no sync, no upload from 1C): there is nothing to push yet."""

    title = "Каталог ещё не загружен: в retailCRM нечего отправлять"
    action = ("Отправка начнётся после первой синхронизации с МоимСкладом (или первой выгрузки каталога из 1С): "
              "проверьте на этой странице, прошла ли она.")


def push_source(feed: FeedSettings) -> str:
    """The runs-table source of a feed's pushes."""
    return f"retailcrm:{feed.name}"


def push_feed(settings: Settings, feed: FeedSettings, *, full: bool = False, offer_ids: list[str] | None = None,
              received_at: float | None = None, client: RetailCrmClient | None = None,
              progress: Progress | None = None) -> PushResult:
    """Push what changed since the last successful push (everything with ``full``; only ``offer_ids``
    and the bundles after a stock change). Raises RetailCrmError, MappingError or StoreError; what
    was accepted until then stays recorded."""
    crm = feed.retailcrm
    if crm is None:
        raise ValueError(f"feed {feed.name} has no retailcrm section")
    mode = "full" if full else "stock" if offer_ids is not None else "changes"
    started = time.monotonic()
    own_client = client is None
    client = client or RetailCrmClient(crm.url, crm.api_key)
    before = (client.requests, client.throttled, client.retries)
    try:
        with open_catalog(settings.store_path) as store, \
                store.run(push_source(feed), "push", mode, one_transaction=False) as run:
            run.mode = mode
            result = PushResult(run.id, feed.name, mode, counts=run.stats.counts, number=run.number)
            try:
                with CatalogReader(settings.store_path) as reader:
                    if not catalog_loaded(reader, feed.source):
                        raise CatalogNotLoaded(f"feed {feed.name}: {not_loaded(feed.source)}; nothing was pushed")
                    options = resolve_options(reader, feed, settings.images_url)
                    passes = plan_passes(reader, feed, options)
                    if offer_ids is not None:  # a bundle's figures may follow any other good's
                        offer_ids = store.owe(feed.name, set(offer_ids) | set(reader.bundle_ids(feed.source)))
                    result.counts["staged"] = store.stage_push(feed_values(reader, options, passes, offer_ids))
                result.counts["planned"] = store.plan_changes(feed.name, everything=full)
                result.counts["plan_seconds"] = round(time.monotonic() - started, 3)
                Sender(store, client, feed, result, received_at, progress).send_all()
                store.settle(feed.name, offer_ids)
                if offer_ids is None:
                    store.forget_unstaged_waiting(feed.name)
                result.waiting = store.waiting_offers(feed.name)
            except (RetailCrmError, MappingError) as exc:
                result.counts["advice"] = {"title": exc.title, "action": exc.action}
                raise
            except RenderError as exc:
                error = MappingError(str(exc))
                result.counts["advice"] = {"title": error.title, "action": error.action}
                raise error from exc
            finally:
                run.stats.requests = result.requests = client.requests - before[0]
                run.stats.throttled = result.throttled = client.throttled - before[1]
                run.stats.retries = result.retries = client.retries - before[2]
                result.seconds = round(time.monotonic() - started, 3)
                result.counts.update(offers=result.offers, records=result.records, batches=result.batches,
                                     not_found=result.not_found, waiting=result.waiting, seconds=result.seconds)
                if result.latency_seconds is not None:
                    result.counts["latency_seconds"] = result.latency_seconds
    finally:
        if own_client:
            client.close()
    log.info("retailcrm push #%d of feed %s (%s) in %.1f s: %d offers, %d values in %d batches; %d not found, "
             "%d waiting; %d requests, %d throttled, %d retries%s", result.number, feed.name, mode, result.seconds,
             result.offers, result.records, result.batches, result.not_found, result.waiting, result.requests,
             result.throttled, result.retries,
             f"; {result.latency_seconds:.1f} s from the stock webhook" if result.latency_seconds is not None else "")
    return result


# --- what the feed says ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Pass:
    """One read of the feed's offers: stock summed over one set of warehouses, prices of one price type."""

    warehouse_ids: list[str] | None  # None: every warehouse
    store_codes: tuple[str, ...]  # retailCRM warehouses filled from this read's stock
    price_type_id: str | None
    price_codes: tuple[str, ...]  # retailCRM price types filled from this read's price


def plan_passes(reader: CatalogReader, feed: FeedSettings, options: RenderOptions) -> list[Pass]:
    """The reads a push needs: one per distinct warehouse set and price type, paired up. The first
    one reads the feed's own price type, which decides (as in the ICML file) whether an offer is published."""
    crm, source = feed.retailcrm, feed.source
    warehouses = {row["name"]: row["id"] for row in reader.warehouses(source)}
    price_types = {row["name"]: row["id"] for row in reader.price_types(source)}
    groups: dict[tuple | None, list[str]] = {}
    listed = {name for target in crm.stores for name in target.warehouses}
    # "all" is what the feed counts (its stores, or every warehouse and '', the stock MoySklad or 1C gave none), less
    # what other targets list: retailCRM adds its warehouses up
    counted = options.warehouse_ids if options.warehouse_ids is not None else ["", *warehouses.values()]
    listed_ids = {warehouses.get(name) for name in listed}
    rest = tuple(sorted(warehouse_id for warehouse_id in counted if warehouse_id not in listed_ids))
    for target in crm.stores:
        missing = [name for name in target.warehouses if name not in warehouses]
        if missing:
            raise MappingError(f"feed {feed.name}: retailcrm.stores.{target.code}: warehouse «{missing[0]}» does not "
                               f"exist in the {source} catalog (known: {', '.join(warehouses) or 'none'})")
        key = tuple(sorted(warehouses[name] for name in target.warehouses)) if target.warehouses else \
            (rest if listed or options.warehouse_ids is not None else None)
        groups.setdefault(key, []).append(target.code)
    prices: dict[str | None, list[str]] = {options.price_type_id: []}
    for target in crm.prices:
        if target.price_type not in price_types:
            raise MappingError(f"feed {feed.name}: retailcrm.prices.{target.code}: price type «{target.price_type}» "
                               f"does not exist in the {source} catalog (known: {', '.join(price_types) or 'none'})")
        prices.setdefault(price_types[target.price_type], []).append(target.code)
    group_list, price_list = list(groups.items()), list(prices.items())
    passes = []
    for index in range(max(len(group_list), len(price_list))):
        warehouse_key, store_codes = group_list[index] if index < len(group_list) else (None, [])
        price_type_id, price_codes = price_list[index] if index < len(price_list) else (options.price_type_id, [])
        passes.append(Pass(list(warehouse_key) if warehouse_key is not None else None, tuple(store_codes),
                           price_type_id, tuple(price_codes)))
    return passes


def feed_values(reader: CatalogReader, options: RenderOptions, passes: list[Pass],
                offer_ids: list[str] | None) -> Iterator[tuple[str, str, str | None]]:
    """(offer id, target, value) for every offer the feed publishes (of ``offer_ids``, when given)."""
    feed = options.feed
    purchases: dict[str, int | None] = {}  # published offers → purchase price, from the first read
    out_of_range: list[str] = []  # offers with a price of another type that retailCRM cannot hold
    for index, read in enumerate(passes):
        rows = reader.offers(options.source, price_type_id=read.price_type_id, warehouse_ids=read.warehouse_ids,
                             quantity_rule=feed.quantity, include_bundles=feed.include_bundles,
                             removed_before=removed_before(options),
                             with_attributes=False, with_pictures=False,
                             with_product_buy_price=feed.purchase_price == "buyPrice", offer_ids=offer_ids)
        for row in rows:
            offer_id = row.id
            if index == 0:
                if activity(row, options) == "drop":
                    continue
                try:
                    published_name(row)
                    published_xml_id(row, options)
                except OfferSkipped:
                    continue
                purchases[offer_id] = purchase_price(row, feed.purchase_price)
            elif offer_id not in purchases:
                continue
            if read.store_codes:
                available = offer_quantity(row)
                if available is not None:
                    value = stock_value(available, purchases[offer_id])
                    for code in read.store_codes:
                        yield offer_id, f"{STORE}:{code}", value
            if read.price_codes:
                # MoySklad lists every price type of a good, one nobody filled in as 0: retailCRM would offer it
                # as a price of 0 to sell at, so it is removed from the offer instead
                price = row.price
                if price is not None and not 0 <= price <= MAX_PRICE_KOPECKS:  # as the ICML file's price (index 0)
                    out_of_range.append(offer_id)
                    continue
                value = money(price) if price else None
                for code in read.price_codes:
                    yield offer_id, f"{PRICE}:{code}", value
    if out_of_range:
        log.warning("feed %s: %d prices outside retailCRM's range (0 … 99,999,999) not pushed, e.g. offer %s; "
                    "fix them in %s", feed.name, len(out_of_range), out_of_range[0], options.source)


def stock_value(available: float, purchase: int | None) -> str:
    """One warehouse's values as stored and compared: the upload's JSON, numbers written as in the ICML file."""
    if purchase is None:
        return f'{{"available":{decimal(available)}}}'
    return f'{{"available":{decimal(available)},"purchasePrice":{money(purchase)}}}'


# --- sending --------------------------------------------------------------------------------------

class Sender:
    """Sends the planned rows kind by kind in batches of 250 offers and records what retailCRM accepted."""

    def __init__(self, store: CatalogStore, client: RetailCrmClient, feed: FeedSettings, result: PushResult,
                 received_at: float | None, progress: Progress | None):
        self.store, self.client, self.feed, self.result = store, client, feed, result
        self.received_at, self.progress = received_at, progress
        self.site = feed.retailcrm.site
        self.accepted: set[str] = set()
        self.missing: set[str] = set()

    def send_all(self) -> None:
        for kind in (STORE, PRICE):
            self.send(kind)

    def send(self, kind: str) -> None:
        sent, after, total = 0, "", self.store.planned_offers(kind)
        while True:
            rows = self.store.planned_batch(kind, after, MAX_BATCH)
            if not rows:
                return
            by_offer: dict[str, list[tuple[str, str | None]]] = {}
            for offer_id, target, value in rows:
                by_offer.setdefault(offer_id, []).append((target.partition(":")[2], value))
            items = [self.item(kind, offer_id, entries) for offer_id, entries in by_offer.items()]
            if kind == STORE:
                answer = self.client.upload_inventories(items, site=self.site)
            else:
                answer = self.client.upload_prices(items)
            self.record(answer, rows)
            sent += len(by_offer)
            after = rows[-1][0]
            if self.progress:
                self.progress(kind, sent, total)

    def item(self, kind: str, offer_id: str, entries: list[tuple[str, str | None]]) -> dict:
        if kind == STORE:
            return {"externalId": offer_id, "stores": [{"code": code, **json.loads(value)} for code, value in entries]}
        return {"externalId": offer_id, "site": self.site,
                "prices": [{"code": code, "remove": True} if value is None else {"code": code, "price": json.loads(value)}
                           for code, value in entries]}

    def record(self, answer: UploadResult, rows: list[tuple[str, str, str | None]]) -> None:
        """Accepted offers' values become the last pushed; the offers retailCRM does not know wait."""
        missing = {str(offer.get("externalId")) for offer in answer.not_found if isinstance(offer, dict)}
        accepted = [row for row in rows if row[0] not in missing]
        if accepted:
            self.store.record_pushed(self.feed.name, accepted)
        if missing:
            self.store.record_waiting(self.feed.name, sorted(missing))
        self.accepted.update(row[0] for row in accepted)
        self.missing.update(missing)
        result = self.result
        result.batches += 1
        result.records += len(accepted)
        result.offers, result.not_found = len(self.accepted), len(self.missing)
        if accepted and self.received_at is not None:
            result.latency_seconds = round(time.time() - self.received_at, 3)

"""``retailcrm check``: will a feed's push work? The key, the shop, every mapped warehouse and price type.

Asks retailCRM what the key may do and which shops, warehouses and price types the account has,
and the catalog store which warehouses and price types the feed's source has (after a sync or an
exchange). Every problem names what is missing and what exists.
"""

from __future__ import annotations

from core.http_failures import unreachable_problem
from core.settings import FeedSettings, Settings, account_key
from feeds.icml import catalog_loaded, default_price_type, not_loaded
from moysklad.check import CheckReport
from retailcrm.client import API_PREFIX, RetailCrmClient
from retailcrm.errors import KeyRejected, RetailCrmError, TransportFailure
from store import CatalogReader, StoreError

# The methods a push calls: stock when it maps warehouses, prices when it maps price types. retailCRM lists a key's
# methods without the version ("/api/integration-modules/{code}" in api-client-php's ApiTest testCredentials), and so
# does the emulator: compared by their ends, whichever prefix comes.
STOCK_METHOD, PRICES_METHOD = "/store/inventories/upload", "/store/prices/upload"


def check_feed(settings: Settings, feed: FeedSettings, client: RetailCrmClient) -> CheckReport:
    """Check one feed's retailcrm section against retailCRM and the catalog store."""
    crm = feed.retailcrm
    report = CheckReport()
    report.facts.append(("retailCRM", f"{crm.url}, shop {crm.site}"))
    try:
        credentials = client.credentials()
    except KeyRejected as exc:
        report.problems.append(str(exc))
        return report
    except RetailCrmError as exc:
        report.problems.append(unreachable(settings, feed, exc) or f"credentials: {exc}")
        return report
    report.facts.append(("API key", "accepted"))
    methods = credentials.get("credentials")
    if isinstance(methods, list) and methods:
        needed = [method for method, mapped in ((STOCK_METHOD, crm.stores), (PRICES_METHOD, crm.prices)) if mapped]
        for method in needed:
            if not any(isinstance(allowed, str) and allowed.endswith(method) for allowed in methods):
                report.problems.append(f"the API key may not call {API_PREFIX}{method}: allow it in the key's "
                                       f"settings in retailCRM")
    if credentials.get("siteAccess") == "access_selective" and crm.site not in (credentials.get("sitesAvailable") or []):
        report.problems.append(f"the API key has no access to the shop {crm.site!r} (it may use: "
                               f"{', '.join(credentials.get('sitesAvailable') or []) or 'none'})")
    _codes(report, "shop", [crm.site], lambda: client.sites(), "retailcrm.site")
    _codes(report, "warehouses", [t.code for t in crm.stores], lambda: client.stores(), "retailcrm.stores")
    price_types = _codes(report, "price types", [t.code for t in crm.prices], lambda: client.price_types(),
                         "retailcrm.prices")
    _default_price_type(report, feed, price_types, _catalog_names(report, settings, feed))
    return report


def unreachable(settings: Settings, feed: FeedSettings, exc: Exception) -> str | None:
    """What to fix when retailCRM did not answer at all (nothing listens, no such host, no answer in time): the
    feed's retailcrm.url, named for its account; None for any other failure."""
    problem = unreachable_problem(feed.retailcrm.url, str(exc)) if isinstance(exc, TransportFailure) else None
    if problem is None:
        return None
    return (f"cannot reach retailCRM: {problem}: check {account_key(settings.account, f'feeds.{feed.name}.retailcrm.url')} "
            "(the retailCRM account's address, e.g. https://shop.retailcrm.ru) and that this server may reach that host")


def _codes(report: CheckReport, what: str, wanted: list[str], fetch, key: str) -> dict:
    """retailCRM must have every code the config names; returns what it has, by code."""
    if not wanted:
        return {}
    try:
        known = fetch()
    except RetailCrmError as exc:
        report.problems.append(f"{what}: {exc}")
        return {}
    report.facts.append((f"retailCRM {what}", ", ".join(known) or "(none)"))
    for code in wanted:
        if code not in known:
            report.problems.append(f"{key}: retailCRM has no {what[:-1] if what.endswith('s') else what} with the code "
                                   f"{code!r} (it has: {', '.join(known) or 'none'})")
    return known


def _catalog_names(report: CheckReport, settings: Settings, feed: FeedSettings) -> str:
    """The catalog must have every warehouse and price type name the config maps (once it has any); returns
    the price type a feed without price_type publishes ('' when unknown)."""
    crm, source = feed.retailcrm, feed.source
    warehouses, price_types, default, loaded = [], [], "", False
    if settings.store_path.exists():
        try:
            with CatalogReader(settings.store_path) as reader:
                loaded = catalog_loaded(reader, source)
                warehouses = [row["name"] for row in reader.warehouses(source)]
                rows = reader.price_types(source)
                price_types = [row["name"] for row in rows]
                default = next((row["name"] for row in rows if row["id"] == default_price_type(rows)), "")
        except StoreError as exc:
            report.problems.append(f"the catalog store cannot be read: {exc}")
            return default
    if not loaded:
        report.facts.append((f"{source} catalog", f"{not_loaded(source)}: names checked at the first push"))
        return default
    report.facts.append((f"{source} warehouses", ", ".join(warehouses) or "(none)"))
    report.facts.append((f"{source} price types", ", ".join(price_types) or "(none)"))
    for target in crm.stores:
        for name in target.warehouses:
            if name not in warehouses:
                report.problems.append(f"retailcrm.stores.{target.code}: the {source} catalog has no warehouse «{name}» "
                                       f"(it has: {', '.join(warehouses) or 'none'})")
    for target in crm.prices:
        if target.price_type not in price_types:
            report.problems.append(f"retailcrm.prices.{target.code}: the {source} catalog has no price type "
                                   f"«{target.price_type}» (it has: {', '.join(price_types) or 'none'})")
    return default


def _default_price_type(report: CheckReport, feed: FeedSettings, crm_price_types: dict, catalog_default: str) -> None:
    """retailCRM's default price type is the one the ICML file's <price> fills at every catalog load: a push of
    another price into it would flip back every 3 hours."""
    default = next((code for code, entry in crm_price_types.items() if isinstance(entry, dict) and entry.get("default")),
                   None)
    feed_price = feed.price_type or catalog_default
    for target in feed.retailcrm.prices:
        if target.code == default and feed_price and target.price_type != feed_price:
            report.problems.append(
                f"retailcrm.prices.{target.code}: {target.code!r} is retailCRM's default price type, which the ICML "
                f"file's <price> fills from «{feed_price}» (the feed's price_type) at every catalog load: the "
                f"«{target.price_type}» pushed into it would be overwritten every 3 hours. Map {target.code!r} to "
                f"«{feed_price}», or push «{target.price_type}» into another retailCRM price type")

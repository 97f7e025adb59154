"""Connection check, like MoySklad's own «Проверить соединение»: credentials, permissions, what is there,
and whether every name the feeds use (price type, warehouses, attributes) exists in the account."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from core.http_failures import unreachable_problem
from core.settings import DEFAULT_MOYSKLAD_URL, FeedSettings, account_key, token_variable
from moysklad.client import MoySkladClient
from moysklad.errors import CredentialsRejected, MoySkladError, PermissionMissing, ServerFailure
from moysklad.sync import ALL_ITEMS, STOCK_REPORT_FILTER, WITHOUT_STOCK

API_PATH = "/api/remap/1.2"  # every JSON API 1.2 address ends so
ATTRIBUTES = "/entity/product/metadata/attributes"  # custom fields of goods, services and bundles alike
NAMES_SHOWN = 15  # known names listed in a problem, at most


@dataclass
class CheckReport:
    """What the check found: facts to show and problems to fix (empty when all is well)."""

    facts: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    account: dict | None = None  # the account reached: id and name of its first legal entity

    @property
    def ok(self) -> bool:
        return not self.problems


def check_connection(client: MoySkladClient, feeds: Iterable[FeedSettings] = (), account: str = "") -> CheckReport:
    """Ask for a little of everything a sync needs and for the names the feeds use; stop early when
    MoySklad does not answer at all or refuses the credentials. ``account`` ('' = the main one) names
    the keys to fix."""
    report = CheckReport()
    report.facts.append(("API", f"{client.base_url} ({'token' if client.auth_kind == 'bearer' else 'login and password'})"))
    try:
        company = client.get("/context/companysettings")
    except CredentialsRejected as exc:
        report.problems.append(str(exc) + (f" For account {account}: {account_key(account, 'moysklad.token')} "
                                           f"(or {token_variable(account)})." if account else ""))
        return report
    except PermissionMissing as exc:
        report.problems.append(f"company settings: {exc}")
        company = {}
    except MoySkladError as exc:
        report.problems.append(unreachable(client.base_url, exc, account))
        return report
    report.facts.append(("credentials", "OK"))

    def company_names() -> str:
        rows = [row for row in client.get("/entity/organization", {"limit": 10})["rows"] if isinstance(row, dict)]
        if rows and isinstance(rows[0].get("accountId"), str):
            report.account = {"id": rows[0]["accountId"], "name": rows[0].get("name") or "?"}
        return ", ".join(row.get("name", "?") for row in rows) or "(no legal entities)"

    _fact(report, "company", company_names)
    currency = company.get("currency") or {}
    if currency:
        report.facts.append(("currency", f"{currency.get('isoCode') or '?'} ({currency.get('name') or '?'})"))
    price_types = [p.get("name", "?") for p in company.get("priceTypes") or []]
    if company:
        report.facts.append(("price types", ", ".join(price_types) or "(none)"))
        if not price_types:
            report.problems.append("MoySklad has no price types: the feed would have no prices")
    _fact(report, "warehouses", lambda: ", ".join(
        row.get("name", "?") for row in client.get("/entity/store", {"limit": 100})["rows"]) or "(none)")

    def counts() -> str:
        total = _size(client, "/entity/assortment", {"filter": ALL_ITEMS}, WITHOUT_STOCK)
        archived = _size(client, "/entity/assortment", {"filter": "archived=true"}, WITHOUT_STOCK)
        folders = _size(client, "/entity/productfolder", {"filter": ALL_ITEMS})
        return f"{total} assortment items ({archived} archived), {folders} groups"

    _fact(report, "catalog", counts)

    try:
        page = client.get("/report/stock/all", {"limit": 1, "filter": STOCK_REPORT_FILTER})
        report.facts.append(("stock report", "OK"))
        rows = page.get("rows") or []
        if rows and "price" not in rows[0]:
            report.problems.append(
                "unit cost: the stock report hides the cost (себестоимость) from this user; "
                "grant «Видеть себестоимость, цену закупки и прибыль товаров» or use purchasePrice: buyPrice")
        else:
            report.facts.append(("unit cost", "OK" if rows else "OK (no stock yet)"))
    except CredentialsRejected as exc:
        report.problems.append(str(exc))
    except MoySkladError as exc:
        report.problems.append(f"stock report: {exc}")

    moysklad_feeds = [feed for feed in feeds if feed.source == "moysklad"]
    try:
        missing = feed_name_problems(client, moysklad_feeds, company or None)
    except MoySkladError as exc:
        report.problems.append(f"the feeds' names could not be checked: {exc}")
        return report
    report.problems += missing
    for feed in moysklad_feeds:
        if not any(problem.startswith(f"feed {feed.name}: ") for problem in missing):
            report.facts.append((f"feed {feed.name}", "every name it uses exists"
                                 if _named_things(feed) else "uses no names (default price type, all warehouses)"))
    return report


def unreachable(base_url: str, exc: MoySkladError, account: str = "") -> str:
    """What to fix when the first request got no MoySklad answer: the host, the port or the path (the key of
    ``account``, '' = the main one)."""
    parts = urlsplit(base_url)
    text = str(exc)
    if isinstance(exc, ServerFailure):
        return f"MoySklad answered with a server error ({text}): it is usually down for a while; try again later"
    problem = unreachable_problem(base_url, text) or f"{base_url} did not answer as MoySklad does ({text})"
    if not parts.path.rstrip("/").endswith(API_PATH):
        advice = (f"the address must end in {API_PATH} (MoySklad's is {DEFAULT_MOYSKLAD_URL}); "
                  f"{base_url} has the path {parts.path or '/'}")
    else:
        variable = "" if account else "or MOYSKLAD_BASE_URL; "  # accounts[] take their address from the file only
        advice = (f"check {account_key(account, 'moysklad.base_url')} ({variable}MoySklad's is {DEFAULT_MOYSKLAD_URL}) "
                  "and that this server may reach that host")
    return f"cannot reach MoySklad: {problem}: {advice}"


def feed_name_problems(client: MoySkladClient, feeds: Iterable[FeedSettings], company: dict | None = None) -> list[str]:
    """Every name the feeds use that the account lacks, with the names it has: one small request per
    kind of name used (company settings for price types, warehouses, product attributes), none when unused."""
    feeds = [feed for feed in feeds if feed.source == "moysklad"]
    problems = []
    if any(feed.price_type for feed in feeds):
        company = company if company is not None else client.get("/context/companysettings")
        known = [p.get("name") for p in company.get("priceTypes") or [] if isinstance(p, dict)]
        problems += [f"feed {feed.name}: price_type «{feed.price_type}» is not a price type in MoySklad "
                     f"(price types there: {_names(known)})"
                     for feed in feeds if feed.price_type and feed.price_type not in known]
    if any(feed.stores for feed in feeds):
        known = [row.get("name") for row in client.iter_rows("/entity/store", {"filter": ALL_ITEMS})]
        problems += [f"feed {feed.name}: stores: «{name}» is not a warehouse in MoySklad (warehouses there: {_names(known)})"
                     for feed in feeds for name in feed.stores if name not in known]
    if any(_attributes_named(feed) for feed in feeds):
        known = [row.get("name") for row in client.get(ATTRIBUTES).get("rows") or [] if isinstance(row, dict)]
        problems += [f"feed {feed.name}: {key} «{name}» is not an attribute of goods in MoySklad (attributes there: "
                     f"{_names(known)})" for feed in feeds for key, name in _attributes_named(feed) if name not in known]
    return problems


def _attributes_named(feed: FeedSettings) -> list[tuple[str, str]]:
    """(config key, attribute name) of every attribute the feed publishes."""
    named = [("vendor_attribute", feed.vendor_attribute)] if feed.vendor_attribute else []
    named += [(f"params[{index}].attribute", param.attribute) for index, param in enumerate(feed.params)]
    named += [(f"dimension_attributes[{index}]", name) for index, name in enumerate(feed.dimension_attributes)]
    return named


def _named_things(feed: FeedSettings) -> bool:
    return bool(feed.price_type or feed.stores or _attributes_named(feed))


def _names(names: list) -> str:
    """Known names for a message: quoted, the first few, and how many more."""
    shown = [f"«{name}»" for name in names[:NAMES_SHOWN] if isinstance(name, str)]
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return ", ".join(shown) + more if shown else "none"


def _fact(report: CheckReport, label: str, read) -> None:
    try:
        report.facts.append((label, read()))
    except MoySkladError as exc:
        report.problems.append(f"{label}: {exc}")


def _size(client: MoySkladClient, path: str, params: dict, headers: dict | None = None) -> int:
    page = client.get_page(path, dict(params, limit=1), headers)
    return int(page["meta"].get("size") or 0)

"""Connection check, like MoySklad's own «Проверить соединение»: credentials, permissions, what is there."""

from __future__ import annotations

from dataclasses import dataclass, field

from moysklad.client import MoySkladClient
from moysklad.errors import CredentialsRejected, MoySkladError
from moysklad.sync import ALL_ITEMS, STOCK_REPORT_FILTER, WITHOUT_STOCK


@dataclass
class CheckReport:
    """What the check found: facts to show and problems to fix (empty when all is well)."""

    facts: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_connection(client: MoySkladClient) -> CheckReport:
    """Ask for a little of everything a sync needs; stop early only when the credentials fail."""
    report = CheckReport()
    report.facts.append(("API", f"{client.base_url} ({'token' if client.auth_kind == 'bearer' else 'login and password'})"))
    try:
        company = client.get("/context/companysettings")
    except CredentialsRejected as exc:
        report.problems.append(str(exc))
        return report
    except MoySkladError as exc:
        report.problems.append(f"company settings: {exc}")
        company = {}
    report.facts.append(("credentials", "OK"))

    _fact(report, "company", lambda: ", ".join(
        row.get("name", "?") for row in client.get("/entity/organization", {"limit": 10})["rows"]) or "(no legal entities)")
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
    return report


def _fact(report: CheckReport, label: str, read) -> None:
    try:
        report.facts.append((label, read()))
    except MoySkladError as exc:
        report.problems.append(f"{label}: {exc}")


def _size(client: MoySkladClient, path: str, params: dict, headers: dict | None = None) -> int:
    page = client.get_page(path, dict(params, limit=1), headers)
    return int(page["meta"].get("size") or 0)

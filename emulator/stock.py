"""Stock reports as MoySklad builds them: which goods each report lists, and with which figures.

The OpenAPI description has no /report paths; every rule here follows md/reports/_report_stock.md of
moysklad/api-remap-1.2-doc (quoted as "doc: ..."), or DOMAIN.md where it says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .catalog import KIND_PRODUCT, Catalog, Item, moscow_now
from .protocol import ApiError, Query, bad_filter_value, bad_parameter_value, filter_error, parse_moment, unknown_filter_key
from .render import number

STOCK_TYPES = ("stock", "freeStock", "quantity", "reserve", "inTransit")
STOCK_MODES = ("all", "positiveOnly", "negativeOnly", "empty", "nonEmpty", "underMinimum")
GROUP_BY = ("product", "variant", "consignment")
CHANGED_SINCE_MAX = timedelta(hours=24)  # doc: "не должно превышать 24 часа"

# doc: "Атрибуты доступные для фильтрации (для расширенного отчета)", with the operators of each key
ALL_FILTERS = {
    "archived": ("=",), "consignment": ("=", "!="), "inTransitOnly": ("=",), "moment": ("=",),
    "product": ("=", "!="), "productFolder": ("=",), "withSubFolders": ("=",), "quantityMode": ("=",),
    "reserveOnly": ("=",), "search": ("=", "!~"), "soldByWeight": ("=",), "stockDaysFrom": ("=",),
    "stockDaysTo": ("=",), "stockMode": ("=",), "store": ("=", "!="), "supplier": ("=", "!="),
    "variant": ("=", "!="),
}
# doc, "Остатки по складам" filter table: these keys, "=" only, no quantityMode and no archived
BYSTORE_FILTERS = {key: ("=",) for key in ("consignment", "moment", "product", "productFolder", "search",
                                            "soldByWeight", "stockMode", "store", "supplier", "variant")}
# the keys that pick goods; doc: one operator kind for all of them on /all, only one of them on /bystore
SELECTORS = ("product", "variant", "consignment", "productFolder", "search")
CURRENT_FILTERS = ("assortmentId", "storeId")  # doc: "Доступные фильтры отчёта Текущие Остатки"


@dataclass(slots=True)
class Line:
    """One report row: a good, its figures on every store, and summed over the stores the request chose."""

    item: Item
    per_store: list  # [(stock, reserve, inTransit)] for every store of the account
    stock: float
    reserve: float
    in_transit: float
    stock_days: int

    @property
    def quantity(self) -> float:
        """Доступно = stock − reserve + inTransit (DOMAIN.md, fixture stock_all_current_stockType_quantity)."""
        return self.stock - self.reserve + self.in_transit


def mode_accepts(mode: str, value: float) -> bool:
    """Whether a stock (or available) figure passes a stockMode (quantityMode) value."""
    # doc "Доступные значения для stockMode"; no good here has a minimum balance: underMinimum is below 0
    return {"all": True, "positiveOnly": value > 0, "negativeOnly": value < 0, "empty": value == 0,
            "nonEmpty": value != 0, "underMinimum": value < 0}[mode]


def in_reports(catalog: Catalog, item: Item) -> bool:
    """Whether any stock report can list this good at all."""
    # DOMAIN.md: bundles (and services) have no stock of their own; doc: "Товары, которые были созданы и не
    # участвовали в каких-либо операциях, не выводятся"; "только товары с уже пересчитанными остатками"
    return item.operated and item.id not in catalog.recalculating


def href_id(key: str, value: str, kinds: tuple) -> str:
    """The id at the end of an entity href whose type is one of `kinds` (filters take links, not ids)."""
    parts = value.split("?")[0].rstrip("/").rsplit("/", 2)
    if len(parts) != 3 or parts[1].lower() not in kinds or not parts[2]:
        raise bad_filter_value(key, value)
    return parts[2]


def flag(key: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise bad_filter_value(key, value)
    return value == "true"


def whole(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise bad_filter_value(key, value) from None


class StockReport:
    """The filter of one /report/stock/all or /report/stock/bystore request, read and checked as MoySklad does."""

    def __init__(self, catalog: Catalog, query: Query, by_store: bool):
        self.catalog, self.by_store = catalog, by_store
        rules = BYSTORE_FILTERS if by_store else ALL_FILTERS
        for key, op, value in query.filters:
            if key not in rules:
                raise unknown_filter_key(key)
            if op not in rules[key]:
                raise filter_error(f"оператор '{op}' не поддерживается для поля '{key}'")
            if by_store and value == "":
                raise bad_filter_value(key, value)  # doc (bystore): "Нельзя указывать пустые значения"
        self.check_selectors(query)
        if any(key == "moment" for key, _, _ in query.filters):
            raise filter_error("фильтр 'moment' не поддерживается эмулятором: история остатков не хранится")
        # doc: stockMode defaults to all on /all and to nonEmpty on /bystore; quantityMode (only /all) to nonEmpty
        self.stock_mode = self.mode(query, "stockMode", "nonEmpty" if by_store else "all")
        self.quantity_mode = "all" if by_store else self.mode(query, "quantityMode", "nonEmpty")
        self.archived = {flag("archived", v) for v in query.values("archived")} or {False}
        self.stores = self.store_indexes(query)
        self.products = {href_id("product", v, ("product",)) for v in query.values("product")}
        self.variants = {href_id("variant", v, ("variant",)) for v in query.values("variant")}
        self.consignments = {href_id("consignment", v, ("consignment",)) for v in query.values("consignment")}
        self.not_products = {href_id("product", v, ("product",)) for v in query.values("product", "!=")}
        self.not_variants = {href_id("variant", v, ("variant",)) for v in query.values("variant", "!=")}
        self.folders = {href_id("productFolder", v, ("productfolder",)) for v in query.values("productFolder")}
        self.sub_folders = all(flag("withSubFolders", v) for v in query.values("withSubFolders"))
        self.search = [v.lower() for k, op, v in query.filters if k == "search" and op == "="]
        self.not_search = [v.lower() for k, op, v in query.filters if k == "search" and op == "!~"]
        self.reserve_only = any(flag("reserveOnly", v) for v in query.values("reserveOnly"))
        self.in_transit_only = any(flag("inTransitOnly", v) for v in query.values("inTransitOnly"))
        self.sold_by_weight = {flag("soldByWeight", v) for v in query.values("soldByWeight")}
        self.days_from = [whole("stockDaysFrom", v) for v in query.values("stockDaysFrom")]
        self.days_to = [whole("stockDaysTo", v) for v in query.values("stockDaysTo")]
        # no good here has a supplier: "=" a supplier matches none, "=" empty matches all, "!=" empty none
        suppliers = [(op, v) for k, op, v in query.filters if k == "supplier"]
        self.no_supplier_match = any((op == "=" and v) or (op == "!=" and not v) for op, v in suppliers)
        self.group_by = query.choice("groupBy", GROUP_BY, "variant")
        # doc: includeRelated adds the variants (and series) of the filtered products
        self.include_related = query.params.get("includeRelated") == "true" and bool(self.products or self.variants)
        self.cache_key = ("stock", by_store, tuple(sorted(query.filters)), self.group_by, self.include_related,
                          moscow_now().date())

    def check_selectors(self, query: Query) -> None:
        used = [(key, op) for key, op, _ in query.filters if key in SELECTORS]
        if self.by_store and len({key for key, _ in used}) > 1:
            # doc (bystore): "В одном запросе можно использовать только один из параметров product, variant,
            # consignment, productFolder и search"
            raise filter_error(f"в одном запросе можно использовать только один из параметров {', '.join(SELECTORS)}")
        if len({op == "=" for _, op in used}) > 1:
            # doc (all): "в рамках одного запроса можно использовать только одинаковые операторы"
            raise filter_error(f"для параметров {', '.join(SELECTORS)} нельзя сочетать операторы '=' и '!='")

    @staticmethod
    def mode(query: Query, key: str, default: str) -> str:
        values = query.values(key)
        mode = values[0] if values else default
        if mode not in STOCK_MODES:
            raise ApiError(400, 1041, f"Неверное значение '{mode}' параметра фильтрации '{key}', допустимые "
                                      f"значения: '{', '.join(STOCK_MODES)}'", parameter="filter")
        return mode

    def store_indexes(self, query: Query) -> list[int]:
        catalog = self.catalog

        def index(ref: str) -> int:
            try:
                return catalog.store_index(href_id("store", ref, ("store",)))
            except KeyError:
                raise bad_filter_value("store", ref) from None

        chosen = [index(ref) for ref in query.values("store")] or list(range(len(catalog.stores)))
        excluded = {index(ref) for ref in query.values("store", "!=")}
        return [i for i in chosen if i not in excluded]

    # -- which goods ------------------------------------------------------------------------------

    def folder_of(self, item: Item) -> str | None:
        source = self.catalog.parent_of(item) or item
        return source.folder_id

    def in_folders(self, item: Item) -> bool:
        folder_id = self.folder_of(item)
        if not self.sub_folders:
            return folder_id in self.folders
        while folder_id:  # doc: withSubFolders (default true) takes the goods of child folders too
            if folder_id in self.folders:
                return True
            folder = self.catalog.folders.get(folder_id)
            folder_id = folder.parent_id if folder else None
        return False

    def picked(self, item: Item) -> bool:
        """product/variant/consignment values add up (OR); productFolder and search narrow; "!=" and "!~" exclude."""
        if self.products or self.variants or self.consignments:
            related = self.include_related and item.parent_id in self.products
            if not (item.id in self.products or item.id in self.variants or related):
                return False
        if item.id in self.not_products or item.id in self.not_variants:
            return False
        if self.folders and not self.in_folders(item):
            return False
        name = item.name.lower()
        if any(text not in name for text in self.search) or any(text in name for text in self.not_search):
            return False
        return not self.no_supplier_match and True not in self.sold_by_weight

    def line(self, item: Item, members: list[Item]) -> Line:
        stores = len(self.catalog.stores)
        per_store = [tuple(sum(member.stock[3 * i + k] for member in members) for k in range(3)) for i in range(stores)]
        stock, reserve, in_transit = (sum(per_store[i][k] for i in self.stores) for k in range(3))
        changed = [member.stock_changed for member in members if member.stock_changed]
        days = (moscow_now().date() - min(changed).date()).days if stock > 0 and changed else 0
        return Line(item, per_store, stock, reserve, in_transit, max(days, 0))

    def candidates(self):
        """(row good, goods whose stock it shows); groupBy=product folds variants into their product."""
        items = self.catalog.items
        for item in list(items.values()):
            if item.stock is None or item.archived not in self.archived:
                continue
            if self.group_by != "product":
                if in_reports(self.catalog, item):
                    yield item, [item]
            elif item.kind == KIND_PRODUCT:
                members = [item] + [items[v] for v in item.variant_ids if v in items]
                members = [m for m in members if in_reports(self.catalog, m)]
                if members:
                    yield item, members

    def keeps(self, line: Line) -> bool:
        if not (mode_accepts(self.stock_mode, line.stock) and mode_accepts(self.quantity_mode, line.quantity)):
            return False
        if (self.reserve_only and line.reserve <= 0) or (self.in_transit_only and line.in_transit <= 0):
            return False
        return all(line.stock_days >= d for d in self.days_from) and all(line.stock_days <= d for d in self.days_to)

    def lines(self) -> list[Line]:
        """The rows, ordered as MoySklad orders them by default: doc "сортируется по группе товара и имени товара"."""
        rows = [line for item, members in self.candidates() if self.picked(item)
                for line in (self.line(item, members),) if self.keeps(line)]

        def order(line: Line) -> tuple:
            folder = self.catalog.folders.get(self.folder_of(line.item) or "")
            return (folder.full_path if folder else "", line.item.name)

        rows.sort(key=order)
        return rows


def current_rows(catalog: Catalog, query: Query, by_store: bool) -> list[dict]:
    """The short reports /report/stock/all/current and /bystore/current: a bare array of one stockType."""
    query.check_filter_keys(CURRENT_FILTERS)
    for key, op, _ in query.filters:
        if op != "=":
            raise filter_error(f"оператор '{op}' не поддерживается для поля '{key}'")
    stock_type = query.choice("stockType", STOCK_TYPES, "stock")  # doc: "Значение по умолчанию - stock"
    include = [part for part in query.params.get("include", "").split(",") if part]
    if any(part != "zeroLines" for part in include):
        raise bad_parameter_value("include", query.params["include"], ("zeroLines",))
    changed_since = since(query)
    # doc: zero lines only with include=zeroLines, and always with changedSince
    zero_lines = bool(include) or changed_since is not None
    # doc: withRecalculate exists only on /bystore/current; such goods then show as null
    with_recalculate = by_store and query.params.get("withRecalculate") == "true"
    wanted = set(query.values("assortmentId"))
    store_filter = set(query.values("storeId"))
    stores = [(i, s.id) for i, s in enumerate(catalog.stores) if not store_filter or s.id in store_filter]
    # doc: «При разделении по складам строка без склада содержит резервы, не привязанные к складу», so the
    # total of /all/current holds them too; a storeId filter («только указанные склады») leaves that row out
    unbound = not store_filter

    def value(stock: float, reserve: float, in_transit: float) -> float:
        return {"stock": stock, "freeStock": stock - reserve, "quantity": stock - reserve + in_transit,
                "reserve": reserve, "inTransit": in_transit}[stock_type]

    def places(item: Item, figures_of) -> list:
        """(storeId, figure) of a good: the row without a warehouse first, as the doc's freeStock example has it."""
        figures = [(store_id, figures_of(*item.stock[3 * i:3 * i + 3])) for i, store_id in stores]
        if unbound and item.unbound_reserve is not None:
            figures.insert(0, (None, figures_of(0.0, item.unbound_reserve, 0.0)))
        return figures

    def emit(item_id: str, figures: list) -> list[dict]:
        if by_store:
            return [{"assortmentId": item_id, "storeId": store_id, stock_type: number_or_null(v)}
                    for store_id, v in figures if v or v is None or zero_lines]
        total = sum(v for _, v in figures)
        return [{"assortmentId": item_id, stock_type: number_or_null(total)}] if total or zero_lines else []

    rows = []
    with catalog.lock:
        items = [item for item in catalog.items.values() if item.operated and (not wanted or item.id in wanted)]
        removed = [(item_id, moment) for item_id, moment in catalog.removed.items() if not wanted or item_id in wanted]
    for item in items:
        if changed_since is not None and item.stock_changed < changed_since:
            continue
        if item.id in catalog.recalculating:
            if with_recalculate:
                rows += emit(item.id, places(item, lambda *_: None))
            continue
        if item.archived and changed_since is None:
            continue
        # doc: "если за запрашиваемый интервал был удален или архивирован товар ... остаток равный 0"
        rows += emit(item.id, places(item, (lambda *_: 0.0) if item.archived else value))
    if changed_since is not None:
        for item_id, moment in removed:
            if moment >= changed_since:
                rows += emit(item_id, [(store_id, 0.0) for _, store_id in stores])
    return rows


def since(query: Query) -> datetime | None:
    """changedSince, checked: doc "не должно превышать 24 часа" back and "не может превышать текущий момент"."""
    if "changedSince" not in query.params:
        return None
    moment = parse_moment(query.params["changedSince"], "changedSince")
    now = moscow_now()
    if moment < now - CHANGED_SINCE_MAX:
        raise ApiError(400, 1040, "Неверно заданы параметры запроса: значение параметра 'changedSince' не может быть "
                                  "раньше, чем за 24 часа до текущего момента", parameter="changedSince")
    if moment > now:
        raise ApiError(400, 1040, "Неверно заданы параметры запроса: значение параметра 'changedSince' не может "
                                  "превышать текущий момент", parameter="changedSince")
    return moment


def number_or_null(value: float | None):
    """A good under recalculation prints null (fixture stock_bystore_current_withRecalculate.json)."""
    return None if value is None else number(value)

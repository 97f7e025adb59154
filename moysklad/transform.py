"""Pure functions that turn MoySklad JSON into catalog store records.

No I/O here: each function takes what MoySklad sends and returns plain records, or raises
:class:`MalformedItem` with a reason an operator can read.

The two big lists (``/entity/assortment`` and ``/report/stock/all``) are read a page at a time:
:func:`assortment_page` and :func:`stock_report_page` decode a page's JSON straight into the few
fields the store keeps (``msgspec`` typed structs, the rest of each row skipped unread) and give
rows as tuples in the store's column order. A row whose shape is not MoySklad's (a list where an
object belongs) is skipped with the reason, and the others kept.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec

from core.pictures import MAX_PICTURE_BYTES

ITEM_KINDS = ("product", "variant", "service", "bundle")
UNSET = msgspec.UNSET

# Column order of the tuples the page functions give (the store writes them as they are).
OFFER_COLUMNS = ("id", "product_id", "kind", "name", "code", "article", "external_code", "barcodes", "characteristics",
                 "buy_price", "image_count", "archived", "updated")
PRODUCT_COLUMNS = ("id", "kind", "name", "code", "article", "external_code", "category_id", "description", "unit_id",
                   "vat", "vat_enabled", "weight", "volume", "variants_count", "tracking_type", "archived", "updated")
PRICE_COLUMNS = ("offer_id", "price_type_id", "value")
ATTRIBUTE_COLUMNS = ("owner_id", "attribute_id", "name", "type", "value")
IMAGE_COLUMNS = ("owner_id", "position", "filename", "title", "size", "updated", "href", "permanent_href")

_json = msgspec.json.Encoder()


class MalformedItem(ValueError):
    """A row we cannot store; the message is the reason shown to the operator."""


class NotAListAnswer(ValueError):
    """A whole answer without the list shape (``meta`` and ``rows``)."""


# --- the shapes of MoySklad's rows, as far as the store needs them ----------------------------
# Leaves are Any (their checks below give the reasons); containers are typed, so what is not
# needed is skipped while parsing. gc=False: parsed JSON cannot hold reference cycles.

# Each meta only with what is read of it: a field not declared is skipped unread (an assortment page
# holds some ten metas a row).
class _Href(msgspec.Struct, gc=False):
    href: Any = None


class _RowMeta(msgspec.Struct, gc=False):
    href: Any = None
    type: Any = None


class _Size(msgspec.Struct, gc=False):
    size: Any = None


class _Link(msgspec.Struct, gc=False):
    meta: _Href | None = None


class _Images(msgspec.Struct, gc=False):
    meta: _Size | None = None


class _PriceType(msgspec.Struct, gc=False):
    id: Any = None
    name: Any = None
    meta: _Href | None = None


class _SalePrice(msgspec.Struct, gc=False):
    value: Any = None
    priceType: _PriceType | None = None


class _Value(msgspec.Struct, gc=False):
    value: Any = None


class _Characteristic(msgspec.Struct, gc=False):
    name: Any = None
    value: Any = None


# Any JSON value, but an object as a _Characteristic (its meta skipped unread, not made a dict)
_CharacteristicItem = _Characteristic | list | str | int | float | bool | None


class _Attribute(msgspec.Struct, gc=False):
    id: Any = None
    name: Any = None
    type: Any = None
    value: Any = None
    meta: _Href | None = None


class AssortmentRow(msgspec.Struct, gc=False):
    """A row of ``/entity/assortment`` (product, variant, service or bundle): the fields the store keeps."""

    meta: _RowMeta | None = None
    id: Any = None
    name: Any = None
    code: Any = None
    article: Any = None
    externalCode: Any = None
    archived: Any = None
    updated: Any = None
    description: Any = None
    barcodes: Any = None
    characteristics: list[_CharacteristicItem] | dict | str | int | float | bool | None = None
    buyPrice: _Value | None = None
    images: _Images | None = None
    salePrices: list[_SalePrice] | None = None
    attributes: list[_Attribute] | None = None
    product: _Link | None = None
    productFolder: _Link | None = None
    uom: _Link | None = None
    vat: Any = None
    vatEnabled: Any = None
    effectiveVat: Any = UNSET
    effectiveVatEnabled: Any = UNSET
    weight: Any = None
    volume: Any = None
    variantsCount: Any = None
    trackingType: Any = None


class _ImageMeta(msgspec.Struct, gc=False):
    href: Any = None
    downloadPermanentHref: Any = None


class _Image(msgspec.Struct, gc=False):
    meta: _ImageMeta | None = None
    filename: Any = None
    title: Any = None
    size: Any = None
    updated: Any = None


class StockReportRow(msgspec.Struct, gc=False):
    """A row of ``/report/stock/all``: the good, its unit cost (``price``) and first image."""

    meta: _Href | None = None
    price: Any = None
    stock: Any = None
    image: _Image | None = None
    name: Any = None


class StockLine(msgspec.Struct, gc=False):
    """A row of ``/report/stock/*/current``: one figure (named by ``stockType``) of a good on a warehouse."""

    assortmentId: Any = None
    storeId: Any = None
    stock: Any = None
    reserve: Any = None
    inTransit: Any = None


class _PageMeta(msgspec.Struct, gc=False):
    size: Any = None


def _page_type(row_type):
    return msgspec.defstruct(f"{row_type.__name__}Page", [("meta", _PageMeta), ("rows", list[row_type])], gc=False)


_ASSORTMENT_PAGE = msgspec.json.Decoder(_page_type(AssortmentRow))
_STOCK_REPORT_PAGE = msgspec.json.Decoder(_page_type(StockReportRow))
_ANY = msgspec.json.Decoder()


def id_from_href(href: str | None) -> str | None:
    """The entity id at the end of a MoySklad ``meta.href`` (query string and fragment ignored)."""
    if not href or not isinstance(href, str):
        return None
    return _id_from_href(href)


@functools.lru_cache(maxsize=4096)  # the links to a few folders and units come back on every row
def _id_from_href(href: str) -> str | None:
    path = href.partition("?")[0].partition("#")[0].rstrip("/")
    head, _, tail = path.rpartition("/")
    return tail if tail and not head.endswith(":/") else None  # "https://host" has no path


def linked_id(row: dict, key: str) -> str | None:
    """The id of an entity linked as ``{key: {meta: {href}}}``."""
    link = row.get(key)
    if isinstance(link, dict) and isinstance(link.get("meta"), dict):
        return id_from_href(link["meta"].get("href"))
    return None


def kopecks(value, what: str, name: str | None = None) -> int | None:
    """A money value from MoySklad (kopecks as a float) as an integer; rejects nonsense, naming
    ``what`` (and its ``name``) in the reason."""
    if type(value) is float and 0.0 <= value < math.inf:  # as MoySklad sends it: nothing to check
        return round(value)
    if value is None:
        return None
    if name:
        what = f"{what} «{name}»"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MalformedItem(f"{what} is not a number: {value!r}")
    if value < 0:
        raise MalformedItem(f"{what} is negative: {value!r}")
    return round(value)


def quantity(value) -> float:
    """A stock quantity; MoySklad sends null for unknown values (withRecalculate)."""
    if type(value) is float and -math.inf < value < math.inf:  # as MoySklad sends it: nothing to check
        return value
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)


def stock_rows(lines: list[StockLine], stock_type: str) -> list[tuple]:
    """(offer id, warehouse id or "", quantity) per line of a current-stock report that names its good;
    ``stock_type`` is the figure the report gives (``stock``, ``reserve``, ``inTransit``)."""
    figure = operator.attrgetter(stock_type)
    return [(line.assortmentId, line.storeId or "", quantity(figure(line))) for line in lines
            if isinstance(line.assortmentId, str)]


def _text(row: dict, key: str) -> str | None:
    value = row.get(key)
    return value if isinstance(value, str) else None


def _flag(row: dict, key: str) -> int:
    return 1 if row.get(key) is True else 0


def _number(row: dict, key: str) -> float | None:
    return _finite(row.get(key))


def _identity(row: dict, what: str) -> tuple[str, str]:
    if not isinstance(row, dict):
        raise MalformedItem(f"{what} is not a JSON object")
    meta = row.get("meta")
    kind = meta.get("type") if isinstance(meta, dict) else None
    item_id = row.get("id")
    if not isinstance(item_id, str) or not item_id:
        item_id = id_from_href(meta.get("href")) if isinstance(meta, dict) else None
    if not item_id:
        raise MalformedItem(f"{what} has no id")
    return item_id, kind


def _name(row: dict, what: str) -> str:
    name = row.get("name")
    if not isinstance(name, str):
        raise MalformedItem(f"{what} has no name")
    return name


def category_record(row: dict) -> dict:
    """A product folder (группа товаров); the tree comes from the parent link."""
    folder_id, _ = _identity(row, "folder")
    return {
        "id": folder_id,
        "parent_id": linked_id(row, "productFolder"),
        "name": _name(row, "folder"),
        "code": _text(row, "code"),
        "external_code": _text(row, "externalCode"),
        "archived": _flag(row, "archived"),
        "updated": _text(row, "updated"),
    }


def _str(value) -> str | None:
    return value if isinstance(value, str) else None


def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _link_id(link: _Link | None) -> str | None:
    """The id of an entity linked as ``{meta: {href}}``."""
    return id_from_href(link.meta.href) if link is not None and link.meta is not None else None


def barcodes(values) -> str | None:
    """Barcodes as JSON ``[{"ean13": "..."}]``, the shape MoySklad uses, or None."""
    if not isinstance(values, list):
        return None
    kept = [b for b in values if isinstance(b, dict) and b]
    return _json.encode(kept).decode() if kept else None


def characteristics(values) -> str:
    """A variant's characteristics as JSON ``[{"name": ..., "value": ...}]``."""
    kept = [{"name": c.name, "value": c.value} for c in values
            if isinstance(c, _Characteristic) and isinstance(c.name, str)] if isinstance(values, list) else []
    return _json.encode(kept).decode()


def price_records(row: AssortmentRow, offer_id: str) -> list[tuple]:
    """(offer id, price type id, kopecks) per sale price."""
    records = []
    for price in row.salePrices or ():
        price_type = price.priceType
        type_id = price_type and (price_type.id or _link_id(price_type))
        if not type_id:
            raise MalformedItem("a sale price has no price type")
        records.append((offer_id, type_id, kopecks(price.value, "price", price_type.name or type_id) or 0))
    return records


def attribute_value(value) -> str | None:
    """An attribute value as text: links (custom entities, files) by their name."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return _text(value, "name") or _text(value, "filename")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def attribute_records(row: AssortmentRow, owner_id: str) -> list[tuple]:
    """(owner id, attribute id, name, type, value as text) per custom attribute."""
    records = []
    for attribute in row.attributes or ():
        if not isinstance(attribute.name, str):
            continue
        attribute_id = attribute.id or (id_from_href(attribute.meta.href) if attribute.meta else None)
        if attribute_id:
            records.append((owner_id, attribute_id, attribute.name, _str(attribute.type), attribute_value(attribute.value)))
    return records


def _image_count(row: AssortmentRow) -> int:
    size = row.images.meta.size if row.images is not None and row.images.meta is not None else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0


def assortment_records(row: AssortmentRow) -> tuple[tuple, tuple | None, list[tuple], list[tuple]]:
    """One row of ``/entity/assortment``: a product, service or bundle (a card and its offer) or a variant, as
    (offer, product card or None, prices, attributes), tuples in the ``*_COLUMNS`` order."""
    meta = row.meta
    kind = meta.type if meta is not None else None
    item_id = row.id if isinstance(row.id, str) and row.id else id_from_href(meta.href) if meta is not None else None
    if not item_id:
        raise MalformedItem("assortment row has no id")
    if kind not in ITEM_KINDS:
        raise MalformedItem(f"unknown assortment type {kind!r}")
    name = row.name
    if not isinstance(name, str):
        raise MalformedItem(f"{kind} has no name")
    code, article, external_code = _str(row.code), _str(row.article), _str(row.externalCode)
    archived, updated = 1 if row.archived is True else 0, _str(row.updated)
    buy_price = kopecks(row.buyPrice.value, "purchase price (buyPrice)") if row.buyPrice is not None else None
    prices = price_records(row, item_id)
    if kind == "variant":
        product_id = _link_id(row.product)
        if not product_id:
            raise MalformedItem("variant without a link to its product")
        offer = (item_id, product_id, kind, name, code, article, external_code, barcodes(row.barcodes),
                 characteristics(row.characteristics), buy_price, _image_count(row), archived, updated)
        return offer, None, prices, []
    vat_enabled = row.effectiveVatEnabled if row.effectiveVatEnabled is not UNSET else row.vatEnabled
    vat = row.effectiveVat if row.effectiveVat is not UNSET else row.vat
    product = (item_id, kind, name, code, article, external_code, _link_id(row.productFolder), _str(row.description),
               _link_id(row.uom), float(vat) if isinstance(vat, (int, float)) and not isinstance(vat, bool) else None,
               None if vat_enabled is None else int(vat_enabled is True), _finite(row.weight), _finite(row.volume),
               row.variantsCount if isinstance(row.variantsCount, int) else 0,
               # products and bundles carry it; a variant is marked as its product (Variant has no trackingType)
               _str(row.trackingType), archived, updated)
    offer = (item_id, item_id, kind, name, code, article, external_code, barcodes(row.barcodes), None, buy_price,
             _image_count(row), archived, updated)
    return offer, product, prices, attribute_records(row, item_id)


@dataclass
class Skipped:
    """A row left out of a page, and why (the run records it for the operator)."""

    item_type: str
    item_id: str | None
    name: str | None
    reason: str


@dataclass
class AssortmentPage:
    """What one page of ``/entity/assortment`` gives the store."""

    size: int | None  # the list's total (meta.size): a change while paging shows as another total
    rows: int
    offers: list[tuple] = field(default_factory=list)
    products: list[tuple] = field(default_factory=list)
    prices: list[tuple] = field(default_factory=list)
    attributes: list[tuple] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)
    skipped: list[Skipped] = field(default_factory=list)


def assortment_page(body: bytes) -> AssortmentPage:
    """A page of ``/entity/assortment`` (JSON) as store records; malformed rows skipped with their reasons.

    Raises ``msgspec.DecodeError`` when the body is not whole JSON, :class:`NotAListAnswer` when it is
    no list page.
    """
    size, rows, skipped = _typed_rows(body, _ASSORTMENT_PAGE, AssortmentRow, "assortment")
    page = AssortmentPage(size, len(rows) + len(skipped), skipped=skipped)
    for row in rows:
        try:
            offer, product, prices, attributes = assortment_records(row)
        except MalformedItem as exc:
            page.skipped.append(_skipped("assortment", row, str(exc)))
            continue
        page.offers.append(offer)
        page.prices += prices
        page.attributes += attributes
        if product:
            page.products.append(product)
    page.kinds.update(map(operator.itemgetter(2), page.offers))
    return page


@dataclass
class StockReportPage:
    """What one page of ``/report/stock/all`` gives the store: unit costs and first images."""

    size: int | None
    rows: int
    costs: list[tuple] = field(default_factory=list)  # (kopecks or None, offer id)
    images: list[tuple] = field(default_factory=list)  # IMAGE_COLUMNS
    skipped: list[Skipped] = field(default_factory=list)


def stock_report_page(body: bytes) -> StockReportPage:
    """A page of ``/report/stock/all`` (JSON) as costs and images; rows without an item link skipped."""
    size, rows, skipped = _typed_rows(body, _STOCK_REPORT_PAGE, StockReportRow, "stock report")
    page = StockReportPage(size, len(rows) + len(skipped), skipped=skipped)
    for row in rows:
        try:
            offer_id, cost, image = stock_report_record(row)
        except MalformedItem as exc:
            page.skipped.append(_skipped("stock report", row, str(exc)))
            continue
        page.costs.append((cost, offer_id))
        if image:
            page.images.append(image)
    return page


def _typed_rows(body: bytes, decoder: msgspec.json.Decoder, row_type, item_type: str) -> tuple[Any, list, list[Skipped]]:
    """(meta.size, the rows as ``row_type``, the rows of another shape as skipped) of a list page."""
    try:
        page = decoder.decode(body)
        return page.meta.size, page.rows, []
    except msgspec.ValidationError:
        pass  # some row (or the page) is not of MoySklad's shape: sort the rows out one by one
    data = _ANY.decode(body)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not isinstance(data.get("meta"), dict):
        raise NotAListAnswer("not a list answer (no meta/rows)")
    rows, skipped = [], []
    for raw in data["rows"]:
        try:
            rows.append(msgspec.convert(raw, row_type))
        except msgspec.ValidationError as exc:
            raw = raw if isinstance(raw, dict) else {}
            skipped.append(Skipped(item_type, _str(raw.get("id")), _str(raw.get("name")), shape_reason(exc)))
    return data["meta"].get("size"), rows, skipped


def _skipped(item_type: str, row, reason: str) -> Skipped:
    return Skipped(item_type, _str(getattr(row, "id", None)), _str(row.name), reason)


_SHAPE_WORDS = {"array": "a list", "object": "an object", "str": "a text", "int": "a number", "float": "a number",
                "bool": "true or false", "null": "null"}
_SHAPE_ERROR = re.compile(r"Expected `(?P<expected>[^`]+)`, got `(?P<got>[^`]+)`(?: - at `\$\.?(?P<where>[^`]*)`)?")


def shape_reason(error: msgspec.ValidationError) -> str:
    """A row of the wrong shape, in words: "salePrices is not a list (got a text)"."""
    match = _SHAPE_ERROR.match(str(error))
    if not match:
        return f"the row does not have MoySklad's shape: {error}"
    expected = next((_SHAPE_WORDS.get(part, part) for part in match["expected"].split(" | ") if part != "null"), "?")
    return f"{match['where'] or 'the row'} is not {expected} (got {_SHAPE_WORDS.get(match['got'], match['got'])})"


def bundle_component_records(row: dict) -> tuple[str, list[dict] | None]:
    """A row of ``/entity/bundle?expand=components``: (bundle id, its components), or None for the
    components when the row does not hold them all (expand ignored, or more than it inlines)."""
    bundle_id, _ = _identity(row, "bundle")
    block = row.get("components") if isinstance(row.get("components"), dict) else {}
    rows, meta = block.get("rows"), block.get("meta")
    size = meta.get("size") if isinstance(meta, dict) else None
    if not isinstance(rows, list) or (isinstance(size, int) and size > len(rows)):
        return bundle_id, None
    return bundle_id, [component_record(bundle_id, component) for component in rows]


def component_record(bundle_id: str, row: dict) -> dict:
    """One bundle component (BundleComponent): the good, variant or service and how many go in the bundle."""
    if not isinstance(row, dict):
        raise MalformedItem("a bundle component is not a JSON object")
    component_id = linked_id(row, "assortment")
    if not component_id:
        raise MalformedItem("a bundle component has no link to its good")
    amount = _number(row, "quantity")
    if amount is None or amount <= 0:
        raise MalformedItem(f"a bundle component has no positive quantity: {row.get('quantity')!r}")
    return {"bundle_id": bundle_id, "component_id": component_id, "quantity": amount}


NOT_AN_IMAGE = "not a jpg/png"


def too_large(limit_bytes: int) -> str:
    return f"larger than {limit_bytes / 1_000_000:g} MB"


def listed_picture_problem(filename, size) -> str | None:
    """Why retailCRM would refuse the image MoySklad lists with this file name and size (it takes a jpg/png of
    at most 2 MB), or None: for a CDN link, which is published without being downloaded."""
    if isinstance(filename, str) and not filename.lower().endswith((".jpg", ".jpeg", ".png")):
        return NOT_AN_IMAGE
    if isinstance(size, int) and not isinstance(size, bool) and size > MAX_PICTURE_BYTES:
        return too_large(MAX_PICTURE_BYTES)
    return None


def stock_report_record(row: StockReportRow) -> tuple[str, int | None, tuple | None]:
    """A row of ``/report/stock/all``: (offer id, unit cost in kopecks, first image as IMAGE_COLUMNS or None)."""
    offer_id = id_from_href(row.meta.href) if row.meta is not None else None
    if not offer_id:
        raise MalformedItem("stock report row without an item link")
    try:
        cost = kopecks(row.price, "unit cost")
    except MalformedItem:
        cost = None
    if cost == 0 and not (isinstance(row.stock, (int, float)) and row.stock > 0):
        # MoySklad costs what is in stock: with none left it reports 0 (report_stock_all.json), which is no cost at
        # all; published, it would replace the purchase price retailCRM keeps (an absent one leaves it as it is)
        cost = None
    image = row.image
    if image is None or image.meta is None or not image.meta.href:
        return offer_id, cost, None
    size = image.size if isinstance(image.size, int) and not isinstance(image.size, bool) else None
    permanent = None if listed_picture_problem(image.filename, size) else image.meta.downloadPermanentHref
    return offer_id, cost, (offer_id, 0, _str(image.filename), _str(image.title), size, _str(image.updated),
                            image.meta.href, permanent)


def reference_record(row: dict, what: str, *fields: tuple[str, str]) -> dict:
    """Small reference entities (warehouses, units): id, name and the named extra fields."""
    item_id, _ = _identity(row, what)
    record = {"id": item_id, "name": _name(row, what)}
    for column, key in fields:
        value = row.get(key)
        record[column] = int(value) if isinstance(value, bool) else value if isinstance(value, (str, int, float)) else None
    return record


def price_type_records(company_settings: dict) -> list[dict]:
    types = company_settings.get("priceTypes") if isinstance(company_settings, dict) else None
    records = []
    for position, price_type in enumerate(types or []):
        if not isinstance(price_type, dict):
            continue
        type_id = price_type.get("id") or id_from_href((price_type.get("meta") or {}).get("href"))
        if type_id and isinstance(price_type.get("name"), str):
            records.append({"id": type_id, "name": price_type["name"],
                            "external_code": _text(price_type, "externalCode"), "position": position})
    return records

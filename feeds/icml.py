"""ICML rendering: catalog store rows → retailCRM's catalog file, streamed offer by offer.

The functions turning one row into an ``<offer>`` are pure; :func:`render_icml` drives them over a
:class:`store.CatalogReader`. ``lxml.etree.xmlfile`` writes the document around the offers, which
go to the file in batches of escaped markup, so memory does not grow with the catalog; the build
parses the finished file back with lxml before publishing it. Limits follow retailCRM's ICML
rules (see DOMAIN.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import logging
import math
import operator
import os
import re
import shutil
import signal
import string
import tempfile
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgspec
from lxml import etree

from core.child_process import interleaved, preload, run_in_child
from core.clock import MOSCOW
from core.money import money
from core.settings import FeedSettings
from core.units import OKEI
from feeds import markup_cache
from store import CatalogReader, OfferRow, RenderReader, StoreError, unpack_offer

log = logging.getLogger(__name__)
from_json = msgspec.json.Decoder().decode  # the store's JSON columns; several times faster than json.loads
preload("feeds.icml")  # loaded once, in the fork server, not in every rendering process

MAX_PRICE_KOPECKS = 99_999_999 * 100
MAX_TEXT = 255
MAX_LINK = 2000
MAX_WEIGHT_KG = 9_999_999  # retailCRM's ICML documentation (fixtures/icml/SOURCES.md)
UNCATEGORIZED_ID = "uncategorized"
NOT_TRACKED = "NOT_TRACKED"  # MoySklad trackingType of goods under no mandatory marking
# floor(free / quantity in the bundle) of figures like 2.25 / 0.75 must not lose a whole set to rounding
BUNDLE_EPSILON = 1e-9
SKIP_EXAMPLES = 5
NOT_FINITE = "в хранилище у товара значение, которое не является конечным числом (остаток, цена или вес)"
# XML 1.0 forbids these code points; MoySklad happily stores them.
XML_INVALID_CHARS = dict.fromkeys([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0xD800, 0xE000), 0xFFFE, 0xFFFF])
TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
ATTRIBUTE_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                   "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})
BARCODE = re.compile(r"[0-9A-Za-z]{1,255}")  # the whole value (fullmatch)
# OKEI code → retailCRM unit code (core/units.py; pcs and meter as fixtures/icml/retailcrm-doc-example-ru.xml writes them)
UNIT_CODES = {code: unit.retailcrm for code, unit in OKEI.items() if unit.retailcrm}
PARAM_CODES = {"цвет": "color", "размер": "size", "вес": "weight", "артикул": "article", "материал": "material"}
TRANSLIT = str.maketrans({
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh", "з": "z", "и": "i",
    "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t",
    "у": "u", "ф": "f", "х": "h", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "sch", "ъ": "", "ы": "y", "ь": "",
    "э": "e", "ю": "yu", "я": "ya",
})


class RenderError(Exception):
    """The feed cannot be rendered as configured (unknown price type, warehouse, template field)."""


@dataclass
class RenderStats:
    """What the renderer published and what it left out, by reason, with a few examples each."""

    offers: int = 0
    inactive: int = 0
    reused: int = 0  # offers whose markup came from the last render
    categories: int = 0
    category_ids: set = field(default_factory=set)  # the folders published offers sit in
    skipped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def merge(self, other: "RenderStats") -> None:
        self.offers += other.offers
        self.inactive += other.inactive
        self.reused += other.reused
        self.category_ids |= other.category_ids
        self.skipped.update(other.skipped)
        for reason, examples in other.examples.items():
            shown = self.examples.setdefault(reason, [])
            shown.extend(examples[: SKIP_EXAMPLES - len(shown)])

    def skip(self, reason: str, offer_id: str, name: str | None) -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < SKIP_EXAMPLES:
            shown.append({"id": offer_id, "name": name})


class OfferSkipped(Exception):
    """This offer cannot be published; the message is the reason the operator sees (in Russian)."""


def clean_text(value, limit: int | None = MAX_TEXT) -> str:
    """Text safe for XML 1.0: invalid characters removed, whitespace trimmed, length capped."""
    if value is None:
        return ""
    cleaned = value if type(value) is str else str(value)
    if not cleaned.isprintable():  # the rare case; translate() is slow, isprintable() is not
        cleaned = cleaned.translate(XML_INVALID_CHARS)
    cleaned = cleaned.strip()
    return cleaned[:limit] if limit and len(cleaned) > limit else cleaned


def text(value: str) -> str:
    """Escape cleaned text for element content."""
    if "&" in value or "<" in value or ">" in value:
        return value.translate(TEXT_ESCAPES)
    return value


def attr(value: str) -> str:
    """Escape cleaned text for a double-quoted attribute (newlines and tabs kept as references)."""
    if value.isprintable() and '"' not in value and "&" not in value and "<" not in value and ">" not in value:
        return value
    return value.translate(ATTRIBUTE_ESCAPES)



def decimal(value: float, places: int = 3) -> str:
    """A number without trailing zeros: 12, 0.5, 13.321."""
    if value == int(value):
        return str(int(value))
    formatted = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return formatted if formatted not in ("", "-0") else "0"


def param_code(name: str) -> str:
    """A stable latin code for a characteristic or attribute name (Цвет → color, Длина рукава → dlina_rukava)."""
    lowered = name.strip().lower()
    if lowered in PARAM_CODES:
        return PARAM_CODES[lowered]
    slug = re.sub(r"[^a-z0-9]+", "_", lowered.translate(TRANSLIT)).strip("_")
    return slug[:64] or "param"


TEMPLATE_FIELDS = {"id": "id", "code": "code", "externalCode": "external_code", "article": "article", "name": "name"}
PRODUCT_FIELDS = {"id": "product_id", "code": "product_code", "externalCode": "product_external_code",
                  "article": "product_article", "name": "product_name"}


class _Fields(dict):
    """Template values of one row: {code}, {externalCode}, ..., and {product.<field>} via ``.product``."""

    def __init__(self, row: OfferRow, columns: dict):
        super().__init__((key, getattr(row, column) or "") for key, column in columns.items())

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def compile_template(template: str, what: str):
    """A function row → text for an ``xml_id`` / ``url`` template; unknown fields are refused by name."""
    fields = []
    try:
        for literal, field_name, spec, conversion in string.Formatter().parse(template):
            if field_name is None:
                continue
            head, _, tail = field_name.partition(".")
            if not (head == "product" and tail in PRODUCT_FIELDS or head in TEMPLATE_FIELDS and not tail):
                raise RenderError(f"{what}: unknown field {{{field_name}}}; use one of "
                                  + ", ".join("{%s}" % n for n in TEMPLATE_FIELDS) + " or {product.<field>}")
            fields.append((literal, field_name, spec, conversion))
    except ValueError as exc:
        raise RenderError(f"{what}: {exc}") from None
    if len(fields) == 1 and template == "{%s}" % fields[0][1]:
        head, _, tail = fields[0][1].partition(".")
        value_of = operator.attrgetter(PRODUCT_FIELDS[tail] if head == "product" else TEMPLATE_FIELDS[head])
        return lambda row: value_of(row) or ""  # the common case, {externalCode}, without formatting

    def fill(row: OfferRow) -> str:
        values = _Fields(row, TEMPLATE_FIELDS)
        values["product"] = _Fields(row, PRODUCT_FIELDS)
        return template.format_map(values)

    return fill


@dataclass
class RenderOptions:
    """A feed's rules resolved against the store (ids instead of names)."""

    feed: FeedSettings
    source: str
    images_url: str  # where the cached pictures are served, e.g. https://feeds.example/images
    price_type_id: str | None
    warehouse_ids: list[str] | None
    units: dict
    now: dt.datetime
    shop_name: str
    company: str
    xml_id_of: object
    url_of: object | None

    @property
    def inactive_after(self) -> dt.timedelta:
        return dt.timedelta(days=self.feed.inactive_days)

    @property
    def needs_attributes(self) -> bool:
        return bool(self.feed.vendor_attribute or self.feed.params or self.feed.dimension_attributes)


# How 1C writes the rouble in ТипЦены/Валюта (its own short name, the ISO code or the numeric one).
ROUBLE = {"руб", "руб.", "рубль", "rub", "rur", "643", "₽"}


def default_price_type(price_types: list[dict]) -> str | None:
    """The price a feed without ``price_type`` publishes: the first price type in roubles (or of no stated currency),
    not 1C's first one, which may be a wholesale price in dollars; the first one when none is in roubles."""
    rouble = (p["id"] for p in price_types if (p.get("currency") or "руб").strip().lower() in ROUBLE)
    return next(rouble, price_types[0]["id"] if price_types else None)


def catalog_loaded(reader: CatalogReader, source: str) -> bool:
    """Whether a sync (or 1C's upload) ever brought anything of the source's catalog: goods, price types or
    warehouses. A feed or a push from a catalog never loaded would tell retailCRM there are no goods."""
    return bool(reader.offer_count(source) or reader.price_types(source) or reader.warehouses(source))


def not_loaded(source: str) -> str:
    """What to tell a person when the source's catalog was never loaded, and what loads it."""
    loads = ("run `flask --app app moysklad sync`" if source == "moysklad" else
             "1C or MoySklad uploads it through the exchange, <public_url>/exchange/1c")
    return f"the {source} catalog is not loaded yet ({loads})"


def resolve_options(reader: CatalogReader, feed: FeedSettings, images_url: str, now: dt.datetime | None = None) -> RenderOptions:
    """Look up the configured price type and warehouses by name; a name that does not exist is an error."""
    source = feed.source
    price_types = reader.price_types(source)
    if feed.price_type:
        matches = [p["id"] for p in price_types if p["name"] == feed.price_type]
        if not matches:
            known = ", ".join(p["name"] for p in price_types) or "none"
            raise RenderError(f"feed {feed.name}: price type «{feed.price_type}» does not exist (known: {known})")
        price_type_id = matches[0]
    else:
        price_type_id = default_price_type(price_types)
    warehouse_ids = None
    if feed.stores:
        by_name = {w["name"]: w["id"] for w in reader.warehouses(source)}
        missing = [name for name in feed.stores if name not in by_name]
        if missing:
            raise RenderError(f"feed {feed.name}: warehouse «{missing[0]}» does not exist (known: {', '.join(by_name) or 'none'})")
        warehouse_ids = [by_name[name] for name in feed.stores]
    company = feed.company or reader.setting(source, "company") or ""
    return RenderOptions(
        feed=feed, source=source, images_url=images_url.rstrip("/"), price_type_id=price_type_id,
        warehouse_ids=warehouse_ids, units={unit_id: unit_xml(u) for unit_id, u in reader.units(source).items()},
        now=now or dt.datetime.now(dt.timezone.utc), shop_name=feed.shop_name or company or feed.name,
        company=company, xml_id_of=compile_template(feed.xml_id, f"feeds.{feed.name}.xml_id"),
        url_of=compile_template(feed.url, f"feeds.{feed.name}.url") if feed.url else None,
    )


def unit_xml(unit) -> str:
    """``<unit code="pcs" name="Штука" sym="шт"/>`` from a unit of measure (OKEI code mapped)."""
    code = UNIT_CODES.get(unit["code"] or "", param_code(unit["name"]))
    name = clean_text(unit["description"] or unit["name"])
    return f'<unit code="{attr(code)}" name="{attr(name)}" sym="{attr(clean_text(unit["name"]))}"/>'


# --- one offer ---------------------------------------------------------------------------------

def _parse_time(value: str | None) -> dt.datetime | None:
    """Store timestamps: ISO with zone (removed_at) or MoySklad's Moscow 'YYYY-MM-DD HH:MM:SS.mmm'."""
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=MOSCOW)
    return moment


def activity(row: OfferRow, options: RenderOptions) -> str:
    """'active', 'inactive' (published with productActivity N) or 'drop' (out of the inactive window)."""
    removed = row.removed or row.product_removed
    if not removed and not (row.archived or row.product_archived):
        return "active"
    if removed:
        since = max(filter(None, (_parse_time(row.removed_at), _parse_time(row.product_removed_at))), default=None)
    else:
        since = max(filter(None, (_parse_time(row.updated), _parse_time(row.product_updated))), default=None)
    if since is not None and options.now - since > options.inactive_after:
        return "drop"
    return "inactive"


# --- the values of one offer: the feed publishes them and the retailCRM push sends them -----------

def available(counted: float | None) -> float:
    """What can be sold of the stock the feed's quantity rule counted (the store counts it): never below 0."""
    return counted if counted is not None and counted > 0.0 else 0.0


def bundle_quantity(components: list) -> float | None:
    """How many whole bundles the components make: min over them of floor(available ÷ quantity in the bundle).

    Each component's stock is counted under the feed's rule (free, stock or quantity) over the
    feed's warehouses. A component missing, archived or removed makes it 0, as does a bundle with no
    components known; services are not stocked and limit nothing, so a bundle of services only
    has no quantity (None).
    """
    if not components:
        return 0.0
    sets = []
    for per_bundle, kind, unavailable, counted in components:
        if unavailable or not per_bundle or per_bundle <= 0:
            return 0.0
        if kind == "service":
            continue
        sets.append(math.floor(available(counted) / per_bundle + BUNDLE_EPSILON))
    return float(min(sets)) if sets else None


def offer_quantity(row: OfferRow) -> float | None:
    """What the feed says can be sold, over the row's warehouses: None for services (no stock of their
    own) and bundles of services only, 0 for archived or removed goods, else the stock its quantity rule
    counts (for a bundle, what its components make)."""
    if row.kind == "service":
        return None
    if row.archived or row.product_archived or row.removed or row.product_removed:
        return 0.0
    if row.kind == "bundle":
        return bundle_quantity(from_json(row.components_json or "[]"))
    return available(row.stock_counted)


def purchase_price(row: OfferRow, rule: str) -> int | None:
    """The purchase price in kopecks by the feed's rule (unit cost, the card's buy price, none); None
    when there is none or it is outside what retailCRM takes."""
    purchase = None
    if rule == "cost":  # a cost of 0 with none in stock (no batch left) is none already (moysklad.transform)
        purchase = row.cost
    elif rule == "buyPrice":  # 0 is MoySklad's unset buy price: published, it would overwrite retailCRM's own
        purchase = row.buy_price or None
    return purchase if purchase is not None and 0 <= purchase <= MAX_PRICE_KOPECKS else None


def published_name(row: OfferRow) -> str:
    """The offer's name as the feed publishes it; raises :class:`OfferSkipped` with the reason when
    the feed cannot publish the offer at all."""
    if not row.has_product:
        raise OfferSkipped("в каталоге нет карточки товара")
    name = clean_text(row.name)
    if not name:
        raise OfferSkipped("пустое наименование")
    price = row.price
    if price is not None and not 0 <= price <= MAX_PRICE_KOPECKS:
        raise OfferSkipped("цена вне допустимого диапазона (0 … 99 999 999)")
    return name


def published_xml_id(row: OfferRow, options: RenderOptions) -> str:
    """The offer's xmlId ('' for none); raises :class:`OfferSkipped` for one longer than retailCRM takes: cut, it
    would match nothing in MoySklad (orders would not reach it), or another offer's."""
    xml_id = clean_text(options.xml_id_of(row), None)
    if len(xml_id) > MAX_TEXT:
        raise OfferSkipped(f"xmlId длиннее {MAX_TEXT} символов: заказы с ним не дойдут до МойСклад; проверьте шаблон xml_id")
    return xml_id


def offer_xml(row: OfferRow, options: RenderOptions, category_ids: set[str]) -> str:
    """One ``<offer>`` as escaped markup; raises :class:`OfferSkipped` when it cannot be published.

    Built as text rather than as lxml elements: creating ~15 elements per offer costs more than
    everything else in a build. Every value goes through :func:`text` or :func:`attr`, and the
    finished file is parsed back by lxml before it is published.
    """
    feed = options.feed
    name = published_name(row)
    price = row.price

    head = f'<offer id="{attr(row.id)}" productId="{attr(row.product_id)}"'
    amount = offer_quantity(row)
    if amount is not None:
        head += f' quantity="{decimal(amount)}"'
    parts = [head + (' type="service">' if row.kind == "service" else ' type="product">')]
    add = parts.append

    if options.url_of:
        link = clean_text(options.url_of(row), None)
        if link and len(link) <= MAX_LINK:
            add(f"<url>{text(link)}</url>")
    if price is not None:
        add(f"<price>{money(price)}</price>")
    purchase = purchase_price(row, feed.purchase_price)
    if purchase is not None:
        add(f"<purchasePrice>{money(purchase)}</purchasePrice>")
    category = row.category_id
    add(f"<categoryId>{attr(category if category in category_ids else UNCATEGORIZED_ID)}</categoryId>")
    if feed.pictures != "none":
        for link in _pictures(row, options):
            add(f"<picture>{text(link)}</picture>")
    add(f"<name>{text(name)}</name>")
    add(f"<productName>{text(clean_text(row.product_name) or name)}</productName>")
    xml_id = published_xml_id(row, options)
    if xml_id:
        add(f"<xmlId>{text(xml_id)}</xmlId>")

    attributes = {}
    if options.needs_attributes:
        attributes = {n: v for n, v in from_json(row.attributes_json or "[]") if v not in (None, "")}
    if feed.vendor_attribute and attributes.get(feed.vendor_attribute):
        add(f"<vendor>{text(clean_text(attributes[feed.vendor_attribute]))}</vendor>")
    article = clean_text(row.article or row.product_article)
    if article:
        add(f'<param name="Артикул" code="article">{text(article)}</param>')
    if row.characteristics:
        for characteristic in from_json(row.characteristics):
            value = clean_text(characteristic.get("value"))
            label = clean_text(characteristic.get("name"))
            if value and label:
                add(f'<param name="{attr(label)}" code="{attr(param_code(label))}">{text(value)}</param>')
    for mapping in feed.params:
        value = clean_text(attributes.get(mapping.attribute))
        if value:
            label = clean_text(mapping.name or mapping.attribute)
            add(f'<param name="{attr(label)}" code="{attr(mapping.code or param_code(label))}">{text(value)}</param>')

    if row.unit_id:
        unit = options.units.get(row.unit_id)
        if unit is not None:
            add(unit)
    if row.vat_enabled == 0:
        add("<vatRate>none</vatRate>")
    elif row.vat is not None:
        add(f"<vatRate>{decimal(row.vat, 2)}</vatRate>")
    if feed.dimension_attributes:
        sizes = [_number(attributes.get(a)) for a in feed.dimension_attributes]
        if None not in sizes:
            add(f"<dimensions>{'/'.join(decimal(size) for size in sizes)}</dimensions>")
    weight = decimal(row.weight) if row.weight and 0 < row.weight <= MAX_WEIGHT_KG else "0"
    if weight != "0":  # none, negative, beyond retailCRM's range or below its 0.001 kg precision: left out
        add(f"<weight>{weight}</weight>")
    if row.barcodes:
        barcode = _barcode(row.barcodes)
        if barcode:
            add(f"<barcode>{barcode}</barcode>")
    if row.tracking_type and row.tracking_type != NOT_TRACKED:  # «Честный знак»: marked goods
        add("<markable>Y</markable>")
    add("</offer>")
    return "".join(parts)


def _number(value) -> float | None:
    try:
        number = float(str(value).replace(",", "."))
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def _barcode(barcodes_json: str) -> str | None:
    """The first barcode ICML accepts (latin letters and digits), EAN-13 preferred."""
    fallback = None
    for entry in from_json(barcodes_json):
        for kind, value in entry.items():
            value = str(value)
            if BARCODE.fullmatch(value):
                if kind == "ean13":
                    return value
                fallback = fallback or value
    return fallback


def _pictures(row: OfferRow, options: RenderOptions) -> list[str]:
    mode = options.feed.pictures
    pictures = from_json(row.pictures_json or "[]") or from_json(row.product_pictures_json or "[]")
    links = []
    for local_file, permanent in pictures:
        if mode == "cache" and local_file:
            link = f"{options.images_url}/{local_file}"
        elif mode == "permanent" and permanent:
            link = permanent
        else:
            continue
        if len(link) <= MAX_LINK:
            links.append(link)
    return links


# --- categories ----------------------------------------------------------------------------------

def category_tree(rows) -> list[tuple[str, str | None, str]]:
    """(id, parent id, name) in parent-before-child order, each folder once; broken or looping parent links
    become roots. Walked without recursion: a folder tree has no depth limit."""
    by_id = {r["id"]: r for r in rows}
    order, placed = [], set()
    for start in by_id:
        chain, category_id = [], start  # the folder and its ancestors not placed yet, nearest first
        while category_id in by_id and category_id not in placed and category_id not in chain:
            chain.append(category_id)
            category_id = by_id[category_id]["parent_id"]
        for category_id in reversed(chain):  # the top one's parent is placed, missing, or in a loop: a root
            parent = by_id[category_id]["parent_id"]
            order.append((category_id, parent if parent in placed else None,
                          clean_text(by_id[category_id]["name"]) or "Без названия"))
            placed.add(category_id)
    return order


def published_categories(rows, used: set[str]) -> list:
    """The folders a feed publishes: every live one, and an archived one only while it holds (itself
    or below it) an offer of the feed or a live folder, so the published tree stays connected."""
    by_id = {row["id"]: row for row in rows}
    wanted = {row["id"] for row in rows if not row["archived"]} | (used & by_id.keys())
    kept = set()
    for category_id in wanted:
        while category_id in by_id and category_id not in kept:  # up to the root (or a looping link)
            kept.add(category_id)
            category_id = by_id[category_id]["parent_id"]
    return [row for row in rows if row["id"] in kept]


# --- the whole file --------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Below this many offers a second process costs more than it saves.
PARALLEL_FROM = 5_000


def render_icml(reader: CatalogReader, options: RenderOptions, out: BinaryIO, progress=None,
                scratch_dir: Path | None = None, processes: int | None = None) -> RenderStats:
    """Write the whole ICML document to ``out``.

    The offers are rendered first, into temporary files in ``scratch_dir`` (beside the target, where the
    last render's markup is kept; a folder of its own without it), because which archived folders are
    published depends on the offers that sit in them. They are rendered by processes of their own, one
    per core for big catalogs, each writing a part of the offers to a file of its own: a rendering
    process reads the store through apsw, which no process that has it open through sqlite3 may do
    (:class:`store.database.LibraryClaim`). The header and categories then go to ``out`` and the offers
    are copied in after them; memory stays flat either way. ``processes``: how many, when not by the
    catalog's size (:func:`render_processes`).
    """
    feed = options.feed
    folders = reader.categories(options.source)
    folder_ids = {row["id"] for row in folders}
    parts = processes or render_processes(reader.offer_count(options.source))
    moscow = options.now.astimezone(MOSCOW)
    with contextlib.ExitStack() as cleanup:
        folder = scratch_dir or Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="icml-render-")))
        paths = [folder / f".{feed.name}.{os.getpid()}.part{n}.tmp" for n in range(parts)]
        markup_paths = [folder / f".{feed.name}.{os.getpid()}.markup{n}.tmp" if scratch_dir else None
                        for n in range(parts)]
        for path in [*paths, *filter(None, markup_paths)]:
            cleanup.callback(path.unlink, missing_ok=True)
        if parts > 1:
            log.info("feed %s: %d processes render the offers", feed.name, parts)
        stats = _render_in_parts(reader.path, options, folder_ids, paths, markup_paths, progress)
        offer_files = [cleanup.enter_context(open(path, "rb")) for path in paths]
        if scratch_dir:
            markup_cache.keep(scratch_dir, feed.name, markup_paths)
            log.info("feed %s: %d of %d offers as the last render made them", feed.name, stats.reused, stats.offers)
        categories = category_tree(published_categories(folders, stats.category_ids))
        with etree.xmlfile(out, encoding="utf-8") as xf:
            xf.write_declaration()
            with xf.element("yml_catalog", date=moscow.strftime("%Y-%m-%d %H:%M:%S")):
                with xf.element("shop"):
                    xf.write(_text_element("name", clean_text(options.shop_name)))
                    xf.write(_text_element("company", clean_text(options.company or options.shop_name)))
                    with xf.element("categories"):
                        for category_id, parent_id, name in categories:
                            element = _text_element("category", name, id=category_id)
                            if parent_id:
                                element.set("parentId", parent_id)
                            xf.write(element)
                        xf.write(_text_element("category", clean_text(feed.uncategorized) or "Без категории",
                                               id=UNCATEGORIZED_ID))
                        stats.categories = len(categories) + 1
                    with xf.element("offers"):
                        xf.flush()  # offers go straight to the file, after what xmlfile has written so far
                        for offers_file in offer_files:
                            offers_file.seek(0)
                            shutil.copyfileobj(offers_file, out, 1 << 20)
    return stats


def removed_before(options: RenderOptions) -> str:
    """Goods removed before this moment are out of the inactive window: the feed no longer lists them."""
    return (options.now - options.inactive_after).isoformat(timespec="seconds")


def write_offers(reader: RenderReader, options: RenderOptions, category_ids: set[str], out: BinaryIO,
                 part: int = 0, parts: int = 1, markup_path: Path | None = None) -> Generator[int, None, RenderStats]:
    """Write the ``<offer>`` elements (of one part of the catalog) to ``out``, 1000 at a time; yields the
    count written every 10,000 offers and returns the stats.

    With ``markup_path`` (this render's markup file, beside the last render's) an offer that has not
    changed since the last render is copied from it rather than built again (:mod:`feeds.markup_cache`).
    """
    stats = RenderStats()
    feed = options.feed
    rows = reader.packed_offers(options.source, price_type_id=options.price_type_id, warehouse_ids=options.warehouse_ids,
                                quantity_rule=feed.quantity, include_bundles=feed.include_bundles,
                                removed_before=removed_before(options),
                                with_attributes=options.needs_attributes, with_pictures=feed.pictures != "none",
                                with_product_buy_price=feed.purchase_price == "buyPrice", part=part, parts=parts)
    last = writer = None
    if markup_path:
        depends_on = markup_cache.options_digest(feed, options.source, options.images_url, options.price_type_id,
                                                 options.warehouse_ids, sorted(options.units.items()))
        last = markup_cache.LastRender(markup_cache.last_paths(markup_path.parent, feed.name, part, parts), depends_on)
        writer = markup_cache.MarkupWriter(markup_path, depends_on)
    batch = []
    try:
        for offer_id, product_id, category_id, live, packed in rows:
            row = None  # unpacked only when needed: most offers' markup is the last render's
            try:
                if live:
                    state = "active"
                else:  # removed or archived: whether and how it is published depends on since when
                    row = _unpacked(packed)
                    state = activity(row, options)
                    if state == "drop":
                        continue
                listed = category_id in category_ids
                digest = markup_cache.row_digest(packed, listed) if writer else None
                found = last.markup(product_id, offer_id, digest) if writer else None
                if found is None:
                    row = row or _unpacked(packed)
                    offer, checksum = offer_xml(row, options, category_ids).encode(), None
                else:
                    offer, checksum = found
                    stats.reused += 1
            except OfferSkipped as exc:
                stats.skip(str(exc), offer_id, row.name if row else None)
                continue
            if writer:
                writer.add(product_id, offer_id, digest, offer, checksum)
            if state == "inactive":
                offer = offer[:-8] + b"<productActivity>N</productActivity></offer>"
                stats.inactive += 1
            if listed:
                stats.category_ids.add(category_id)
            batch.append(offer)
            stats.offers += 1
            if len(batch) >= 1000:
                out.write(b"".join(batch))
                batch.clear()
                if stats.offers % 10000 == 0:
                    yield stats.offers
        out.write(b"".join(batch))
    finally:
        if writer:
            writer.close()
            last.close()
    return stats


def _unpacked(packed: bytes) -> OfferRow:
    """The offer's row; OfferSkipped (recorded with the offer's id) when the store holds what no feed can publish."""
    try:
        return unpack_offer(packed)
    except ValueError:
        raise OfferSkipped(NOT_FINITE) from None


def render_processes(offers: int) -> int:
    """How many processes render a catalog of this size: one per core for big ones.

    They are forked from the fork server of :mod:`core.child_process`, never from this process, so
    a build inside the web service (scheduler and request threads beside it) renders in parallel
    as the command line does.
    """
    if offers < PARALLEL_FROM:
        return 1
    return max(1, min(os.cpu_count() or 1, 4))


def _die_with_parent() -> None:
    """A rendering process must not outlive a build that was killed (kill -9 leaves no one to stop it):
    its parent, the fork server, exits when the build's process does."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers then end when their queue breaks
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _render_part(store_path: str, feed: FeedSettings, images_url: str, now: dt.datetime, folder_ids: set[str],
                 part: int, parts: int, path: str, markup_path: Path | None) -> Generator[int, None, RenderStats]:
    """One rendering process: its own read-only connection, its share of the offers, its own file.

    The folders are the build's (``folder_ids``), so an offer never names a category the file lacks.
    """
    _die_with_parent()
    with RenderReader(store_path) as reader, open(path, "wb") as out:
        options = resolve_options(reader, feed, images_url, now)
        return (yield from write_offers(reader, options, folder_ids, out, part=part, parts=parts,
                                        markup_path=markup_path))


def _render_in_parts(store_path, options: RenderOptions, folder_ids: set[str], paths: list[Path],
                     markup_paths: list[Path | None], progress) -> RenderStats:
    """Each part rendered by a process of its own at the same time, into the file of ``paths`` of its number."""
    parts = len(paths)
    stats = RenderStats()
    with contextlib.ExitStack() as children:
        streams = [children.enter_context(run_in_child(
            _render_part, str(store_path), options.feed, options.images_url, options.now, folder_ids, n, parts,
            str(path), markup_paths[n], name=f"icml-render {options.feed.name} {n + 1}/{parts}",
            expected=(RenderError, StoreError, OSError))) for n, path in enumerate(paths)]
        done = [0] * parts
        for n, count in interleaved(streams):
            done[n] = count
            if progress:
                progress(sum(done))
    for stream in streams:
        stats.merge(stream.result)
    if progress:
        progress(stats.offers)
    return stats


def _text_element(tag: str, content: str, **attributes) -> etree._Element:
    element = etree.Element(tag, **attributes)
    element.text = content
    return element

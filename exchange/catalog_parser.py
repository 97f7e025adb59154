"""The CommerceML catalog parser: one file read record by record into batches of store rows.

It runs in a child process (see :mod:`core.child_process`) while the importing process writes the
store: lxml and the Python of reading records on one core, SQLite on the other. Every group, good
and offer is read and then cleared from the tree as soon as its end tag arrives, so memory stays
flat whatever the file size. What it makes is plain data; :mod:`exchange.catalog_import` writes it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from json.encoder import encode_basestring
from pathlib import Path

from lxml import etree

from core.clock import utc_now
from core.units import OKEI
from exchange.cml import (
    DOCTYPE_REFUSED,
    LOCAL_NAMES,
    PROLOG_BYTES,
    ROOT_TAG,
    SPACES,
    CommerceMLError,
    Malformed,
    all_named,
    doctype_in_prolog,
    document_problem,
    fields_of,
    local_name,
    parent_is,
    parse_decimal,
    requisite_pairs,
    text_of,
)

# ИзмененияПакетаПредложений (2.08+, «для быстрой загрузки на сайт»): a changes-only package of prices and stock.
CHANGES_PACKAGE = "ИзмененияПакетаПредложений"
CHANGES_ONLY = "СодержитТолькоИзменения"
SECTIONS = ("Классификатор", "Каталог", "ПакетПредложений", CHANGES_PACKAGE)
# Only the end tags of these records reach Python; everything inside them stays in lxml until then.
# Warehouses are read at the end of their list (Склады): a Склад also sits in every offer, as its stock.
EVENT_TAGS = (ROOT_TAG, *SECTIONS, "Группа", "Свойство", "ТипЦены", "Склады", "ЕдиницаИзмерения", "Товар", "Предложение")
BATCH = 1000
ROOT_ATTRIBUTES_KEPT = 20
# Children found by local name in any namespace, matched by lxml in C (see exchange.cml.all_named)
PICTURE, VAT_RATE, PROPERTY_VALUE, ID = "{*}Картинка", "{*}СтавкаНалога", "{*}ЗначенияСвойства", "{*}Ид"
# the schema's Штрихкод, and the ШтрихКод some exchange modules write
BARCODE_NAMES = ("Штрихкод", "ШтрихКод")
BARCODES = tuple(f"{{*}}{name}" for name in BARCODE_NAMES)
PRICE, PRICE_TYPE_ID, PRICE_VALUE, WAREHOUSE = "{*}Цена", "{*}ИдТипаЦены", "{*}ЦенаЗаЕдиницу", "{*}Склад"
WAREHOUSES = "{*}Склады"
# Requisites not kept as attributes: picture captions, and the weight, which is a column of the card.
TECHNICAL_REQUISITES = {"ОписаниеФайла", "Вес"}
# The rows a batch carries are tuples of these columns (the writer adds the source): a tuple costs less to
# make, to send through the pipe and to write than a dict.
CATEGORY_COLUMNS = ("id", "name", "external_code", "archived", "parent_id", "updated")
CARD_COLUMNS = ("id", "kind", "name", "code", "article", "external_code", "category_id", "description", "unit_id",
                "vat", "vat_enabled", "weight", "archived", "updated", "from_offer")
# A card made up from a Предложение whose product no Товар describes (from_offer 1: the offers files own it)
OFFER_CARD_COLUMNS = ("id", "kind", "name", "external_code", "category_id", "unit_id", "updated", "from_offer")
GOOD_OFFER_COLUMNS = ("id", "product_id", "kind", "name", "code", "article", "external_code", "barcodes",
                      "characteristics", "archived", "updated")
CHILD_COLUMNS = {"prices": ("offer_id", "price_type_id", "value"),
                 "attributes": ("owner_id", "attribute_id", "name", "type", "value"),
                 "images": ("owner_id", "position", "filename", "size", "href", "updated"),
                 "stock": ("offer_id", "warehouse_id", "stock")}


def _kopecks(text: str) -> int:
    whole, _, cents = text.partition(",") if "," in text else text.partition(".")
    if whole.isascii() and whole.isdigit() and len(cents) <= 2 and (not cents or cents.isascii() and cents.isdigit()):
        return int(whole) * 100 + (int(cents) * (10 if len(cents) == 1 else 1) if cents else 0)  # '1234', '12,5', '99.90'
    value = parse_decimal(text, "цена")
    if value < 0:
        raise Malformed(f"цена «{text}» отрицательная")
    return int((value * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _quantity(text: str) -> float:
    if not text:
        return 0.0
    try:
        value = float(text)  # float() takes what the general path makes of a text without inner spaces or commas
    except ValueError:
        value = None
    try:
        if value is None:
            value = float(text.translate(SPACES).replace(",", "."))
    except ValueError:
        raise Malformed(f"остаток «{text}» не число") from None
    if not math.isfinite(value):
        raise Malformed(f"остаток «{text}» не число")
    return value


def _deleted(element, fields: dict) -> int:
    """ПометкаУдаления or Статус «Удален» (an attribute of Товар in the 2.08-2.10 schemas, an element in older
    files): the item stays, archived."""
    status = element.get("Статус") or text_of(fields.get("Статус"))
    mark = "ПометкаУдаления" in fields and text_of(fields["ПометкаУдаления"]).lower() == "true"
    return int(mark or status.strip().lower() in ("удален", "удалён"))


# ТипНоменклатуры values (UT 11, KA, MoySklad's export) that carry no stock; ВидНоменклатуры is the shop's own list,
# so only its plain «Услуга» counts, and only when ТипНоменклатуры is absent.
SERVICE_TYPES = {"услуга", "работа"}


def _good_kind(requisites: list[tuple[str, str]]) -> str:
    """'service' for a Товар 1C types as a service (no stock: a delivery, an installation), else 'product'."""
    found = dict(requisites)
    kind = found.get("ТипНоменклатуры")
    if kind is None:
        return "service" if (found.get("ВидНоменклатуры") or "").strip().lower() == "услуга" else "product"
    return "service" if kind.strip().lower() in SERVICE_TYPES else "product"


def _full(element) -> bool:
    """СодержитТолькоИзменения absent or false: the section lists everything (1C's default). Schema 2.03 writes it as
    the section's last child element, later ones as its attribute: read at the section's end, both are there."""
    flag = element.get(CHANGES_ONLY)
    if flag is None:
        flag = text_of(next(element.iterchildren(f"{{*}}{CHANGES_ONLY}"), None))
    return flag.strip().lower() != "true"


def _vat(rates) -> tuple[float | None, int | None]:
    """(rate, enabled) from СтавкиНалогов: «Без НДС» → VAT off, «20» → 20, «0» → 0 and on."""
    chosen = None
    if rates is None:
        return None, None
    names = LOCAL_NAMES
    for entry in rates.iterchildren(VAT_RATE):
        tax = rate = ""
        for child in entry:
            tag = child.tag
            local = names.get(tag) or local_name(tag)
            if local == "Наименование":
                tax = (child.text or "").strip().upper()
            elif local == "Ставка":
                rate = (child.text or "").strip()
        if chosen is None or tax in ("НДС", ""):
            chosen = rate
        if tax in ("НДС", ""):
            break
    return _vat_rate(chosen) if chosen is not None else (None, None)


@functools.lru_cache(maxsize=64)
def _vat_rate(rate: str) -> tuple[float | None, int | None]:
    if "без" in rate.lower():
        return None, 0
    try:
        return float(parse_decimal(rate.rstrip("%"), "ставка НДС")), 1
    except Malformed:
        return None, None


def _unit(element) -> dict | None:
    """A units row from БазоваяЕдиница (attributes) or ЕдиницаИзмерения (child elements), keyed by OKEI code."""
    fields = fields_of(element)
    code = (element.get("Код") or text_of(fields.get("Код"))).strip()
    if not code:
        return None
    known = OKEI.get(code)  # UT 11 writes no short name: «шт», not the international «PCE», is what a shop shows
    full = (element.get("НаименованиеПолное") or text_of(fields.get("НаименованиеПолное"))).strip()
    short = (element.get("НаименованиеКраткое") or text_of(fields.get("НаименованиеКраткое")) or text_of(element)
             or (known.name if known else "") or element.get("МеждународноеСокращение") or full or code).strip()
    return {"id": code, "name": short, "code": code, "description": full or (known.full_name if known else None)}


def _barcodes(element) -> str | None:
    """Barcodes as JSON in MoySklad's shape, [{"ean13": "..."}], which the ICML renderer reads."""
    codes = []
    for barcode in element.iterchildren(*BARCODES):
        for value in (barcode.text or "").strip().replace(";", ",").split(","):
            value = value.strip()
            if value:
                digits = value.isdigit()
                kind = "ean13" if digits and len(value) == 13 else "ean8" if digits and len(value) == 8 else "code128"
                quoted = f'"{value}"' if digits else encode_basestring(value)
                codes.append(f'{{"{kind}": {quoted}}}')
    return f"[{', '.join(codes)}]" if codes else None


def _has_barcode(fields: dict) -> bool:
    return any(name in fields for name in BARCODE_NAMES)


def _characteristics(element) -> str:
    values = []
    for entry in all_named(element, "ХарактеристикаТовара"):
        fields = fields_of(entry)
        name = text_of(fields.get("Наименование"))
        if name:
            values.append({"name": name, "value": text_of(fields.get("Значение"))})
    return json.dumps(values, ensure_ascii=False)


@functools.lru_cache(maxsize=1024)
def _requisite_id(name: str) -> str:
    return f"requisite:{name}"


@functools.cache
def _offer_columns(article: bool, barcodes: bool, characteristics: bool) -> tuple[str, ...]:
    """The columns of an offers file's Предложение: these always, the others when it holds them."""
    return ("id", "product_id", "kind", "name", "external_code", "archived", "updated",
            *(("article",) if article else ()), *(("barcodes",) if barcodes else ()),
            *(("characteristics",) if characteristics else ()))


def _first_group(fields: dict) -> str | None:
    """The card's category: the first Группы/Ид (the feed has one category per offer)."""
    groups = fields.get("Группы")
    if groups is not None:
        for child in groups.iterchildren(ID):
            return (child.text or "").strip() or None
    return None


class RecordBatch:
    """Rows of BATCH records (tuples of the columns above), sent to the writing process together and written there."""

    def __init__(self):
        self.categories: list[tuple] = []  # CATEGORY_COLUMNS
        self.products: list[tuple] = []  # CARD_COLUMNS
        self.variant_cards: list[tuple] = []  # CARD_COLUMNS; written unless this run already wrote the card
        self.missing_cards: list[tuple] = []  # OFFER_CARD_COLUMNS; see _write_cards
        self.touched: list[str] = []  # offers a prices or rests file refers to without rewriting them
        self.offers: dict[tuple, list[tuple]] = {}  # by columns: an offers file sets fewer of them
        self.children: dict[str, tuple[list, list]] = {t: ([], []) for t in CHILD_COLUMNS}  # CHILD_COLUMNS[t]
        # (record number, owner, path in the file, uploaded file) of every picture the records name, in order: the
        # writer checks them, puts them into the images folder and writes their rows (images, image_cache)
        self.pictures: list[tuple[int, str, str, str]] = []
        self.updated: str | None = None  # the file's ДатаФормирования, which the picture rows carry
        self.started = utc_now()  # when its pictures were fetched, as the picture cache records it

    def offer(self, columns: tuple[str, ...], row: tuple) -> None:
        self.offers.setdefault(columns, []).append(row)

    def replace(self, table: str, owner_id: str, rows: list[tuple]) -> None:
        """The owner's rows of ``table`` become exactly ``rows``."""
        owners, all_rows = self.children[table]
        owners.append(owner_id)
        all_rows.extend(rows)


@dataclass
class FileSummary:
    """What the whole file says once read: its kind, sections, reference lists and units."""

    kind: str
    full: dict[str, bool]
    listed: set[str]
    references: dict[str, list]
    units: dict[str, dict]
    root_attributes: dict[str, str]  # of КоммерческаяИнформация: ВерсияСхемы, ДатаФормирования, ...
    counts: Counter = field(default_factory=Counter)
    peak_rss_mb: float = 0.0
    cpu_seconds: float = 0.0
    properties: dict[str, tuple[str, dict]] = field(default_factory=dict)  # the classifier's Свойства this file defined


class CatalogParser:
    """Reads one document record by record and hands its rows, a :class:`RecordBatch` at a time, to the writer."""

    def __init__(self, path: Path, upload_dir: Path, known_properties: dict | None = None):
        self.outbox: list[tuple] = []  # messages for the writer, handed out after each record
        self.path = path
        self.upload_dir = upload_dir.resolve()
        self.upload_prefix = str(self.upload_dir) + os.sep
        self.batch = RecordBatch()
        self.counts: Counter = Counter()
        self.checked = False
        self.updated: str | None = None
        self.full: dict[str, bool] = {}  # the sections the file has: lists everything (True) or changes
        self.listed: set[str] = set()  # Товары / Предложения present: only then may a full section reconcile
        self.shapes = {"named": 0, "priced": 0, "stocked": 0}
        # property id → (name, {value id: text}): an earlier file's classifier (1C 2.08+ sends it in a file of its
        # own), then this file's, which wins
        self.properties: dict[str, tuple[str, dict]] = dict(known_properties or {})
        self.defined: dict[str, tuple[str, dict]] = {}
        self.units: dict[str, dict] = {}
        self.references: dict[str, list] = {"price_types": [], "warehouses": []}
        self.records = 0
        self.root_attributes: dict[str, str] = {}
        self.handlers = {
            "Группа": self._group, "Свойство": self._property, "ТипЦены": self._price_type, "Склады": self._warehouses,
            "ЕдиницаИзмерения": self._unit_of_measure, "Товар": self._good, "Предложение": self._offer,
            "Классификатор": self._section, "Каталог": self._section, "ПакетПредложений": self._section,
            CHANGES_PACKAGE: self._section,
        }

    # parsing

    def parse(self) -> Iterator[tuple]:
        """Read the file, yielding messages for the writer as they are ready; return its summary."""
        try:
            self._refuse_doctype()
            events = etree.iterparse(str(self.path), events=("end",), tag=[f"{{*}}{t}" for t in EVENT_TAGS],
                                     resolve_entities=False, no_network=True, huge_tree=True, load_dtd=False,
                                     remove_blank_text=True)
            for _, element in events:
                if not self.checked:
                    self._check_document(element)
                self._end(element)
                if self.outbox:
                    yield from self.outbox
                    self.outbox.clear()
        except etree.XMLSyntaxError as exc:
            raise CommerceMLError(f"Файл {self.path.name}: XML повреждён в строке {exc.lineno}: {exc.msg}") from None
        except OSError as exc:
            raise CommerceMLError(f"Файл {self.path.name} не удалось прочитать: {exc.strerror or exc}") from None
        summary = self.finish()
        yield from self.outbox
        return summary

    def _refuse_doctype(self) -> None:
        """Refuse a DOCTYPE before lxml reads it: its entities could read local files or explode in size."""
        with open(self.path, "rb") as handle:
            head = handle.read(PROLOG_BYTES)
        if doctype_in_prolog(head):
            raise CommerceMLError(f"Файл {self.path.name}: {DOCTYPE_REFUSED}")

    def _check_document(self, element) -> None:
        """The root is КоммерческаяИнформация, and no DOCTYPE slipped past :meth:`_refuse_doctype` (one
        after 64 KB of comments, or in UTF-16); checked at the first record, before any is read."""
        tree = element.getroottree()
        problem = document_problem(tree, self.path.name)
        if problem:
            raise CommerceMLError(problem)
        root = tree.getroot()
        self.updated = root.get("ДатаФормирования")
        # what the sender says of itself (MoySklad: СинхронизацияТоваров, which no public file shows): logged
        self.root_attributes = {local_name(k)[:40]: v[:100] for k, v in list(root.attrib.items())[:ROOT_ATTRIBUTES_KEPT]}
        self.checked = True

    def _end(self, element) -> None:
        """Read a record whose end tag has arrived, then free it and what came before it."""
        handler = self.handlers.get(local_name(element.tag))
        if handler is None or not handler(element):
            return
        element.clear(keep_tail=False)
        parent = element.getparent()
        while element.getprevious() is not None:
            del parent[0]

    def _counted(self, key: str) -> None:
        """One record read: count it, and every BATCH records write the buffers and report progress."""
        self.counts[key] += 1
        self.records += 1
        if self.records % BATCH == 0:
            self._send_batch()

    def _send_batch(self) -> None:
        self.batch.updated = self.updated
        self.outbox.append(("batch", self.batch, self.records))
        self.batch = RecordBatch()

    def _skip(self, item_type: str, item_id: str | None, name: str | None, reason: str) -> None:
        """An item left out; it comes before the next batch's pictures from this one on, which the writer checks
        (and may refuse) when that batch arrives."""
        self.outbox.append(("skip", (item_type, item_id, name, reason), len(self.batch.pictures)))

    # records

    def _section(self, element) -> bool:
        """Классификатор, Каталог, ПакетПредложений: complete or changes only, and the owner's name."""
        if not parent_is(element, ROOT_TAG):
            return False
        fields = fields_of(element)
        section = local_name(element.tag)
        if section == CHANGES_PACKAGE:  # always changes only: it never takes away what it does not list
            self.full["ПакетПредложений"] = self.full.get("ПакетПредложений", False)
        else:
            self.full[section] = _full(element)
        for rows in self.references.values():  # the section's price types and warehouses, read before its end
            for row in rows:
                row.setdefault("full", section != CHANGES_PACKAGE and self.full[section])
        self.listed.update(name for name in ("Товары", "Предложения") if name in fields)
        owner = text_of(fields_of(fields["Владелец"]).get("Наименование")) if "Владелец" in fields else ""
        if owner:
            self.outbox.append(("setting", ("company", owner)))
        return True

    def _group(self, element) -> bool:
        parent = element.getparent()
        if not parent_is(element, "Группы") or local_name(parent.getparent().tag) not in ("Классификатор", "Группа"):
            return False
        fields = fields_of(element)
        group_id, name = text_of(fields.get("Ид")), text_of(fields.get("Наименование"))
        if not group_id or not name:
            self._skip("group", group_id, name, "у группы нет Ид" if not group_id else "у группы нет наименования")
            return True
        above = parent.getparent()
        parent_id = text_of(fields_of(above).get("Ид")) or None if local_name(above.tag) == "Группа" else None
        self.batch.categories.append((group_id, name, group_id, _deleted(element, fields), parent_id, self.updated))
        self._counted("groups")
        return True

    def _property(self, element) -> bool:
        if not parent_is(element, "Свойства"):
            return False
        fields = fields_of(element)
        property_id, name = text_of(fields.get("Ид")), text_of(fields.get("Наименование"))
        if property_id and name:
            options = {}
            for option in all_named(fields.get("ВариантыЗначений"), "Справочник"):
                option_fields = fields_of(option)
                options[text_of(option_fields.get("ИдЗначения"))] = text_of(option_fields.get("Значение"))
            self.properties[property_id] = self.defined[property_id] = (name, options)
            self.counts["properties"] += 1
        return True

    def _price_type(self, element) -> bool:
        return self._reference(element, "ТипыЦен", "price_types", "тип цены")

    def _warehouses(self, element) -> bool:
        """Each Склад of a Склады list; the list itself stays (clearing it would drop its section's fields)."""
        for child in element:
            if local_name(child.tag) == "Склад":
                self._reference(child, "Склады", "warehouses", "склад")
        return False

    def _reference(self, element, container: str, table: str, what: str) -> bool:
        """Price types and warehouses: small lists, written once the file is read."""
        if not parent_is(element, container):
            return False  # a Склад inside an offer is its stock, read with the offer
        fields = fields_of(element)
        item_id, name = text_of(fields.get("Ид")), text_of(fields.get("Наименование"))
        if not item_id or not name:
            self._skip(table, item_id, name, f"{what}: нет Ид или наименования")
            return True
        rows = self.references[table]
        extra = {"position": len(rows), "currency": text_of(fields.get("Валюта")) or None} if table == "price_types" else {}
        rows.append({"id": item_id, "name": name, "external_code": item_id, **extra})  # "full": at the section's end
        return True

    def _unit_of_measure(self, element) -> bool:
        if not parent_is(element, "ЕдиницыИзмерения"):
            return False
        unit = _unit(element)
        if unit:
            self.units[unit["id"]] = unit
        return True

    def _good(self, element) -> bool:
        """A Товар: a product card and its base offer, or (Ид 'product#characteristic') a variant."""
        if not parent_is(element, "Товары", "Каталог"):
            return False
        fields = fields_of(element)
        item_id, name = text_of(fields.get("Ид")), text_of(fields.get("Наименование"))
        try:
            if not item_id:
                raise Malformed("у товара нет Ид")
            if not name:
                raise Malformed("у товара нет наименования")
            product_id, _, characteristic = item_id.partition("#")
            if not product_id:
                raise Malformed("Ид товара начинается с «#»: нет Ид карточки")
            requisites = requisite_pairs(fields.get("ЗначенияРеквизитов"))
            code, article = text_of(fields.get("Код")) or None, text_of(fields.get("Артикул")) or None
            archived = _deleted(element, fields)
            kind = "variant" if characteristic else _good_kind(requisites)
            # a variant marked deleted does not archive its product
            card = self._card(product_id, "product" if characteristic else kind, name, code, article,
                              0 if characteristic else archived, fields, requisites)
        except Malformed as exc:
            self._skip("product", item_id, name, str(exc))
            return True
        barcodes = _barcodes(element) if _has_barcode(fields) else None
        characteristics = _characteristics(fields.get("ХарактеристикиТовара")) if characteristic else None
        (self.batch.variant_cards if characteristic else self.batch.products).append(card)
        self.batch.offer(GOOD_OFFER_COLUMNS, (item_id, product_id, kind, name, code,
                                              article, item_id, barcodes, characteristics, archived, self.updated))
        self.batch.replace("attributes", item_id, self._attributes(item_id, fields, requisites))
        self.batch.replace("images", item_id, [])
        if "Картинка" in fields:
            self._pictures(item_id, element)
        self._counted("goods")
        return True

    def _card(self, product_id: str, kind: str, name: str, code: str | None, article: str | None, archived: int,
              fields: dict, requisites: list[tuple[str, str]]) -> tuple:
        """The product card of a Товар, as CARD_COLUMNS."""
        unit = self._unit_id(fields)
        vat, vat_enabled = _vat(fields.get("СтавкиНалогов"))
        # the «Вес» requisite (1C), else a <Вес> element of the good (some 2.10 exports)
        weight = next((value for key, value in requisites if key == "Вес"), None) or text_of(fields.get("Вес"))
        return (product_id, kind, name, code, article, product_id, _first_group(fields),
                text_of(fields.get("Описание")) or None, unit, vat, vat_enabled,
                float(parse_decimal(weight, "вес")) if weight else None, archived, self.updated, 0)

    def _offer(self, element) -> bool:
        """A Предложение: offer data, prices and stock, whichever of them the file carries."""
        if not (parent_is(element, "Предложения", "ПакетПредложений") or parent_is(element, "Предложения", CHANGES_PACKAGE)):
            return False
        fields = fields_of(element)
        item_id, name = text_of(fields.get("Ид")), text_of(fields.get("Наименование"))
        if item_id and "ИдХарактеристики" in fields:  # a changes package names the characteristic apart
            item_id = f"{item_id}#{text_of(fields['ИдХарактеристики'])}"
        try:
            if not item_id or item_id.startswith("#"):
                raise Malformed("у предложения нет Ид товара")
            prices = self._prices(item_id, fields.get("Цены"))
            stock = self._stock(item_id, element, fields)
        except Malformed as exc:
            self._skip("offer", item_id, name, str(exc))
            return True
        if name:
            self._offer_row(item_id, name, element, fields)
        else:
            self.batch.touched.append(item_id)
        if prices is not None:
            self.batch.replace("prices", item_id, prices)
        if stock is not None:
            self.batch.replace("stock", item_id, stock)
        self.shapes["named"] += bool(name)
        self.shapes["priced"] += prices is not None
        self.shapes["stocked"] += stock is not None
        self._counted("offers")
        return True

    def _offer_row(self, item_id: str, name: str, element, fields: dict) -> None:
        """The offer itself, setting only what the Предложение holds, and a card if its product has none."""
        product_id, _, characteristic = item_id.partition("#")
        row = [item_id, product_id, "variant" if characteristic else "product", name, item_id, _deleted(element, fields),
               self.updated]
        if "Артикул" in fields:
            row.append(text_of(fields["Артикул"]) or None)
        if has_barcode := _has_barcode(fields):
            row.append(_barcodes(element))
        if "ХарактеристикиТовара" in fields:
            row.append(_characteristics(fields["ХарактеристикиТовара"]))
        columns = _offer_columns("Артикул" in fields, has_barcode, "ХарактеристикиТовара" in fields)
        self.batch.offer(columns, tuple(row))
        self.batch.missing_cards.append((product_id, "product", name, product_id, _first_group(fields),
                                         self._unit_id(fields), self.updated, 1))
        if "ЗначенияСвойств" in fields:
            self.batch.replace("attributes", item_id, self._attributes(item_id, fields, []))
        if "Картинка" in fields:
            self.batch.replace("images", item_id, [])
            self._pictures(item_id, element)

    def _prices(self, offer_id: str, prices) -> list[tuple] | None:
        if prices is None:
            return None
        rows = []
        for price in prices.iterchildren(PRICE):
            type_id = next(price.iterchildren(PRICE_TYPE_ID), None)  # the first of each, as fields_of reads them
            type_id = (type_id.text or "").strip() if type_id is not None else ""
            if not type_id:
                raise Malformed("у цены нет ИдТипаЦены")
            value = next(price.iterchildren(PRICE_VALUE), None)
            rows.append((offer_id, type_id, _kopecks((value.text or "").strip() if value is not None else "")))
        return rows

    def _stock(self, offer_id: str, element, fields: dict) -> list[tuple] | None:
        """Stock in any of its three shapes: per warehouse when given, else the total (warehouse '')."""
        per_warehouse, total = [], None
        for store in element.iterchildren(WAREHOUSE, WAREHOUSES):  # 2.07: <Склад ИдСклада=.. КоличествоНаСкладе=../>;
            warehouse_id = store.get("ИдСклада")  # a changes package: <Склады ИдСклада=.. КоличествоНаСкладе=../>
            if warehouse_id:
                per_warehouse.append((warehouse_id.strip(), _quantity((store.get("КоличествоНаСкладе") or "").strip())))
        for rest in all_named(fields.get("Остатки"), "Остаток"):  # 2.09+: <Остатки><Остаток><Склад><Ид/><Количество/>
            rest_fields = fields_of(rest)
            if "Склад" in rest_fields:
                store_fields = fields_of(rest_fields["Склад"])
                per_warehouse.append((text_of(store_fields.get("Ид")), _quantity(text_of(store_fields.get("Количество")))))
            elif "Количество" in rest_fields:
                total = (total or 0.0) + _quantity(text_of(rest_fields["Количество"]))
        if "Количество" in fields:
            total = _quantity(text_of(fields["Количество"]))
        if per_warehouse:
            return [(offer_id, w, q) for w, q in per_warehouse]
        if total is not None:
            return [(offer_id, "", total)]
        return None

    def _unit_id(self, fields: dict) -> str | None:
        """The card's unit (its OKEI code); the first sight of a code adds it to the units. 1C 2.09+ writes the code
        alone (<БазоваяЕдиница>796</БазоваяЕдиница>): a unit its classifier's ЕдиницыИзмерения lists, in this file
        or an earlier one."""
        element = fields.get("БазоваяЕдиница")
        if element is None:
            return None
        code = (element.get("Код") or "").strip()
        if code in self.units:
            return code
        if not code and text_of(element).isdigit():
            return text_of(element)
        unit = _unit(element)
        if unit:
            self.units[unit["id"]] = unit
        return unit["id"] if unit else None

    def _attributes(self, owner_id: str, fields: dict, requisites: list[tuple[str, str]]) -> list[tuple]:
        """Property values (reference values resolved to their text), requisites and the manufacturer."""
        rows = []
        values = fields.get("ЗначенияСвойств")
        names, properties = LOCAL_NAMES, self.properties
        for value in () if values is None else values.iterchildren(PROPERTY_VALUE):
            property_id, texts = "", []
            for child in value:
                tag = child.tag
                local = names.get(tag) or local_name(tag)
                if local == "Ид":
                    property_id = (child.text or "").strip()
                elif local == "Значение":
                    text = (child.text or "").strip()
                    if text:
                        texts.append(text)
            if not texts:
                continue
            if property_id not in properties:
                self.counts["unknown_property_values"] += 1
                continue
            name, options = properties[property_id]
            rows.append((owner_id, property_id, name, "property",
                         options.get(texts[0], texts[0]) if len(texts) == 1 else ", ".join([options.get(t, t) for t in texts])))
        if "ПолноеНаименование" in fields and all(key != "Полное наименование" for key, _ in requisites):
            requisites = [*requisites, ("Полное наименование", text_of(fields["ПолноеНаименование"]))]
        for name, text in requisites:
            if name and text and name not in TECHNICAL_REQUISITES:
                rows.append((owner_id, _requisite_id(name), name, "requisite", text))
        maker = text_of(fields_of(fields["Изготовитель"]).get("Наименование")) if "Изготовитель" in fields else ""
        if maker:
            rows.append((owner_id, "manufacturer", "Изготовитель", "requisite", maker))
        return rows

    # pictures

    def _pictures(self, owner_id: str, element) -> None:
        """The pictures of a record, for the writer to check and place (see RecordBatch.pictures): its picture
        thread opens the files while this process reads on, and reading is what keeps a core busy."""
        for picture in element.iterchildren(PICTURE):
            relative = (picture.text or "").strip().replace("\\", "/")
            if not relative:
                continue
            if relative.startswith((".", "/")) or "/." in relative or "//" in relative or relative.endswith("/"):
                source = os.path.normpath(os.path.join(self.upload_prefix, relative))
                if not source.startswith(self.upload_prefix):
                    self._skip("picture", owner_id, relative, "путь картинки ведёт за пределы папки обмена")
                    continue
            else:  # no '.', '..' or empty segment and not absolute: what normpath would make of it, for less
                source = self.upload_prefix + relative
            self.batch.pictures.append((self.records, owner_id, relative, source))

    # the end of the file

    def finish(self) -> FileSummary:
        """Send what is buffered; the summary tells the writer what else the file means."""
        kind = self._kind()
        self._send_batch()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return FileSummary(kind, self.full, self.listed, self.references, self.units, self.root_attributes, self.counts,
                           usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, self.defined)

    def _kind(self) -> str:
        """What the file is, by content: a Каталог makes an import; a package of offers is offers, prices or rests."""
        if "Каталог" in self.full:
            return "import"
        if "ПакетПредложений" in self.full:
            shapes = self.shapes
            if shapes["named"] or not shapes["priced"] and not shapes["stocked"]:
                return "offers"
            if not shapes["stocked"]:
                return "prices"
            return "rests" if not shapes["priced"] else "offers"
        if "Классификатор" in self.full:
            return "import"
        raise CommerceMLError(f"Файл {self.path.name}: в нём нет ни классификатора, ни каталога, ни пакета "
                              "предложений (ни изменений пакета предложений); это не файл каталога (файлы заказов "
                              "загружаются через type=sale)")


def parse_catalog_file(path: Path, upload_dir: Path, known_properties: dict | None = None) -> Iterator[tuple]:
    """The parser as a generator function for :func:`core.child_process.run_in_child`."""
    return (yield from CatalogParser(path, upload_dir, known_properties).parse())

"""Orders over CommerceML: the document ``type=sale&mode=query`` answers, and the status documents 1C sends back.

:func:`render_orders` (store rows → bytes) and :func:`parse_status_document` (bytes → changes) are
pure; :func:`apply_status_document` puts the changes of one document in the store, all or nothing.
Three formats (``exchange.orders_format``): CommerceML 2.05 in windows-1251 (1C 8.3 refuses UTF-8
without a BOM), 2.05 in UTF-8 with a BOM, and 3.1 (UTF-8 with a BOM, each order in a
``<Контейнер>``, as the 1C-Bitrix module 6.5+ wants). Elements follow the order of the 2.08 schema,
which the 2.05 documents 1C reads are a subset of. A character windows-1251 lacks becomes a
character reference (``&#128512;``); characters XML forbids are dropped.

Status documents are read like catalog files (:mod:`exchange.cml`): namespace-agnostic,
no DOCTYPE, no entities, no network, BOM and windows-1251; being small they are parsed whole.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sqlite3
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from lxml import etree

from core.clock import MOSCOW, moscow_now, utc_now
from core.money import money
from core.settings import ExchangeSettings
from core.units import PIECE, Unit, okei_unit
from exchange.cml import (
    DOCTYPE_REFUSED,
    PROLOG_BYTES,
    ROOT_TAG,
    all_named,
    doctype_in_prolog,
    document_problem,
    fields_of,
    local_name,
    requisite_pairs,
    text_of,
)
from exchange.sessions import ExchangeSession, Refused, files_summary
from exchange.uploads import UploadError, receive, target_path
from store import CatalogStore, ExchangeLog, StoreBusy, open_catalog

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"
MAX_STATUS_BYTES = 32 * 1024 * 1024
# Attributes a Bitrix site puts on the root of its query answer (see the shared fixture): how 1C
# reads dates and numbers. The 2.08 schema does not declare them; every 1C that reads Bitrix does.
FORMAT_ATTRIBUTES = {"ФорматДаты": "ДФ=yyyy-MM-dd; ДЛФ=DT", "ФорматВремени": "ДФ=ЧЧ:мм:сс; ДЛФ=T",
                     "РазделительДатаВремя": "T", "ФорматСуммы": "ЧЦ=18; ЧДЦ=2; ЧРД=.",
                     "ФорматКоличества": "ЧЦ=18; ЧДЦ=2; ЧРД=."}
CURRENCIES = {"RUB": "руб"}  # what 1C calls the rouble in exchange documents
# Stable ids of customers (Контрагент/Ид), so 1C finds the same counterparty in every exchange.
CUSTOMER_NAMESPACE = uuid.UUID("6f1c2a54-9f3e-4c55-9a43-1d2b8e6c0a17")
XML_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Requisites of a status document, by normalised name, and what each becomes.
STATUS_REQUISITES = {"статус заказа": ("status", "text"), "дата оплаты по 1с": ("paid_at", "date"),
                     "дата отгрузки по 1с": ("shipped_at", "date"), "проведен": ("posted", "flag"),
                     "пометкаудаления": ("deleted", "flag"), "пометка удаления": ("deleted", "flag"),
                     "отменен": ("cancelled", "flag")}
# Flags many 1C configurations send instead of (or beside) those two dates, and the date each one stands for.
DONE_FLAGS = {"оплачен": "paid_at", "отгружен": "shipped_at"}
# Of the payment and shipment documents a 3.1 container may hold, only these dates concern the order.
SUBORDINATE_REQUISITES = ("дата оплаты по 1с", "дата отгрузки по 1с")
ORDER_OPERATION = "заказ товара"
CATALOG_SECTIONS = ("Классификатор", "Каталог", "ПакетПредложений", "ИзмененияПакетаПредложений")
TRUE_WORDS = ("true", "да", "1", "yes")
FALSE_WORDS = ("false", "нет", "0", "no", "")
# An empty date as 1C writes it: date and time left blank around the «T» that joins them.
EMPTY_DATES = ("", "T")
DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y")


@dataclass(frozen=True)
class OrderFormat:
    """How one ``exchange.orders_format`` writes the query answer."""

    version: str
    encoding: str
    bom: bool
    containers: bool

    @property
    def content_type(self) -> str:
        return f"text/xml; charset={self.encoding.lower()}"


FORMATS = {
    "2.05-cp1251": OrderFormat("2.05", "windows-1251", bom=False, containers=False),
    "2.05-utf8": OrderFormat("2.05", "UTF-8", bom=True, containers=False),
    "3.1": OrderFormat("3.1", "UTF-8", bom=True, containers=True),
}


# --- the query answer -------------------------------------------------------------------------------

def render_orders(orders: list[dict], fmt: str, generated: dt.datetime) -> bytes:
    """The CommerceML document with these orders (store rows with their ``items``), encoded for ``fmt``."""
    spec = FORMATS[fmt]
    root = etree.Element(ROOT_TAG, {"ВерсияСхемы": spec.version,
                                    "ДатаФормирования": generated.strftime("%Y-%m-%dT%H:%M:%S"), **FORMAT_ATTRIBUTES})
    for order in orders:
        parent = etree.SubElement(root, "Контейнер") if spec.containers else root
        parent.append(_document(order))
    declaration = f'<?xml version="1.0" encoding="{spec.encoding}"?>\n'.encode("ascii")
    body = etree.tostring(root, encoding=spec.encoding, xml_declaration=False, pretty_print=True)
    return (BOM if spec.bom else b"") + declaration + body


def _document(order: dict) -> etree._Element:
    """One order as a Документ «Заказ товара» in the order of the schema's sequence."""
    moment = dt.datetime.fromisoformat(order["ordered_at"])
    if moment.tzinfo:  # an order stored before dates were kept on Moscow wall clock
        moment = moment.astimezone(MOSCOW)
    doc = etree.Element("Документ")
    _fields(doc, [("Ид", order["number"]), ("Номер", order["number"]), ("Дата", moment.strftime("%Y-%m-%d")),
                  ("ХозОперация", "Заказ товара"), ("Роль", "Продавец"),
                  ("Валюта", CURRENCIES.get(order["currency"], order["currency"])), ("Курс", order["currency_rate"]),
                  ("Сумма", money(order["total"]))])
    etree.SubElement(doc, "Контрагенты").append(_customer(order))
    _sub(doc, "Время", moment.strftime("%H:%M:%S"))
    if order["comment"]:
        _sub(doc, "Комментарий", order["comment"])
    _taxes(doc, order["items"])
    goods = etree.SubElement(doc, "Товары")
    for item in order["items"]:
        goods.append(_good(item, line_unit(item, order["catalog_units"].get(item["offer_id"]))))
    requisites = [("Метод оплаты", order["payment_method"]), ("Заказ оплачен", _flag(order["paid"])),
                  ("Способ доставки", order["shipping_method"]), ("Адрес доставки", order["customer_address"]),
                  ("Контактное лицо", order["customer_name"] if order["company_name"] else None),
                  ("Статус заказа", order["status"]), ("Отменен", _flag(order["cancelled"]))]
    _pair_list(doc, "ЗначенияРеквизитов", [(name, value) for name, value in requisites if value])
    return doc


def _customer(order: dict) -> etree._Element:
    """The buyer: a company by its requisites (ИНН/КПП), or a person; contacts and address either way."""
    agent = etree.Element("Контрагент")
    company = order["company_name"]
    _sub(agent, "Ид", str(customer_id(order)))
    _sub(agent, "Наименование", company or order["customer_name"])
    if company:
        _sub(agent, "ОфициальноеНаименование", company)
        _sub(agent, "ИНН", order["company_inn"])
        if order["company_kpp"]:
            _sub(agent, "КПП", order["company_kpp"])
    else:
        _sub(agent, "ПолноеНаименование", order["customer_name"])
        if order["customer_address"]:  # where a Bitrix site puts a person's address, and 1C reads it
            _sub(etree.SubElement(agent, "АдресРегистрации"), "Представление", order["customer_address"])
    if company and order["customer_address"]:  # not the legal address: a delivery address is no requisite
        _sub(etree.SubElement(agent, "Адрес"), "Представление", order["customer_address"])
    _pair_list(agent, "Контакты", [(kind, value) for kind, value in (("Почта", order["customer_email"]),
                                                                    ("Телефон рабочий", order["customer_phone"])) if value])
    _sub(agent, "Роль", "Покупатель")
    return agent


def customer_id(order: dict) -> uuid.UUID:
    """The same buyer gets the same id: by ИНН/КПП, else e-mail, else phone digits, else the order."""
    if order["company_inn"]:
        key = f"inn:{order['company_inn']}:{order['company_kpp'] or ''}"
    elif order["customer_email"]:
        key = f"email:{order['customer_email'].lower()}"
    elif order["customer_phone"]:
        key = "phone:" + re.sub(r"\D", "", order["customer_phone"])
    else:
        key = f"order:{order['number']}"
    return uuid.uuid5(CUSTOMER_NAMESPACE, key)


def line_unit(item: dict, catalog_unit: dict | None) -> Unit:
    """What the line's quantity counts: the unit the shop gave, else the good's in the catalog, else шт
    (0.5 of a good sold by the kilogram must not reach 1C as half a piece)."""
    return (okei_unit(item["unit_code"], item["unit_name"])
            or (okei_unit(catalog_unit["code"], catalog_unit["name"], catalog_unit["description"]) if catalog_unit else None)
            or PIECE)


def _good(item: dict, unit: Unit) -> etree._Element:
    """A line: a product or service (the delivery is the service ORDER_DELIVERY), VAT and discount included in its sum."""
    good = etree.Element("Товар")
    _sub(good, "Ид", item["offer_id"])
    _sub(good, "Наименование", item["name"])
    known = {"Код": unit.code, "НаименованиеПолное": unit.full_name and unit.full_name[:255],
             "МеждународноеСокращение": unit.international}
    _sub(good, "БазоваяЕдиница", unit.name, {key: XML_FORBIDDEN.sub("", value) for key, value in known.items() if value})
    kind = "Товар" if item["kind"] == "product" else "Услуга"
    _pair_list(good, "ЗначенияРеквизитов", [("ВидНоменклатуры", kind), ("ТипНоменклатуры", kind)])
    _sub(good, "ЦенаЗаЕдиницу", money(item["price"]))
    _sub(good, "Количество", item["quantity"])
    _sub(good, "Сумма", money(item["amount"]))
    if item["vat"] is not None:
        _fields(etree.SubElement(etree.SubElement(good, "Налоги"), "Налог"),
                [("Наименование", "НДС"), ("УчтеноВСумме", "true"), ("Сумма", money(vat_amount(item))),
                 ("Ставка", "Без НДС" if item["vat"] == "none" else item["vat"])])
    if item["discount"]:
        _fields(etree.SubElement(etree.SubElement(good, "Скидки"), "Скидка"),
                [("Наименование", "Скидка на товар"), ("Сумма", money(item["discount"])), ("УчтеноВСумме", "true")])
    return good


def _taxes(doc, items: list[dict]) -> None:
    """The document's VAT, one Налог per rate: the sum of its lines' VAT."""
    rates: dict[str, int] = {}
    for item in items:
        if item["vat"] not in (None, "none"):
            rates[item["vat"]] = rates.get(item["vat"], 0) + vat_amount(item)
    if not rates:
        return
    taxes = etree.SubElement(doc, "Налоги")
    for rate, amount in rates.items():
        _fields(etree.SubElement(taxes, "Налог"),
                [("Наименование", "НДС"), ("УчтеноВСумме", "true"), ("Сумма", money(amount)), ("Ставка", rate)])


def vat_amount(item: dict) -> int:
    """VAT included in a line's sum, in kopecks: sum × rate / (100 + rate), rounded half up."""
    if item["vat"] in (None, "none"):
        return 0
    rate = Decimal(item["vat"])
    return int((Decimal(item["amount"]) * rate / (100 + rate)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


# The entry element and its two fields of each list of pairs a document has.
PAIR_LISTS = {"ЗначенияРеквизитов": ("ЗначениеРеквизита", "Наименование", "Значение"),
              "Контакты": ("Контакт", "Тип", "Значение")}


def _pair_list(parent, listing: str, pairs: list[tuple[str, str]]) -> None:
    """Requisites or contacts, one entry of two fields per pair; an empty list is left out (the schema wants one)."""
    if not pairs:
        return
    entry, first, second = PAIR_LISTS[listing]
    block = etree.SubElement(parent, listing)
    for key, value in pairs:
        _fields(etree.SubElement(block, entry), [(first, key), (second, value)])


def _fields(element, pairs: list[tuple[str, str]]) -> None:
    """Child elements in the order given, the order the schema's sequence wants."""
    for tag, text in pairs:
        _sub(element, tag, text)


def _sub(parent, tag: str, text: str, attrib: dict | None = None) -> etree._Element:
    element = etree.SubElement(parent, tag, attrib or {})
    element.text = XML_FORBIDDEN.sub("", text)
    return element



def _flag(value) -> str:
    return "true" if value else "false"


# --- status documents coming back -------------------------------------------------------------------

class StatusDocumentError(Exception):
    """A status document is refused as a whole; the message (Russian) goes back to 1C, nothing is applied."""


class IncompleteDocument(StatusDocumentError):
    """The document ends before its root closes: a chunk of a split upload, or a truncated file."""


@dataclass
class OrderUpdate:
    """What one document says about one order: values only for the requisites it carries."""

    number: str
    document_id: str
    values: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)  # values that count only while the order has none recorded


@dataclass
class StatusDocument:
    """The order updates of one file, and the documents in it that concern no order of ours, with why."""

    updates: list[OrderUpdate]
    ignored: list[str]


def parse_status_document(data: bytes, name: str) -> StatusDocument:
    """Read a document 1C or MoySklad sends with type=sale&mode=file; StatusDocumentError when it cannot be used."""
    if len(data) > MAX_STATUS_BYTES:
        raise StatusDocumentError(f"Файл {name}: больше {MAX_STATUS_BYTES} байт — это не документ изменений заказов")
    if not data.removeprefix(BOM).strip():
        raise IncompleteDocument(f"Файл {name} пуст")
    if doctype_in_prolog(data[:PROLOG_BYTES]):
        raise StatusDocumentError(f"Файл {name}: {DOCTYPE_REFUSED}")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
    try:
        parser.feed(data)
    except etree.XMLSyntaxError as exc:
        raise StatusDocumentError(f"Файл {name}: XML повреждён в строке {exc.lineno}: {exc.msg}") from None
    try:
        root = parser.close()
    except etree.XMLSyntaxError as exc:
        raise IncompleteDocument(f"Файл {name}: документ оборван (строка {exc.lineno}: {exc.msg})") from None
    problem = document_problem(root.getroottree(), name)
    if problem:
        raise StatusDocumentError(problem)
    sections = [local_name(child.tag) for child in root if local_name(child.tag) in CATALOG_SECTIONS]
    if sections:
        raise StatusDocumentError(f"Файл {name}: это файл каталога («{sections[0]}»), а не документы заказов; "
                                  "каталог загружается через type=catalog")
    result = StatusDocument([], [])
    written = _written_at(root) or moscow_now().isoformat(timespec="seconds")
    for child in root:
        tag = local_name(child.tag)
        if tag == "Документ":
            _read_unit(name, [child], result, written)
        elif tag == "Контейнер":
            _read_unit(name, all_named(child, "Документ"), result, written)
    return result


def _written_at(root) -> str | None:
    """When 1C wrote the file (ДатаФормирования, its Moscow wall clock), if it gives the time of day."""
    text = (root.get("ДатаФормирования") or "").strip()
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if "T" not in text and " " not in text:  # a day alone: midnight would be a made-up time
        return None
    if moment.tzinfo:
        moment = moment.astimezone(MOSCOW)
    return moment.replace(tzinfo=None).isoformat(timespec="seconds")


def _read_unit(name: str, documents: list, result: StatusDocument, written: str) -> None:
    """One order document, or one 3.1 container: the order plus its payments and shipments."""
    orders = [doc for doc in documents if _operation(doc) in ("", ORDER_OPERATION)]
    if not orders:
        result.ignored.extend(f"документ «{text_of(fields_of(doc).get('ХозОперация'))}» № "
                              f"{text_of(fields_of(doc).get('Номер'))} без заказа" for doc in documents)
        return
    for doc in orders:
        fields = fields_of(doc)
        number, document_id = text_of(fields.get("Номер")), text_of(fields.get("Ид"))
        if not number and not document_id:
            result.ignored.append("документ заказа без номера и Ид")
            continue
        update = OrderUpdate(number or document_id, document_id)
        shown = f"Файл {name}, заказ № {update.number}"
        _read_flag_elements(fields, update, shown)
        _read_requisites(doc, update, shown, STATUS_REQUISITES)
        if len(orders) == 1:
            for other in documents:
                if other is not doc and _in_force(other, shown):
                    _read_requisites(other, update, shown, {k: STATUS_REQUISITES[k] for k in SUBORDINATE_REQUISITES})
        _read_done_flags(doc, update, shown, written)
        result.updates.append(update)


def _read_flag_elements(fields: dict, update: OrderUpdate, shown: str) -> None:
    """Проведен and ПометкаУдаления written as elements of the document (3.x), not as requisites."""
    for tag in ("Проведен", "ПометкаУдаления"):
        if tag in fields:
            column, kind = STATUS_REQUISITES[tag.lower()]
            update.values[column] = _value(kind, text_of(fields[tag]), shown, tag)


def _in_force(doc, shown: str) -> bool:
    """A payment or shipment document whose dates count: not marked for deletion, and not unposted (a
    payment 1C has not posted, or has taken back, did not happen)."""
    flags = OrderUpdate("", "")
    _read_flag_elements(fields_of(doc), flags, shown)
    _read_requisites(doc, flags, shown, {k: v for k, v in STATUS_REQUISITES.items() if v[0] in ("posted", "deleted")})
    return flags.values.get("posted") != 0 and flags.values.get("deleted") != 1


def _read_done_flags(doc, update: OrderUpdate, shown: str, written: str) -> None:
    """Оплачен / Отгружен: true means paid / shipped at the date the document gives, else at the one recorded,
    else when the file was written; false means not paid / shipped (the date is cleared)."""
    for requisite, value in _requisites(doc):
        column = DONE_FLAGS.get(_normal(requisite))
        if column is None or update.values.get(column):  # a date the document gives says it all
            continue
        if _value("flag", value, shown, requisite):
            update.values.pop(column, None)  # an empty date beside the flag: when is not known
            update.defaults[column] = written
        else:
            update.values[column] = None


def _read_requisites(doc, update: OrderUpdate, shown: str, known: dict) -> None:
    for requisite, value in _requisites(doc):
        target = known.get(_normal(requisite))
        if target:
            update.values[target[0]] = _value(target[1], value, shown, requisite)


def _requisites(doc) -> list[tuple[str, str]]:
    """A document's requisites: in ЗначенияРеквизитов, or right in the Документ as an old 1C variant writes them."""
    return requisite_pairs(fields_of(doc).get("ЗначенияРеквизитов")) + requisite_pairs(doc)


def _operation(doc) -> str:
    return _normal(text_of(fields_of(doc).get("ХозОперация")))


def _normal(name: str) -> str:
    """Requisite names as people type them: any case, ё or е, Latin or Cyrillic С in «1С», extra spaces."""
    return re.sub(r"\s+", " ", name.strip().lower().replace("ё", "е")).replace("1c", "1с")


def _value(kind: str, text: str, shown: str, requisite: str):
    """A requisite's value as the store keeps it; a value that makes no sense refuses the whole document."""
    text = text.strip()
    if kind == "text":
        return text or None
    if kind == "flag":
        lowered = text.lower()
        if lowered in TRUE_WORDS or lowered in FALSE_WORDS:
            return int(lowered in TRUE_WORDS)
        raise StatusDocumentError(f"{shown}: «{requisite}» = «{text}» — ожидалось true или false")
    return _date(text, shown, requisite)


def _date(text: str, shown: str, requisite: str) -> str | None:
    """A 1C date (ISO, or dd.mm.yyyy) as ISO without a zone; 1C's empty dates (0001-01-01, a bare «T»,
    nothing at all) mean none."""
    if text in EMPTY_DATES or text.startswith(("0001-01-01", "01.01.0001")):
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        moment = None
        for pattern in DATE_FORMATS:
            try:
                moment = dt.datetime.strptime(text, pattern)
                break
            except ValueError:
                continue
    if moment is None:
        raise StatusDocumentError(f"{shown}: «{requisite}» = «{text}» — это не дата")
    return moment.replace(tzinfo=None).isoformat(timespec="seconds")


def apply_status_document(store: CatalogStore, data: bytes, name: str, detail: str) -> dict:
    """Parse and apply one status document in one store run; returns its counts and skipped orders."""
    document = parse_status_document(data, name)
    updates = [{"ids": [update.document_id, update.number], "number": update.number, "values": update.values,
                "defaults": update.defaults} for update in document.updates]
    counts = store.apply_order_changes(updates, detail=f"{detail}, file {name}")
    counts["ignored"] = document.ignored
    log.info("exchange: status document %s applied: %s", name,
             {k: v for k, v in counts.items() if k not in ("skipped", "ignored")})
    for reason in counts["skipped"] + document.ignored:
        log.info("exchange: status document %s: %s", name, reason)
    return counts


# --- type=sale steps of an exchange session ---------------------------------------------------------

# Orders are written in short transactions; one waits this long for a catalog import to commit.
ORDERS_WAIT_SECONDS = 60


def query_orders(session: ExchangeSession, store_path: Path, config: ExchangeSettings) -> tuple[bytes, str]:
    """mode=query: the orders 1C has not confirmed, as a CommerceML document, and its content type;
    recorded as this session's latest query."""
    with open_catalog(store_path, wait_seconds=ORDERS_WAIT_SECONDS) as catalog:
        query_id, orders = catalog.start_order_query(session.id, config.orders_format, config.orders_per_query)
    body = render_orders(orders, config.orders_format, moscow_now())
    log.info("exchange session %s: query %s sent %s orders as %s (%s bytes)", session.id, query_id, len(orders),
             config.orders_format, len(body))
    return body, FORMATS[config.orders_format].content_type


def confirm_orders(session: ExchangeSession, store_path: Path) -> None:
    """mode=success: the orders of this session's latest query are in 1C: not sent again (unless changed)."""
    with open_catalog(store_path, wait_seconds=ORDERS_WAIT_SECONDS) as catalog:
        confirmed = catalog.confirm_order_query(session.id)
    if confirmed is None:
        raise Refused("нечего подтверждать: в этом сеансе заказы не выгружались (сначала mode=query)")
    log.info("exchange session %s: 1C confirmed %s orders", session.id, confirmed)


def receive_status_file(session: ExchangeSession, log_store: ExchangeLog, store_path: Path, name: str, stream,
                        declared_length: int | None, config: ExchangeSettings) -> None:
    """mode=file of a status document: stored like any upload, applied as soon as it is complete (as
    Bitrix sites do). 1C splits a file larger than file_limit into chunks of exactly file_limit bytes:
    a document still open after such a chunk waits for the next one (or for mode=import)."""
    if not name.lower().endswith(".xml") or "/" in name:
        raise UploadError(f"файл {name}: в обмене заказами принимаются только документы XML (init отвечает zip=no)")
    path, written = receive(session, name, stream, declared_length, config)
    _apply_status_file(session, log_store, store_path, name, path, more_may_follow=written == config.file_limit)


def import_status_file(session: ExchangeSession, log_store: ExchangeLog, store_path: Path, name: str) -> None:
    """mode=import after mode=file: the outcome of the document, applying it now if it was still waiting."""
    job = session.read_state()["imports"].get(name)
    if job:
        if job["status"] != "ok":
            raise Refused(job["error"])
        return
    path = target_path(session.upload_dir, name)
    if not path.is_file():
        raise Refused(f"файл {name} не был загружен в этом сеансе (сначала mode=file)")
    _apply_status_file(session, log_store, store_path, name, path, more_may_follow=False)


def _apply_status_file(session: ExchangeSession, log_store: ExchangeLog, store_path: Path, name: str, path: Path, *,
                       more_may_follow: bool) -> None:
    """Apply a complete status document in one transaction and log the outcome with the session."""
    try:
        with open_catalog(store_path, wait_seconds=ORDERS_WAIT_SECONDS) as catalog:
            with open(path, "rb") as upload:  # a byte past the limit is enough for parse_status_document to refuse it
                data = upload.read(MAX_STATUS_BYTES + 1)
            job = {"status": "ok", "results": apply_status_document(catalog, data, name, f"session {session.id}")}
    except IncompleteDocument as exc:
        if more_may_follow:
            log.info("exchange session %s: %s is not complete yet, waiting for its next chunk", session.id, name)
            return
        job = {"status": "failed", "error": str(exc)}
    except StatusDocumentError as exc:
        job = {"status": "failed", "error": str(exc)}
    except StoreBusy:
        job = {"status": "failed", "error": "заказы сейчас обновляет другой обмен; повторите обмен позже"}
    except sqlite3.OperationalError as exc:  # recorded, so that the file sent again starts over
        if "locked" not in str(exc):
            raise
        log.warning("exchange session %s: %s waited too long for the catalog store: %s", session.id, name, exc)
        job = {"status": "failed", "error": "каталог сейчас занят другой загрузкой; повторите обмен позже"}
    with session.state() as state:
        state["imports"][name] = {**job, "finished": utc_now()}
    log_store.update_session(session.id, files=files_summary(state), bytes=state["bytes"])
    if job["status"] != "ok":
        raise Refused(job["error"])

"""CommerceML 2.03–3.1 catalog files (import, offers, prices, rests) → the catalog store, streamed.

One file is one store run (source ``exchange``): a file that fails to import changes nothing.
The document is read with ``lxml.etree.iterparse`` and every group, good and offer is written and
then cleared from the tree as soon as its end tag is read, so memory stays flat whatever the file
size. Tags are matched by local name (no namespace, ``urn:1C.ru:commerceml_2``, ``_210``, ``_3``).
Entities are never resolved, nothing is fetched, and a document with a DOCTYPE is refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import math
import multiprocessing
import os
import re
import resource
import shutil
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from json.encoder import encode_basestring
from pathlib import Path

from lxml import etree

from store import CatalogStore, Run, utc_now

log = logging.getLogger(__name__)

SOURCE = "exchange"
ROOT_TAG = "КоммерческаяИнформация"
SECTIONS = ("Классификатор", "Каталог", "ПакетПредложений")
# Only the end tags of these records reach Python; everything inside them stays in lxml until then.
# Warehouses are read at the end of their list (Склады): a Склад also sits in every offer, as its stock.
EVENT_TAGS = (ROOT_TAG, *SECTIONS, "Группа", "Свойство", "ТипЦены", "Склады", "ЕдиницаИзмерения", "Товар", "Предложение")
PROLOG_BYTES = 65536
DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
FIRST_ELEMENT = re.compile(rb"<[^?!]")
BATCH = 1000
MAX_PICTURE_BYTES = 2 * 1024 * 1024
PICTURE_TYPES = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"))
# Requisites not kept as attributes: picture captions, and the weight, which is a column of the card.
TECHNICAL_REQUISITES = {"ОписаниеФайла", "Вес"}
# SQLite page cache during an import (KiB): random ids touch pages all over the tables, and the
# default 2 MB cache makes a 100,000-goods file spend twice as long in SQLite.
IMPORT_CACHE_KIB = 49152
SPACES = str.maketrans("", "", " \xa0\u202f\t\r\n")
DOCTYPE_REFUSED = ("объявление DOCTYPE в файле обмена не допускается (в CommerceML его не бывает, а сущности "
                   "в нём могут читать файлы сервера); файл отклонён")


class CommerceMLError(Exception):
    """Message in Russian, shown to the 1C/MoySklad operator as ``failure\\n<message>``."""


class _Malformed(ValueError):
    """One group, good or offer cannot be stored; the message is the reason, in Russian."""


@dataclass
class ImportResult:
    """What one file brought: its kind ('import', 'offers', 'prices', 'rests'), counts and store run.

    Counts: groups, properties, goods (Товар), offers (Предложение), prices and stock (rows),
    price_types, warehouses, units, attributes, images, skipped, removed_<table>.
    """

    kind: str
    counts: dict
    run_id: int
    parser_peak_rss_mb: float = 0.0  # of the parser process; the writer's is the caller's own


def import_file(store: CatalogStore, path: Path, *, upload_dir: Path, images_dir: Path,
                progress: Callable[[int], None] | None = None) -> ImportResult:
    """Import one CommerceML file in one store run; raises CommerceMLError (nothing saved) when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise CommerceMLError(f"Файл {path.name} не найден среди загруженных файлов")
    started = time.monotonic()
    with store.run(SOURCE, "import") as run, _page_cache(run.db.conn, IMPORT_CACHE_KIB), \
            _parser_process(path, Path(upload_dir), Path(images_dir)) as messages:
        for message in messages:
            if message[0] == "batch":
                _, batch, records = message
                for table, count in batch.write(run).items():
                    run.stats.add(table, count)
                if progress:
                    progress(records)
            elif message[0] == "skip":
                item_type, item_id, name, reason = message[1]
                log.info("exchange: skipped %s %s (%s) in %s: %s", item_type, item_id, name, path.name, reason)
                run.skip(item_type, item_id or None, name or None, reason)
            elif message[0] == "setting":
                run.set_setting(*message[1])
            else:
                summary = message[1]
        summary.apply(run)
        log.info("exchange: %s (%.1f MB) imported as %s in %.1f s: %s", path.name, path.stat().st_size / 1e6,
                 summary.kind, time.monotonic() - started, run.stats.counts)
    return ImportResult(kind=summary.kind, counts=dict(run.stats.counts), run_id=run.id,
                        parser_peak_rss_mb=summary.peak_rss_mb)


class ParserCrashed(RuntimeError):
    """The parser process failed unexpectedly; the message is its traceback, for the server log."""


# The parser runs in a process of its own while this one writes the store: lxml and the Python of
# reading records on one core, SQLite on the other. The fork server is a clean process (no threads
# of gunicorn or the scheduler), so forking it is safe; batches travel pickled through a pipe, whose
# small buffer keeps about one batch in flight, so memory stays flat.
_PROCESSES = multiprocessing.get_context("forkserver")
_PROCESSES.set_forkserver_preload([__name__])


@contextlib.contextmanager
def _parser_process(path: Path, upload_dir: Path, images_dir: Path):
    """The parser's messages, in order; the process is stopped whatever happens to the run."""
    receiver, sender = _PROCESSES.Pipe(duplex=False)
    process = _PROCESSES.Process(target=_parse_in_child, args=(sender, path, upload_dir, images_dir),
                                 name=f"commerceml-parser {path.name}", daemon=True)
    process.start()
    sender.close()
    try:
        yield _messages(receiver, path)
    finally:
        receiver.close()  # a parser still sending gets a broken pipe and exits
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()


def _messages(receiver, path: Path) -> Iterator[tuple]:
    while True:
        try:
            message = receiver.recv()
        except (EOFError, OSError):  # OSError: the pipe ended in the middle of a message
            raise CommerceMLError(f"Файл {path.name}: процесс разбора файла неожиданно остановился; "
                                  "ничего из файла не сохранено, повторите обмен") from None
        if message[0] == "error":
            raise CommerceMLError(message[1])
        if message[0] == "crash":
            raise ParserCrashed(message[1])
        yield message
        if message[0] == "done":
            return


def _parse_in_child(sender, path: Path, upload_dir: Path, images_dir: Path) -> None:
    """The parser process: every outcome, even a crash, reaches the writer as a message."""
    try:
        importer = _Importer(sender, path, upload_dir, images_dir)
        importer.parse()
        sender.send(("done", importer.finish()))
    except CommerceMLError as exc:
        sender.send(("error", str(exc)))
    except BrokenPipeError:
        pass  # the writer gave up (its run failed or its process stopped): nothing to tell
    except BaseException:  # noqa: BLE001 — the writer must hear of it rather than wait forever
        sender.send(("crash", f"CommerceML parser process failed on {path.name}:\n{traceback.format_exc()}"))
    finally:
        sender.close()


@contextlib.contextmanager
def _page_cache(conn, kib: int):
    """A bigger SQLite page cache for the length of one import, then the connection's own again."""
    previous = conn.execute("PRAGMA cache_size").fetchone()[0]
    conn.execute(f"PRAGMA cache_size = -{int(kib)}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA cache_size = {int(previous)}")


def deactivate_untouched(store: CatalogStore, since: str) -> dict:
    """mode=deactivate: goods and offers no import since ``since`` saw are archived (never removed).

    When no import succeeded since then nothing is archived: deactivating on the strength of a
    session that imported nothing would take the whole catalog off sale.
    """
    moment = _utc(since)
    with store.run(SOURCE, "deactivate") as run:
        first = run.first_run_since("import", moment)
        if first is None:
            log.warning("exchange: deactivate skipped, no import succeeded since %s", moment)
            run.stats.add("no_import_since")
            return {"products": 0, "offers": 0}
        archived = run.archive_unseen(("products", "offers"), first)
        run.stats.counts.update({f"archived_{table}": n for table, n in archived.items()})
    return archived


def _utc(since: str) -> str:
    """An ISO time as the runs table writes it (UTC, seconds), so the two compare as text."""
    try:
        moment = dt.datetime.fromisoformat(since)
    except (TypeError, ValueError):
        raise CommerceMLError(f"неверное время начала сеанса обмена: {since!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def doctype_in_prolog(head: bytes) -> bool:
    """A DOCTYPE before the first element of a file's first PROLOG_BYTES: refused before lxml reads
    it, since its entities could read local files or explode in size."""
    element = FIRST_ELEMENT.search(head)
    return bool(DOCTYPE.search(head, 0, element.start() if element else len(head)))


def document_problem(tree, name: str) -> str | None:
    """Why a parsed tree is no CommerceML document (a DOCTYPE that slipped past the prolog check,
    another root), in the words 1C shows; None when it is one."""
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        return f"Файл {name}: {DOCTYPE_REFUSED}"
    root = _local(tree.getroot().tag)
    if root != ROOT_TAG:
        return f"Файл {name}: это не документ CommerceML: корневой элемент «{root}», ожидался «{ROOT_TAG}»"
    return None


# --- element helpers --------------------------------------------------------------------------------

_LOCAL_NAMES: dict = {}
LOCAL_NAMES_KEPT = 10_000  # CommerceML has a few hundred tag names; a hostile file must not grow the cache


def _local(tag) -> str:
    """The tag without its namespace (comments and processing instructions have none); cached per tag."""
    try:
        return _LOCAL_NAMES[tag]
    except KeyError:
        name = tag.rpartition("}")[2] if isinstance(tag, str) else ""
        if len(_LOCAL_NAMES) < LOCAL_NAMES_KEPT:
            _LOCAL_NAMES[tag] = name
        return name


def _children(element) -> dict:
    """The first child of each local name: the fields of one record."""
    fields = {}
    names = _LOCAL_NAMES
    for child in element:
        tag = child.tag
        name = names[tag] if tag in names else _local(tag)
        if name not in fields:
            fields[name] = child
    return fields


def _all(element, name: str) -> list:
    """Every child with this local name (repeated fields: pictures, barcodes, values)."""
    return [] if element is None else list(element.iterchildren(_ANY_NAMESPACE[name]))


class _AnyNamespace(dict):
    """'{*}name' per local name: lxml matches it in C, in any namespace or none, without making tag strings."""

    def __missing__(self, name: str) -> str:
        self[name] = f"{{*}}{name}"
        return self[name]


_ANY_NAMESPACE = _AnyNamespace()


def _text(element) -> str:
    return (element.text or "").strip() if element is not None else ""


def _parent_is(element, *names: str) -> bool:
    """The record sits where CommerceML puts it (an order's Товар is not a catalog good)."""
    node = element
    for name in names:
        node = node.getparent()
        if node is None or _local(node.tag) != name:
            return False
    return True


def _decimal(text: str, what: str) -> Decimal:
    """A number as 1C writes it: '1 234,50', '18', '0.5'."""
    try:
        value = Decimal(text.translate(SPACES).replace(",", "."))
    except InvalidOperation:
        raise _Malformed(f"{what} «{text}» не число") from None
    if not value.is_finite():
        raise _Malformed(f"{what} «{text}» не число")
    return value


def _kopecks(text: str) -> int:
    whole, _, cents = text.partition(",") if "," in text else text.partition(".")
    if whole.isascii() and whole.isdigit() and len(cents) <= 2 and (not cents or cents.isascii() and cents.isdigit()):
        return int(whole) * 100 + (int(cents) * (10 if len(cents) == 1 else 1) if cents else 0)  # '1234', '12,5', '99.90'
    value = _decimal(text, "цена")
    if value < 0:
        raise _Malformed(f"цена «{text}» отрицательная")
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
        raise _Malformed(f"остаток «{text}» не число") from None
    if not math.isfinite(value):
        raise _Malformed(f"остаток «{text}» не число")
    return value


def _deleted(fields: dict) -> int:
    """ПометкаУдаления or Статус «Удален»: the item stays, archived."""
    if "ПометкаУдаления" not in fields and "Статус" not in fields:
        return 0
    mark = _text(fields.get("ПометкаУдаления")).lower() == "true"
    return int(mark or _text(fields.get("Статус")).lower() in ("удален", "удалён"))


def _full(element) -> bool:
    """СодержитТолькоИзменения absent or false: the section lists everything (1C's default)."""
    return (element.get("СодержитТолькоИзменения") or "").strip().lower() != "true"


def _vat(rates) -> tuple[float | None, int | None]:
    """(rate, enabled) from СтавкиНалогов: «Без НДС» → VAT off, «20» → 20, «0» → 0 and on."""
    chosen = None
    for entry in _all(rates, "СтавкаНалога"):
        tax = rate = ""
        for child in entry:
            tag = _local(child.tag)
            if tag == "Наименование":
                tax = _text(child).upper()
            elif tag == "Ставка":
                rate = _text(child)
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
        return float(_decimal(rate.rstrip("%"), "ставка НДС")), 1
    except _Malformed:
        return None, None


def _unit(element) -> dict | None:
    """A units row from БазоваяЕдиница (attributes) or ЕдиницаИзмерения (child elements), keyed by OKEI code."""
    fields = _children(element)
    code = (element.get("Код") or _text(fields.get("Код"))).strip()
    if not code:
        return None
    full = (element.get("НаименованиеПолное") or _text(fields.get("НаименованиеПолное"))).strip()
    short = (element.get("НаименованиеКраткое") or _text(fields.get("НаименованиеКраткое")) or _text(element)
             or element.get("МеждународноеСокращение") or full or code).strip()
    return {"id": code, "name": short, "code": code, "description": full or None}


def _barcodes(element) -> str | None:
    """Barcodes as JSON in MoySklad's shape, [{"ean13": "..."}], which the ICML renderer reads."""
    codes = []
    for barcode in _all(element, "Штрихкод"):
        for value in _text(barcode).replace(";", ",").split(","):
            value = value.strip()
            if value:
                digits = value.isdigit()
                kind = "ean13" if digits and len(value) == 13 else "ean8" if digits and len(value) == 8 else "code128"
                quoted = f'"{value}"' if digits else encode_basestring(value)
                codes.append(f'{{"{kind}": {quoted}}}')
    return f"[{', '.join(codes)}]" if codes else None


def _characteristics(element) -> str:
    values = []
    for entry in _all(element, "ХарактеристикаТовара"):
        fields = _children(entry)
        name = _text(fields.get("Наименование"))
        if name:
            values.append({"name": name, "value": _text(fields.get("Значение"))})
    return json.dumps(values, ensure_ascii=False)


def _first_group(fields: dict) -> str | None:
    """The card's category: the first Группы/Ид (the feed has one category per offer)."""
    for child in fields.get("Группы", ()):
        if _local(child.tag) == "Ид":
            return _text(child) or None
    return None


def _requisites(element) -> list[tuple[str, str]]:
    """(name, value) of each ЗначениеРеквизита."""
    pairs = []
    for entry in _all(element, "ЗначениеРеквизита"):
        name = value = ""
        for child in entry:
            tag = _local(child.tag)
            if tag == "Наименование":
                name = _text(child)
            elif tag == "Значение" and not value:
                value = _text(child)
        pairs.append((name, value))
    return pairs


# --- writing ----------------------------------------------------------------------------------------

class _Batch:
    """Rows of BATCH records, sent to the writing process together and written there."""

    def __init__(self):
        self.categories: list[dict] = []
        self.products: list[dict] = []
        self.variant_cards: list[dict] = []  # written unless this run already wrote the card
        self.missing_cards: list[dict] = []  # written only when the store has no card yet
        self.touched: list[str] = []  # offers a prices or rests file refers to without rewriting them
        self.offers: dict[tuple, list[dict]] = {}  # by column set: an offers file sets fewer columns
        self.children: dict[str, tuple[list, list]] = {t: ([], []) for t in ("prices", "attributes", "images", "stock")}
        self.image_cache: list[dict] = []

    def offer(self, row: dict) -> None:
        self.offers.setdefault(tuple(row), []).append(row)

    def replace(self, table: str, owner_id: str, rows: list[dict]) -> None:
        """The owner's rows of ``table`` become exactly ``rows``."""
        owners, all_rows = self.children[table]
        owners.append(owner_id)
        all_rows.extend(rows)

    def write(self, run: Run) -> dict[str, int]:
        """Write every row; returns the rows written per child table."""
        counts = {}
        run.upsert_categories(self.categories)
        run.upsert_products(self.products)
        self._write_cards(run)
        for rows in self.offers.values():
            run.upsert_offers(rows)
        run.mark_seen("offers", self.touched)
        for table, key in (("prices", "price_type_id"), ("attributes", "attribute_id"), ("images", "position"),
                           ("stock", "warehouse_id")):
            owners, rows = self.children[table]
            owner_column = "offer_id" if table in ("prices", "stock") else "owner_id"
            counts[table] = run.replace_children(table, owner_column, owners, rows, ("source", owner_column, key))
        run.upsert("image_cache", self.image_cache, ("source", "image_id"))
        return counts

    def _write_cards(self, run: Run) -> None:
        """Cards made up from a variant Товар (kept fresh, but a real Товар of this run wins) or from an
        offer (only when the store has no card; an existing one just counts as seen)."""
        variants = {card["id"]: card for card in reversed(self.variant_cards)}  # the first of each product wins
        seen = run.seen_runs("products", list(variants))
        run.upsert_products(card for card_id, card in variants.items() if seen.get(card_id, -1) != run.id)
        missing = {card["id"]: card for card in reversed(self.missing_cards)}
        seen = run.seen_runs("products", list(missing))
        run.upsert_products(card for card_id, card in missing.items() if card_id not in seen)
        run.mark_seen("products", [card_id for card_id, seen_run in seen.items() if seen_run != run.id])


@dataclass
class _Summary:
    """What the whole file says once read: its kind, sections, reference lists and units."""

    kind: str
    full: dict[str, bool]
    listed: set[str]
    references: dict[str, list]
    units: dict[str, dict]
    counts: Counter = field(default_factory=Counter)
    peak_rss_mb: float = 0.0

    def apply(self, run: Run) -> None:
        """Write the reference lists and units, and reconcile a full file."""
        for key, count in self.counts.items():
            run.stats.add(key, count)
        for table, rows in self.references.items():
            if rows:
                full = all([row.pop("full") for row in rows])
                write = run.replace_all if full else run.upsert
                run.stats.add(table, write(table, rows, ("source", "id")))
        if self.units:
            run.stats.add("units", run.upsert("units", list(self.units.values()), ("source", "id")))
        self._reconcile(run)
        run.mode = "full" if any(self.full.values()) else "changes"

    def _reconcile(self, run: Run) -> None:
        """A full file: what it lacks is marked removed (never deleted), each file only for what it lists."""
        tables = []
        if self.kind == "import":
            if self.full.get("Классификатор") and run.stats.counts.get("groups"):
                tables.append("categories")
            if self.full.get("Каталог") and "Товары" in self.listed:
                tables += ["products", "offers"]
            offer_kinds = ("product",)
        else:
            if self.kind == "offers" and self.full.get("ПакетПредложений") and "Предложения" in self.listed:
                tables.append("offers")
            offer_kinds = ("variant",)
        if tables:
            for table, count in run.mark_unseen_removed(tuple(tables), offer_kinds).items():
                run.stats.add(f"removed_{table}", count)


# --- the document -----------------------------------------------------------------------------------

class _Importer:
    """Reads one document record by record and sends its rows, a :class:`_Batch` at a time, to the writer."""

    def __init__(self, sender, path: Path, upload_dir: Path, images_dir: Path):
        self.sender = sender  # the pipe to the process that writes the store
        self.path = path
        self.upload_dir = upload_dir.resolve()
        self.images_dir = images_dir
        self.batch = _Batch()
        self.counts: Counter = Counter()
        self.checked = False
        self.updated: str | None = None
        self.full: dict[str, bool] = {}  # the sections the file has: lists everything (True) or changes
        self.listed: set[str] = set()  # Товары / Предложения present: only then may a full section reconcile
        self.shapes = {"named": 0, "priced": 0, "stocked": 0}
        self.properties: dict[str, tuple[str, dict]] = {}
        self.units: dict[str, dict] = {}
        self.references: dict[str, list] = {"price_types": [], "warehouses": []}
        self.records = 0
        self.handlers = {
            "Группа": self._group, "Свойство": self._property, "ТипЦены": self._price_type, "Склады": self._warehouses,
            "ЕдиницаИзмерения": self._unit_of_measure, "Товар": self._good, "Предложение": self._offer,
            "Классификатор": self._section, "Каталог": self._section, "ПакетПредложений": self._section,
        }

    # parsing

    def parse(self) -> None:
        try:
            self._refuse_doctype()
            events = etree.iterparse(str(self.path), events=("end",), tag=[f"{{*}}{t}" for t in EVENT_TAGS],
                                     resolve_entities=False, no_network=True, huge_tree=True, load_dtd=False)
            for _, element in events:
                if not self.checked:
                    self._check_document(element)
                self._end(element)
        except etree.XMLSyntaxError as exc:
            raise CommerceMLError(f"Файл {self.path.name}: XML повреждён в строке {exc.lineno}: {exc.msg}") from None
        except OSError as exc:
            raise CommerceMLError(f"Файл {self.path.name} не удалось прочитать: {exc.strerror or exc}") from None

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
        self.updated = tree.getroot().get("ДатаФормирования")
        self.checked = True

    def _end(self, element) -> None:
        """Read a record whose end tag has arrived, then free it and what came before it."""
        handler = self.handlers.get(_local(element.tag))
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
        self.sender.send(("batch", self.batch, self.records))
        self.batch = _Batch()

    def _skip(self, item_type: str, item_id: str | None, name: str | None, reason: str) -> None:
        self.sender.send(("skip", (item_type, item_id, name, reason)))

    # records

    def _section(self, element) -> bool:
        """Классификатор, Каталог, ПакетПредложений: complete or changes only, and the owner's name."""
        if not _parent_is(element, ROOT_TAG):
            return False
        fields = _children(element)
        self.full[_local(element.tag)] = _full(element)
        self.listed.update(name for name in ("Товары", "Предложения") if name in fields)
        owner = _text(_children(fields["Владелец"]).get("Наименование")) if "Владелец" in fields else ""
        if owner:
            self.sender.send(("setting", ("company", owner)))
        return True

    def _group(self, element) -> bool:
        parent = element.getparent()
        if not _parent_is(element, "Группы") or _local(parent.getparent().tag) not in ("Классификатор", "Группа"):
            return False
        fields = _children(element)
        group_id, name = _text(fields.get("Ид")), _text(fields.get("Наименование"))
        if not group_id or not name:
            self._skip("group", group_id, name, "у группы нет Ид" if not group_id else "у группы нет наименования")
            return True
        above = parent.getparent()
        self.batch.categories.append({
            "id": group_id, "name": name, "external_code": group_id, "archived": _deleted(fields),
            "parent_id": _text(_children(above).get("Ид")) or None if _local(above.tag) == "Группа" else None,
            "updated": self.updated,
        })
        self._counted("groups")
        return True

    def _property(self, element) -> bool:
        if not _parent_is(element, "Свойства"):
            return False
        fields = _children(element)
        property_id, name = _text(fields.get("Ид")), _text(fields.get("Наименование"))
        if property_id and name:
            options = {}
            for option in _all(fields.get("ВариантыЗначений"), "Справочник"):
                option_fields = _children(option)
                options[_text(option_fields.get("ИдЗначения"))] = _text(option_fields.get("Значение"))
            self.properties[property_id] = (name, options)
            self.counts["properties"] += 1
        return True

    def _price_type(self, element) -> bool:
        return self._reference(element, "ТипыЦен", "price_types", "тип цены")

    def _warehouses(self, element) -> bool:
        """Each Склад of a Склады list; the list itself stays (clearing it would drop its section's fields)."""
        for child in element:
            if _local(child.tag) == "Склад":
                self._reference(child, "Склады", "warehouses", "склад")
        return False

    def _reference(self, element, container: str, table: str, what: str) -> bool:
        """Price types and warehouses: small lists, written once the file is read."""
        if not _parent_is(element, container):
            return False  # a Склад inside an offer is its stock, read with the offer
        fields = _children(element)
        item_id, name = _text(fields.get("Ид")), _text(fields.get("Наименование"))
        if not item_id or not name:
            self._skip(table, item_id, name, f"{what}: нет Ид или наименования")
            return True
        rows = self.references[table]
        rows.append({"id": item_id, "name": name, "external_code": item_id, "full": _full(element.getparent().getparent()),
                     **({"position": len(rows)} if table == "price_types" else {})})
        return True

    def _unit_of_measure(self, element) -> bool:
        if not _parent_is(element, "ЕдиницыИзмерения"):
            return False
        unit = _unit(element)
        if unit:
            self.units[unit["id"]] = unit
        return True

    def _good(self, element) -> bool:
        """A Товар: a product card and its base offer, or (Ид 'product#characteristic') a variant."""
        if not _parent_is(element, "Товары", "Каталог"):
            return False
        fields = _children(element)
        item_id, name = _text(fields.get("Ид")), _text(fields.get("Наименование"))
        try:
            if not item_id:
                raise _Malformed("у товара нет Ид")
            if not name:
                raise _Malformed("у товара нет наименования")
            product_id, _, characteristic = item_id.partition("#")
            if not product_id:
                raise _Malformed("Ид товара начинается с «#»: нет Ид карточки")
            requisites = _requisites(fields.get("ЗначенияРеквизитов"))
            card = self._card(product_id, name, fields, requisites)
        except _Malformed as exc:
            self._skip("product", item_id, name, str(exc))
            return True
        offer = {"id": item_id, "product_id": product_id, "kind": "variant" if characteristic else "product",
                 "name": name, "code": card["code"], "article": card["article"], "external_code": item_id,
                 "barcodes": _barcodes(element) if "Штрихкод" in fields else None,
                 "characteristics": _characteristics(fields.get("ХарактеристикиТовара")) if characteristic else None,
                 "archived": card["archived"], "updated": self.updated}
        if characteristic:
            card["archived"] = 0  # a variant marked deleted does not archive its product
            self.batch.variant_cards.append(card)
        else:
            self.batch.products.append(card)
        self.batch.offer(offer)
        self.batch.replace("attributes", item_id, self._attributes(item_id, fields, requisites))
        self.batch.replace("images", item_id, self._pictures(item_id, element) if "Картинка" in fields else [])
        self._counted("goods")
        return True

    def _card(self, product_id: str, name: str, fields: dict, requisites: list[tuple[str, str]]) -> dict:
        unit = self._unit_id(fields)
        vat, vat_enabled = _vat(fields.get("СтавкиНалогов"))
        weight = next((value for key, value in requisites if key == "Вес"), None)
        return {
            "id": product_id, "kind": "product", "name": name, "code": _text(fields.get("Код")) or None,
            "article": _text(fields.get("Артикул")) or None, "external_code": product_id,
            "category_id": _first_group(fields),
            "description": _text(fields.get("Описание")) or None, "unit_id": unit,
            "vat": vat, "vat_enabled": vat_enabled,
            "weight": float(_decimal(weight, "вес")) if weight else None,
            "archived": _deleted(fields), "updated": self.updated,
        }

    def _offer(self, element) -> bool:
        """A Предложение: offer data, prices and stock, whichever of them the file carries."""
        if not _parent_is(element, "Предложения", "ПакетПредложений"):
            return False
        fields = _children(element)
        item_id, name = _text(fields.get("Ид")), _text(fields.get("Наименование"))
        try:
            if not item_id or item_id.startswith("#"):
                raise _Malformed("у предложения нет Ид товара")
            prices = self._prices(item_id, fields.get("Цены"))
            stock = self._stock(item_id, element, fields)
        except _Malformed as exc:
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
        row = {"id": item_id, "product_id": product_id, "kind": "variant" if characteristic else "product",
               "name": name, "external_code": item_id, "archived": _deleted(fields), "updated": self.updated}
        if "Артикул" in fields:
            row["article"] = _text(fields["Артикул"]) or None
        if "Штрихкод" in fields:
            row["barcodes"] = _barcodes(element)
        if "ХарактеристикиТовара" in fields:
            row["characteristics"] = _characteristics(fields["ХарактеристикиТовара"])
        self.batch.offer(row)
        self.batch.missing_cards.append({
            "id": product_id, "kind": "product", "name": name, "external_code": product_id,
            "category_id": _first_group(fields), "unit_id": self._unit_id(fields), "updated": self.updated})
        if "ЗначенияСвойств" in fields:
            self.batch.replace("attributes", item_id, self._attributes(item_id, fields, []))
        if "Картинка" in fields:
            self.batch.replace("images", item_id, self._pictures(item_id, element))

    def _prices(self, offer_id: str, prices) -> list[dict] | None:
        if prices is None:
            return None
        rows = []
        for price in _all(prices, "Цена"):
            fields = _children(price)
            type_id = _text(fields.get("ИдТипаЦены"))
            if not type_id:
                raise _Malformed("у цены нет ИдТипаЦены")
            rows.append({"offer_id": offer_id, "price_type_id": type_id, "value": _kopecks(_text(fields.get("ЦенаЗаЕдиницу")))})
        return rows

    def _stock(self, offer_id: str, element, fields: dict) -> list[dict] | None:
        """Stock in any of its three shapes: per warehouse when given, else the total (warehouse '')."""
        per_warehouse, total = [], None
        for store in _all(element, "Склад"):  # 2.07: <Склад ИдСклада=.. КоличествоНаСкладе=../>
            if store.get("ИдСклада"):
                per_warehouse.append((store.get("ИдСклада").strip(), _quantity((store.get("КоличествоНаСкладе") or "").strip())))
        for rest in _all(fields.get("Остатки"), "Остаток"):  # 2.09+: <Остатки><Остаток><Склад><Ид/><Количество/>
            rest_fields = _children(rest)
            if "Склад" in rest_fields:
                store_fields = _children(rest_fields["Склад"])
                per_warehouse.append((_text(store_fields.get("Ид")), _quantity(_text(store_fields.get("Количество")))))
            elif "Количество" in rest_fields:
                total = (total or 0.0) + _quantity(_text(rest_fields["Количество"]))
        if "Количество" in fields:
            total = _quantity(_text(fields["Количество"]))
        if per_warehouse:
            return [{"offer_id": offer_id, "warehouse_id": w, "stock": q} for w, q in per_warehouse]
        if total is not None:
            return [{"offer_id": offer_id, "warehouse_id": "", "stock": total}]
        return None

    def _unit_id(self, fields: dict) -> str | None:
        """The card's unit (its OKEI code); the first sight of a code adds it to the units."""
        element = fields.get("БазоваяЕдиница")
        code = (element.get("Код") or "").strip() if element is not None else ""
        if code in self.units:
            return code
        unit = _unit(element) if element is not None else None
        if unit:
            self.units[unit["id"]] = unit
        return unit["id"] if unit else None

    def _attributes(self, owner_id: str, fields: dict, requisites: list[tuple[str, str]]) -> list[dict]:
        """Property values (reference values resolved to their text), requisites and the manufacturer."""
        rows = []
        for value in _all(fields.get("ЗначенияСвойств"), "ЗначенияСвойства"):
            property_id, texts = "", []
            for child in value:
                name = _local(child.tag)
                if name == "Ид":
                    property_id = _text(child)
                elif name == "Значение" and _text(child):
                    texts.append(_text(child))
            if not texts:
                continue
            if property_id not in self.properties:
                self.counts["unknown_property_values"] += 1
                continue
            name, options = self.properties[property_id]
            rows.append({"owner_id": owner_id, "attribute_id": property_id, "name": name, "type": "property",
                         "value": ", ".join(options.get(t, t) for t in texts)})
        if "ПолноеНаименование" in fields and all(key != "Полное наименование" for key, _ in requisites):
            requisites = [*requisites, ("Полное наименование", _text(fields["ПолноеНаименование"]))]
        for name, text in requisites:
            if name and text and name not in TECHNICAL_REQUISITES:
                rows.append({"owner_id": owner_id, "attribute_id": f"requisite:{name}", "name": name,
                             "type": "requisite", "value": text})
        maker = _text(_children(fields["Изготовитель"]).get("Наименование")) if "Изготовитель" in fields else ""
        if maker:
            rows.append({"owner_id": owner_id, "attribute_id": "manufacturer", "name": "Изготовитель",
                         "type": "requisite", "value": maker})
        return rows

    # pictures

    def _pictures(self, owner_id: str, element) -> list[dict]:
        rows = []
        for picture in _all(element, "Картинка"):
            relative = _text(picture).replace("\\", "/")
            if not relative:
                continue
            try:
                image_id, local_file, size = self._copy_picture(relative)
            except _Malformed as exc:
                self._skip("picture", owner_id, relative, str(exc))
                continue
            rows.append({"owner_id": owner_id, "position": len(rows), "filename": Path(relative).name, "size": size,
                         "href": f"exchange:/download/{image_id}", "updated": self.updated})
            self.batch.image_cache.append({"image_id": image_id, "owner_id": owner_id, "position": len(rows) - 1,
                                            "size": size, "local_file": local_file, "fetched_at": utc_now()})
        return rows

    def _copy_picture(self, relative: str) -> tuple[str, str, int]:
        """Copy an uploaded picture into the images folder the feeds serve; refuse anything but jpg/png ≤ 2 MB."""
        source = (self.upload_dir / relative).resolve()
        if not source.is_relative_to(self.upload_dir):
            raise _Malformed("путь картинки ведёт за пределы папки обмена")
        if not source.is_file():
            raise _Malformed("файл картинки не был загружен")
        size = source.stat().st_size
        if size > MAX_PICTURE_BYTES:
            raise _Malformed(f"картинка больше 2 МБ ({size} байт)")
        with open(source, "rb") as handle:
            head = handle.read(8)
        extension = next((ext for magic, ext in PICTURE_TYPES if head.startswith(magic)), None)
        if extension is None:
            raise _Malformed("картинка не в формате JPEG или PNG")
        image_id = str(uuid.uuid5(uuid.NAMESPACE_URL, relative))
        local_file = f"{image_id}.{extension}"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        partial = self.images_dir / f".{local_file}.{os.getpid()}.tmp"
        shutil.copyfile(source, partial)
        os.replace(partial, self.images_dir / local_file)  # a feed being served never sees half a picture
        return image_id, local_file, size

    # the end of the file

    def finish(self) -> _Summary:
        """Send what is buffered; the summary tells the writer what else the file means."""
        kind = self._kind()
        self._send_batch()
        return _Summary(kind, self.full, self.listed, self.references, self.units, self.counts,
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

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
                              "предложений; это не файл каталога (файлы заказов загружаются через type=sale)")

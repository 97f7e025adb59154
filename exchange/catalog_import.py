"""CommerceML 2.03–3.1 catalog files (import, offers, prices, rests) → the catalog store.

One file is one store run (source ``exchange``): a file that fails to import changes nothing. The
parser (:mod:`exchange.catalog_parser`) runs in a child process and streams batches of rows here,
where they are staged and merged into the store in key order (:class:`BatchWriter`) while it reads on;
a thread of this process checks the pictures the rows name and puts them into the images folder
(:class:`PictureLinker`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import operator
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from core.child_process import ChildLost, preload, run_in_child, start_soon
from core.pictures import MAX_PICTURE_BYTES, SIGNATURE_LENGTH, picture_kind
from exchange.catalog_parser import (
    CARD_COLUMNS,
    CATEGORY_COLUMNS,
    CHILD_COLUMNS,
    GOOD_OFFER_COLUMNS,
    OFFER_CARD_COLUMNS,
    FileSummary,
    RecordBatch,
    parse_catalog_file,
)
from exchange.cml import CommerceMLError, Malformed
from store import CatalogRun, CatalogStore

log = logging.getLogger(__name__)
preload("exchange.catalog_parser")  # loaded once, in the fork server, not in every parser process

SOURCE = "exchange"
# SQLite page cache during an import (KiB), which also bounds the memory a merge sorts its rows in (see
# BatchWriter): rows go in key order, so a table's pages are visited in one sweep per merge. At 100,000
# goods 24 MB was no faster than 8 MB (writer 12.8-14.2 CPU-s against 12.5-13.4) and made the worker 40 MB bigger.
IMPORT_CACHE_KIB = 8192
IMAGE_CACHE_COLUMNS = ("image_id", "owner_id", "position", "size", "local_file", "fetched_at")
URL_NAMESPACE = uuid.NAMESPACE_URL.bytes


def prepare_parser() -> None:
    """Start the fork server the parser comes from (a fresh interpreter that loads lxml: some 0.2 s) when an
    exchange session opens, so that the session's imports, minutes later, do not wait for it. Through this
    module, whose import has the server preload the parser."""
    start_soon()


@dataclass
class ImportResult:
    """What one file brought: its kind ('import', 'offers', 'prices', 'rests'), counts and store run.

    Counts: groups, properties, goods (Товар), offers (Предложение), prices and stock (rows),
    price_types, warehouses, units, attributes, images, skipped, removed_<table>.
    """

    kind: str
    counts: dict
    run_id: int
    root_attributes: dict = field(default_factory=dict)  # of КоммерческаяИнформация, as the file has them
    parser_peak_rss_mb: float = 0.0  # of the parser process; the writer's is the caller's own
    parser_cpu_seconds: float = 0.0


def import_file(store: CatalogStore, path: Path, *, upload_dir: Path, images_dir: Path,
                progress: Callable[[int], None] | None = None, session_first_run: int | None = None) -> ImportResult:
    """Import one CommerceML file in one store run; raises CommerceMLError (nothing saved) when it cannot.

    ``session_first_run``: the store run of the exchange session's first import, when the file is not it.
    1C may split one full catalog over several files of a session (import0_1.xml, import0_2.xml): a full
    file then marks removed only what no import of the session has brought.
    """
    path = Path(path)
    if not path.is_file():
        raise CommerceMLError(f"Файл {path.name} не найден среди загруженных файлов")
    started = time.monotonic()
    with store.run(SOURCE, "import") as run, store.page_cache(IMPORT_CACHE_KIB), \
            run_in_child(parse_catalog_file, path, Path(upload_dir), known := _known_properties(store),
                         name=f"commerceml-parser {path.name}", expected=(CommerceMLError,)) as messages, \
            PictureLinker(Path(images_dir), path.name) as pictures:
        skips, writer = SkipLog(run, path.name), BatchWriter(run)
        placing = None  # the last batch, whose pictures the picture thread places while the next one is written
        try:
            for message in messages:
                if message[0] == "batch":
                    _, batch, records = message
                    placed = pictures.place(batch)
                    for table, count in writer.write(batch, records).items():
                        run.stats.add(table, count)
                    if placing is not None:
                        _write_placed(run, writer, skips, *placing)
                    placing = batch, placed, skips.take()
                    if progress:
                        progress(records)
                elif message[0] == "skip":
                    skips.hold(message[1], message[2])
                elif message[0] == "setting":
                    run.set_setting(*message[1])
            if placing is not None:
                _write_placed(run, writer, skips, *placing)
                placing = None
        except ChildLost:
            raise CommerceMLError(f"Файл {path.name}: процесс разбора файла неожиданно остановился; "
                                  "ничего из файла не сохранено, повторите обмен") from None
        finally:  # a failed run keeps what it left out, too
            if placing is not None:
                skips.record(_refused(placing[1]), placing[2])
            skips.record([], skips.take())
        summary: FileSummary = messages.result
        writer.flush()
        apply_summary(run, summary, seen_since=session_first_run)
        if summary.properties:  # for the goods of later files (1C 2.08+ sends the classifier in a file of its own)
            run.set_setting(PROPERTIES_SETTING, merged_properties(known, summary.properties))
        log.info("exchange: %s (%.1f MB, %s) imported as %s in %.1f s: %s", path.name, path.stat().st_size / 1e6,
                 " ".join(f"{k}={v!r}" for k, v in summary.root_attributes.items()), summary.kind,
                 time.monotonic() - started, run.stats.counts)
    return ImportResult(kind=summary.kind, counts=dict(run.stats.counts), run_id=run.id,
                        root_attributes=summary.root_attributes,
                        parser_peak_rss_mb=summary.peak_rss_mb, parser_cpu_seconds=summary.cpu_seconds)


def merged_properties(known: dict, defined: dict) -> dict:
    """Property definitions after a file: its own name for each property it defines, and the values it lists added to
    those known (a value id keeps its meaning; a classifier of changes only may list none)."""
    merged = dict(known)
    for property_id, (name, options) in defined.items():
        merged[property_id] = (name, {**(known.get(property_id) or ("", {}))[1], **options})
    return merged


def _known_properties(store: CatalogStore) -> dict:
    """The Свойства earlier files defined (read inside the import's run, which holds the store's write lock)."""
    return json.loads(store.setting(SOURCE, PROPERTIES_SETTING) or "{}")


def _write_placed(run: CatalogRun, writer: BatchWriter, skips: SkipLog, batch: RecordBatch, placed: Future,
                  held: list[tuple[tuple, int]]) -> None:
    """The rows of a batch's pictures once the picture thread has placed them, and what it left out."""
    pictures = placed.result()
    run.stats.add("images", writer.write_pictures(batch, pictures))
    skips.record(pictures.refused, held)


def _refused(placed: Future) -> list[tuple[int, tuple]]:
    try:
        return placed.result().refused
    except CommerceMLError:
        return []


KEY = ("source", "id")
PROPERTIES_SETTING = "properties"  # the classifier's Свойства as the latest file defined each, by id
CHILD_KEYS = {"prices": ("offer_id", "price_type_id"), "attributes": ("owner_id", "attribute_id"),
              "images": ("owner_id", "position"), "stock": ("offer_id", "warehouse_id")}
# Records whose rows are staged before they are merged into the store in key order (see BatchWriter): a group's
# random ids then touch each page of a table once, in one sweep. More saves SQLite work at 100,000 goods; the
# last group is merged after the parser has finished, so more also makes the import wait longer at its end.
GROUP_RECORDS = 20_000


class BatchWriter:
    """Writes the batches of one file: each batch's rows are staged in temporary tables and every GROUP_RECORDS
    records merged into the store in key order (:meth:`store.CatalogRun.merge_staged`), as the MoySklad sync does.

    The result is what writing each batch as it comes would make: of two rows with one key the later wins,
    within a batch as across batches, and a record that comes again replaces the children of its earlier copy
    (the group is merged before a batch that names a key it holds, so rows with one key never meet in a merge).
    """

    def __init__(self, run: CatalogRun):
        self.run = run
        self.keys: dict[str, set] = {}  # per staged name: the keys (children: the owners) of the group
        self.offer_names: dict[tuple, str] = {}  # the staged name of each column set of offers
        self.records = self.merged = 0  # records read so far, and when the group was last merged

    def write(self, batch: RecordBatch, records: int) -> dict[str, int]:
        """Stage every row of a batch but its pictures' (see :meth:`write_pictures`); ``records``: how many the parser
        has read so far. Returns the rows written per child table."""
        staged = [("categories", CATEGORY_COLUMNS, _last_of_each(batch.categories, BY_ID)),
                  ("products", CARD_COLUMNS, _last_of_each(batch.products, BY_ID))]
        for columns, rows in batch.offers.items():
            staged.append((self.offer_names.setdefault(columns, f"offers{len(self.offer_names)}"), columns,
                           _last_of_each(rows, BY_ID)))
        counts = {table: len(rows) for table, (_, rows) in batch.children.items() if table != "images"}
        for table, (owners, rows) in batch.children.items():
            if table != "images":  # staged once the picture thread has placed the batch's pictures
                staged += _children(table, owners, rows)
        self._stage(staged)
        if batch.variant_cards or batch.missing_cards:
            if self.keys.get("products"):
                self.flush()  # which cards this run wrote is read from the store
            _write_cards(self.run, batch)
        self.run.mark_seen("offers", batch.touched)
        self.records = records
        return counts

    def write_pictures(self, batch: RecordBatch, pictures: PlacedPictures) -> int:
        """Stage the picture rows of a batch written before (the next batch's rows may be staged already: a group
        holding an owner of these rows is merged first, so the file's order still decides); the rows written."""
        owners, rows = batch.children["images"]
        self._stage([*_children("images", owners, rows + pictures.images),
                     ("image_cache", IMAGE_CACHE_COLUMNS, _last_of_each(pictures.image_cache, BY_ID))])
        if self.records - self.merged >= GROUP_RECORDS:
            self.flush()
        return len(rows) + len(pictures.images)

    def _stage(self, staged: list[tuple[str, tuple, dict]]) -> None:
        """Stage rows (name, columns, rows by key), first merging the group when it holds one of their keys."""
        keyed = [(name, rows) for name, _, rows in staged if name not in CHILD_COLUMNS]  # children: by their owners
        if any(not self.keys.get(name, set()).isdisjoint(rows) for name, rows in keyed):
            self.flush()
        for name, rows in keyed:
            self.keys.setdefault(name, set()).update(rows)
        for name, columns, rows in staged:
            self.run.stage(name, columns, list(rows.values()))

    def flush(self) -> None:
        """Merge what is staged into the store, in key order."""
        run = self.run
        run.merge_staged("categories", "categories", KEY, seen=True)
        run.merge_staged("products", "products", KEY, seen=True)
        for columns, name in self.offer_names.items():
            # an offers file cannot tell a service: the kind its Товар gave the offer stays
            run.merge_staged(name, "offers", KEY, seen=True, keep=() if columns == GOOD_OFFER_COLUMNS else ("kind",))
        for table, (owner_column, key) in CHILD_KEYS.items():
            if self.keys.get(f"{table}_owners"):
                run.merge_staged(table, table, ("source", owner_column, key), children_of=(owner_column, f"{table}_owners"))
        run.merge_staged("image_cache", "image_cache", ("source", "image_id"))
        run.drop_staged()
        self.keys.clear()
        self.merged = self.records


def _children(table: str, owners: list[str], rows: list[tuple]) -> list[tuple[str, tuple, dict]]:
    """What BatchWriter stages for the children of ``owners``: the owners, whose rows of ``table`` become ``rows``."""
    return [(f"{table}_owners", ("id",), {owner: (owner,) for owner in owners}),
            (table, CHILD_COLUMNS[table], _last_of_each(rows, BY_OWNER_AND_KEY))]


def _last_of_each(rows: list[tuple], key) -> dict:
    """Rows by key, the last of each (as writing them one after the other would leave it)."""
    return {key(row): row for row in rows}


BY_ID, BY_OWNER_AND_KEY = operator.itemgetter(0), operator.itemgetter(0, 1)


def _write_cards(run: CatalogRun, batch: RecordBatch) -> None:
    """Cards made up from a variant Товар (kept fresh, but a real Товар of this run wins) or from an offer.

    A card made up from an offer is written when the store has none. Named again, it is the offers files' own
    (no Товар describes it): live and on sale again after a full file or a deactivation left it out, with the
    group and unit the offer gives and, from its base offer (Ид without '#'), its name. A Товар's card only
    counts as seen: its Каталог decides it.
    """
    variants = {card[0]: card for card in reversed(batch.variant_cards)}  # the first of each product wins
    seen = run.seen_runs("products", list(variants))
    run.upsert_rows("products", CARD_COLUMNS, [card for card_id, card in variants.items() if seen.get(card_id, -1) != run.id],
                    KEY, seen=True)
    missing = {card[0]: card for card in reversed(batch.missing_cards)}
    seen = run.seen_runs("products", list(missing))
    run.upsert_rows("products", OFFER_CARD_COLUMNS, [card for card_id, card in missing.items() if card_id not in seen],
                    KEY, seen=True)
    named_again = [card_id for card_id, seen_run in seen.items() if seen_run != run.id]
    if named_again:
        base_names = {row[0]: row[columns.index("name")] for columns, rows in batch.offers.items() for row in rows}
        group, unit = OFFER_CARD_COLUMNS.index("category_id"), OFFER_CARD_COLUMNS.index("unit_id")
        run.revive_offer_cards([(card_id, base_names.get(card_id), missing[card_id][group], missing[card_id][unit])
                                for card_id in named_again])
    run.mark_seen("products", named_again)


class SkipLog:
    """Records what the parser left out, in the file's order: a skip waits for the batch that follows it, whose
    refused pictures (the writer checks pictures, see :class:`PictureLinker`) go in between."""

    def __init__(self, run: CatalogRun, file_name: str):
        self.run, self.file_name = run, file_name
        self.held: list[tuple[tuple, int]] = []  # (skip, how many of the next batch's pictures came before it)

    def hold(self, skip: tuple, pictures_before: int) -> None:
        self.held.append((skip, pictures_before))

    def take(self) -> list[tuple[tuple, int]]:
        """The skips held for the batch that has just come, to record with its refused pictures."""
        held, self.held = self.held, []
        return held

    def record(self, refused: list[tuple[int, tuple]], held: list[tuple[tuple, int]]) -> None:
        """``held`` skips and ``refused`` (index in the batch's pictures, skip), merged in the file's order."""
        refused = iter(refused)
        picture = next(refused, None)
        for skip, pictures_before in held:
            while picture is not None and picture[0] < pictures_before:
                self._record(picture[1])
                picture = next(refused, None)
            self._record(skip)
        while picture is not None:
            self._record(picture[1])
            picture = next(refused, None)

    def _record(self, skip: tuple) -> None:
        item_type, item_id, name, reason = skip
        log.info("exchange: skipped %s %s (%s) in %s: %s", item_type, item_id, name, self.file_name, reason)
        self.run.skip(item_type, item_id or None, name or None, reason)


@dataclass
class PlacedPictures:
    """A batch's pictures once checked and put into the images folder: the rows of those placed, and the others."""

    images: list[tuple] = field(default_factory=list)  # CHILD_COLUMNS["images"]
    image_cache: list[tuple] = field(default_factory=list)  # IMAGE_CACHE_COLUMNS
    refused: list[tuple[int, tuple]] = field(default_factory=list)  # (index in RecordBatch.pictures, skip)


class PictureLinker:
    """Checks the pictures of each batch and puts them into the images folder on a thread of its own: opening and
    linking files is mostly the kernel's work, done while this thread writes SQLite and the parser reads on (all
    three without the GIL)."""

    def __init__(self, images_dir: Path, file_name: str):
        self.images_dir, self.file_name = images_dir, file_name
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="exchange-pictures")

    def __enter__(self) -> PictureLinker:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(cancel_futures=True)

    def place(self, batch: RecordBatch) -> Future:
        """The batch's :class:`PlacedPictures`, to come; its result raises CommerceMLError when a picture could not be
        placed. Every picture is in the images folder before the rows that name it are written."""
        return self.pool.submit(place_pictures, batch, self.images_dir, self.file_name)


def place_pictures(batch: RecordBatch, images_dir: Path, file_name: str) -> PlacedPictures:
    """Check each picture of a batch (see :func:`check_picture`) and put it into the images folder the feeds serve,
    hard-linked to its upload (a copy only across file systems): the upload goes with its session, the served
    file stays. Raises CommerceMLError (nothing of the file saved) when it cannot."""
    placed = PlacedPictures()
    record, position = None, 0
    if not batch.pictures:
        return placed
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
        folder = os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for index, (number, owner_id, relative, source) in enumerate(batch.pictures):
                image_id = picture_id(relative)
                try:
                    local_file, size = place_picture(source, folder, image_id)
                except Malformed as exc:
                    placed.refused.append((index, ("picture", owner_id, relative, str(exc))))
                    continue
                position = position + 1 if number == record else 0  # positions of one record's pictures that count
                record = number
                placed.images.append((owner_id, position, relative.rpartition("/")[2], size,
                                      f"exchange:/download/{image_id}", batch.updated))
                placed.image_cache.append((image_id, owner_id, position, size, local_file, batch.started))
        finally:
            os.close(folder)
    except OSError as exc:
        raise CommerceMLError(f"Файл {file_name}: картинки не удалось сохранить в папку {images_dir}: "
                              f"{exc.strerror or exc}") from None
    return placed


def place_picture(source: str, folder: int, image_id: str) -> tuple[str, int]:
    """(file name in the images folder, size) of an uploaded picture (a path within the upload folder), checked and
    linked into the folder (a descriptor of the images folder) through one open descriptor: the file served is the
    file checked, whatever the upload's name points to by then (1C may send it again meanwhile). Four system calls
    and a link: tens of thousands of pictures."""
    try:  # uploads are never symbolic links (see exchange.uploads): refuse one rather than follow it
        descriptor = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise Malformed("файл картинки не был загружен") from None
    try:
        extension, info = check_picture(descriptor)
        local_file = f"{image_id}.{extension}"
        _link_open_file(descriptor, info, folder, local_file)
    finally:
        os.close(descriptor)
    return local_file, info.st_size


def check_picture(descriptor: int) -> tuple[str, os.stat_result]:
    """(extension, file status) of an open upload: refuse what retailCRM would (see :mod:`core.pictures`)."""
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        raise Malformed("файл картинки не был загружен")
    if info.st_size > MAX_PICTURE_BYTES:
        raise Malformed(f"картинка больше 2 МБ ({info.st_size} байт)")
    extension = picture_kind(os.read(descriptor, SIGNATURE_LENGTH))
    if extension is None:
        raise Malformed("картинка не в формате JPEG или PNG")
    return extension, info


def _link_open_file(descriptor: int, info: os.stat_result, folder: int, name: str) -> None:
    """The open file under ``name`` in the images folder: a new picture appears whole, in one step; one a feed may be
    serving is replaced atomically; the same file linked before (an earlier good or import) stays."""
    opened = f"/proc/self/fd/{descriptor}"
    try:  # with a folder descriptor os.link is linkat(AT_SYMLINK_FOLLOW): the inode the descriptor holds
        os.link(opened, name, dst_dir_fd=folder)
        return
    except FileExistsError:
        if _same_file(name, folder, info):
            return
    except OSError:  # another file system, one without hard links, or no /proc: a copy below
        pass
    partial = f".{name}.{os.getpid()}.{threading.get_native_id()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial, dir_fd=folder)  # left by a killed import of a process with this pid
    try:
        os.link(opened, partial, dst_dir_fd=folder)
    except OSError:
        os.lseek(descriptor, 0, os.SEEK_SET)
        copy = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=folder)
        with open(descriptor, "rb", closefd=False) as upload, open(copy, "wb") as target:
            shutil.copyfileobj(upload, target)
    os.replace(partial, name, src_dir_fd=folder, dst_dir_fd=folder)


def _same_file(name: str, folder: int, info: os.stat_result) -> bool:
    try:
        found = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except OSError:
        return False
    return (found.st_dev, found.st_ino) == (info.st_dev, info.st_ino)


def picture_id(relative: str) -> str:
    """The picture's id: ``str(uuid.uuid5(uuid.NAMESPACE_URL, relative))``, made without the UUID object, which
    costs more than the rest of a picture's reading (a catalog has tens of thousands of them)."""
    digest = bytearray(hashlib.sha1(URL_NAMESPACE + relative.encode()).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50  # version 5
    digest[8] = digest[8] & 0x3F | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def apply_summary(run: CatalogRun, summary: FileSummary, seen_since: int | None = None) -> None:
    """Write the reference lists and units, and reconcile a full file (against what the runs from
    ``seen_since`` on saw: the exchange session's imports so far; this run alone by default)."""
    for key, count in summary.counts.items():
        run.stats.add(key, count)
    for table, rows in summary.references.items():
        if rows:
            full = all([row.pop("full", True) for row in rows])  # True: a list outside any section, as 1C never sends
            write = run.replace_all if full else run.upsert
            run.stats.add(table, write(table, rows, ("source", "id")))
    if summary.units:
        run.stats.add("units", run.upsert("units", list(summary.units.values()), ("source", "id")))
    _reconcile(run, summary, seen_since)
    run.mode = "full" if any(summary.full.values()) else "changes"


def _reconcile(run: CatalogRun, summary: FileSummary, seen_since: int | None) -> None:
    """A full file: what it and the session's earlier imports lack is marked removed (never deleted), each
    file only for what it lists."""
    tables = []
    if summary.kind == "import":
        if summary.full.get("Классификатор") and run.stats.counts.get("groups"):
            tables.append("categories")
        if summary.full.get("Каталог") and "Товары" in summary.listed:
            tables += ["products", "offers"]
        offer_kinds = ("product", "service")  # a Товар's own offer; its variants are the offers files'
    else:
        if summary.kind == "offers" and summary.full.get("ПакетПредложений") and "Предложения" in summary.listed:
            tables.append("offers")
        offer_kinds = ("variant",)
    if tables:
        for table, count in run.mark_unseen_removed(tuple(tables), offer_kinds, seen_since=seen_since).items():
            run.stats.add(f"removed_{table}", count)


def deactivate_untouched(store: CatalogStore, session_runs: list[int]) -> dict:
    """mode=deactivate: goods and offers that none of the session's catalog imports (their store runs) saw are
    archived (never removed).

    When the session imported nothing, nothing is archived: deactivating on the strength of a
    session that imported nothing would take the whole catalog off sale.
    """
    with store.run(SOURCE, "deactivate") as run:
        if not session_runs:
            log.warning("exchange: deactivate skipped, the session imported no catalog file")
            run.stats.add("no_import_in_session")
            return {"products": 0, "offers": 0}
        archived = run.archive_unseen(("products", "offers"), min(session_runs))
        run.stats.counts.update({f"archived_{table}": n for table, n in archived.items()})
    return archived

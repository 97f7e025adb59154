"""CommerceML 2.03–3.1 catalog files (import, offers, prices, rests) → the catalog store.

One file is one store run (source ``exchange``): a file that fails to import changes nothing. The
parser (:mod:`exchange.catalog_parser`) runs in a child process and streams batches of rows here,
where they are written while it reads on.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.child_process import ChildLost, preload, run_in_child
from exchange.catalog_parser import FileSummary, RecordBatch, parse_catalog_file
from exchange.cml import CommerceMLError
from store import CatalogRun, CatalogStore

log = logging.getLogger(__name__)
preload("exchange.catalog_parser")  # loaded once, in the fork server, not in every parser process

SOURCE = "exchange"
# SQLite page cache during an import (KiB): random ids touch pages all over the tables, and the
# default 2 MB cache makes a 100,000-goods file spend twice as long in SQLite.
IMPORT_CACHE_KIB = 49152


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
    with store.run(SOURCE, "import") as run, store.page_cache(IMPORT_CACHE_KIB), \
            run_in_child(parse_catalog_file, path, Path(upload_dir), Path(images_dir),
                         name=f"commerceml-parser {path.name}", expected=(CommerceMLError,)) as messages:
        try:
            for message in messages:
                if message[0] == "batch":
                    _, batch, records = message
                    for table, count in write_batch(run, batch).items():
                        run.stats.add(table, count)
                    if progress:
                        progress(records)
                elif message[0] == "skip":
                    item_type, item_id, name, reason = message[1]
                    log.info("exchange: skipped %s %s (%s) in %s: %s", item_type, item_id, name, path.name, reason)
                    run.skip(item_type, item_id or None, name or None, reason)
                elif message[0] == "setting":
                    run.set_setting(*message[1])
        except ChildLost:
            raise CommerceMLError(f"Файл {path.name}: процесс разбора файла неожиданно остановился; "
                                  "ничего из файла не сохранено, повторите обмен") from None
        summary: FileSummary = messages.result
        apply_summary(run, summary)
        log.info("exchange: %s (%.1f MB) imported as %s in %.1f s: %s", path.name, path.stat().st_size / 1e6,
                 summary.kind, time.monotonic() - started, run.stats.counts)
    return ImportResult(kind=summary.kind, counts=dict(run.stats.counts), run_id=run.id,
                        parser_peak_rss_mb=summary.peak_rss_mb)


def write_batch(run: CatalogRun, batch: RecordBatch) -> dict[str, int]:
    """Write every row of a batch; returns the rows written per child table."""
    counts = {}
    run.upsert_categories(batch.categories)
    run.upsert_products(batch.products)
    _write_cards(run, batch)
    for rows in batch.offers.values():
        run.upsert_offers(rows)
    run.mark_seen("offers", batch.touched)
    for table, key in (("prices", "price_type_id"), ("attributes", "attribute_id"), ("images", "position"),
                       ("stock", "warehouse_id")):
        owners, rows = batch.children[table]
        owner_column = "offer_id" if table in ("prices", "stock") else "owner_id"
        counts[table] = run.replace_children(table, owner_column, owners, rows, ("source", owner_column, key))
    run.upsert("image_cache", batch.image_cache, ("source", "image_id"))
    return counts


def _write_cards(run: CatalogRun, batch: RecordBatch) -> None:
    """Cards made up from a variant Товар (kept fresh, but a real Товар of this run wins) or from an
    offer (only when the store has no card; an existing one just counts as seen)."""
    variants = {card["id"]: card for card in reversed(batch.variant_cards)}  # the first of each product wins
    seen = run.seen_runs("products", list(variants))
    run.upsert_products(card for card_id, card in variants.items() if seen.get(card_id, -1) != run.id)
    missing = {card["id"]: card for card in reversed(batch.missing_cards)}
    seen = run.seen_runs("products", list(missing))
    run.upsert_products(card for card_id, card in missing.items() if card_id not in seen)
    run.mark_seen("products", [card_id for card_id, seen_run in seen.items() if seen_run != run.id])


def apply_summary(run: CatalogRun, summary: FileSummary) -> None:
    """Write the reference lists and units, and reconcile a full file."""
    for key, count in summary.counts.items():
        run.stats.add(key, count)
    for table, rows in summary.references.items():
        if rows:
            full = all([row.pop("full") for row in rows])
            write = run.replace_all if full else run.upsert
            run.stats.add(table, write(table, rows, ("source", "id")))
    if summary.units:
        run.stats.add("units", run.upsert("units", list(summary.units.values()), ("source", "id")))
    _reconcile(run, summary)
    run.mode = "full" if any(summary.full.values()) else "changes"


def _reconcile(run: CatalogRun, summary: FileSummary) -> None:
    """A full file: what it lacks is marked removed (never deleted), each file only for what it lists."""
    tables = []
    if summary.kind == "import":
        if summary.full.get("Классификатор") and run.stats.counts.get("groups"):
            tables.append("categories")
        if summary.full.get("Каталог") and "Товары" in summary.listed:
            tables += ["products", "offers"]
        offer_kinds = ("product",)
    else:
        if summary.kind == "offers" and summary.full.get("ПакетПредложений") and "Предложения" in summary.listed:
            tables.append("offers")
        offer_kinds = ("variant",)
    if tables:
        for table, count in run.mark_unseen_removed(tuple(tables), offer_kinds).items():
            run.stats.add(f"removed_{table}", count)


def deactivate_untouched(store: CatalogStore, since: str) -> dict:
    """mode=deactivate: goods and offers no import since ``since`` saw are archived (never removed).

    When no import succeeded since then nothing is archived: deactivating on the strength of a
    session that imported nothing would take the whole catalog off sale.
    """
    moment = _utc(since)
    with store.run(SOURCE, "deactivate") as run:
        first = store.first_run_since(SOURCE, "import", moment)
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

"""Pictures for the feeds: MoySklad image files cached locally, or MoySklad's permanent CDN links.

retailCRM wants a picture as a direct public link to a jpg/png of at most 2 MB, while MoySklad's
image links need our credentials and redirect to file links that expire in about a minute. So:

* ``cache`` mode: after a sync, :func:`cache_images` downloads the first image of every product
  and variant (only new or changed ones) into ``<data_dir>/images`` and ``pictures.py`` serves
  them, without auth, at ``<public_url>/images/<local_file>``.
* ``permanent`` mode (paid plans): :func:`fetch_permanent_links` asks MoySklad for each item's
  ``downloadPermanentHref`` (a public CDN link). That is one request per item with images, so
  with ``changed_since`` only changed items (and images without a link yet) are asked again.

Contract with the feed renderer: table ``image_cache``, one row per (source, image_id), where
``image_id`` is what follows ``/download/`` in ``images.href`` (a lowercase UUID), i.e.
``c.image_id = substr(i.href, instr(i.href, '/download/') + 10)``:

* ``local_file``: ``<image_id>.jpg`` or ``<image_id>.png`` in ``<data_dir>/images``, checked to be
  a jpg/png of at most 2 MB, replaced atomically: when not NULL it can be linked. NULL when the
  image is not cached (yet, or refused: see ``error``).
* ``updated``/``size``: the version ``local_file`` holds; until the next run it can be older than
  ``images`` says (an older copy of the same image is still a right picture).
* ``error``: NULL after a successful download. "not a jpg/png" or "larger than 2 MB": the file
  is refused, ``local_file`` is NULL, and it is not downloaded again until it changes. Any other
  text: the download failed, ``local_file`` keeps an earlier copy if there was one, and the next
  run tries again.
* ``permanent_href``: the CDN link (permanent mode), or NULL. Its file is not downloaded: the file
  name and size MoySklad lists for the image decide; a refused one has NULL and the reason in
  ``error``, and is not asked again until the item changes.

Rows of images that ``images`` no longer names are deleted, and their files with them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from core.account_context import AccountThreadPool
from core.files import LockTaken, locked
from core.pictures import MAX_PICTURE_BYTES, SIGNATURE_LENGTH, picture_kind
from moysklad.client import MoySkladClient
from moysklad.errors import RequestRejected, ServerFailure, TransportFailure
from moysklad.sync import SOURCE, Progress
from moysklad.transform import NOT_AN_IMAGE, listed_picture_problem, too_large
from store import CatalogStore, StoreBusy

log = logging.getLogger(__name__)

WORKERS = 4
FILE_NAME = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(jpg|png)")
PART_PREFIX = ".part-"
LOCK_NAME = ".lock"
DOWNLOAD_FAILED = "download failed"
INVALID_LINK = "invalid image link"
# Rejections that the same file (same `updated` and `size`) will earn again: not retried.
CONTENT_REASONS_PATTERN = re.compile(rf"{re.escape(NOT_AN_IMAGE)}|larger than .* MB")


@dataclass
class ImageCacheResult:
    downloaded: int = 0
    unchanged: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    removed: int = 0


@dataclass
class PermanentLinksResult:
    requested: int = 0
    stored: int = 0
    failed: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Image:
    """One referenced image: the first row of ``images`` that names it."""

    image_id: str
    owner_id: str
    position: int
    updated: str | None
    size: int | None


@dataclass(frozen=True)
class Outcome:
    image: Image
    local_file: str | None = None
    size: int = 0
    reason: str | None = None
    error: str | None = None


class ImageRejected(Exception):
    """The file is not something retailCRM accepts; the message is the reason."""


# --- cache mode ----------------------------------------------------------------------------------

def cache_images(client: MoySkladClient, store: CatalogStore, images_dir: Path, *,
                 progress: Progress | None = None) -> ImageCacheResult:
    """Download new and changed first images, drop files no longer referenced; run after a sync.

    ``progress`` hears ``("pictures", done, total)``: 0 before the first download, then after each one.
    """
    progress = progress or (lambda stage, count, total=None: None)
    images_dir.mkdir(parents=True, exist_ok=True)
    result = ImageCacheResult()
    with _exclusive(images_dir):
        wanted, todo = _plan(store, images_dir, result)
        progress("pictures", 0, len(todo))
        for done, outcome in enumerate(_parallel(lambda image: _fetch(client, images_dir, image, MAX_PICTURE_BYTES), todo), 1):
            _record(store, outcome, result)
            progress("pictures", done, len(todo))
        result.removed = _prune(store, images_dir, set(wanted))
    log.info("images: %d downloaded (%d bytes), %d unchanged, %d removed, failed %s",
             result.downloaded, result.bytes, result.unchanged, result.removed, result.failed or "none")
    return result


def pending_downloads(store: CatalogStore, images_dir: Path) -> int:
    """How many first images :func:`cache_images` would download now (new or changed ones)."""
    return len(_plan(store, images_dir, ImageCacheResult())[1])


def _plan(store: CatalogStore, images_dir: Path, result: ImageCacheResult) -> tuple[dict[str, Image], list[Image]]:
    """The images the catalog links to and those of them to download; the others are counted in ``result``."""
    wanted, invalid = _referenced_images(store)
    if invalid:
        result.failed[INVALID_LINK] = invalid
    cached = store.cached_images(SOURCE)
    todo = []
    for image in wanted.values():
        state = _cache_state(cached.get(image.image_id), image, images_dir)
        if state == "current":
            result.unchanged += 1
        elif state:  # rejected before for its content, and the file has not changed since
            _tally(result.failed, state)
        else:
            todo.append(image)
    return wanted, todo


def _referenced_images(store: CatalogStore) -> tuple[dict[str, Image], int]:
    """Images the catalog links to, by image id, and how many links name no valid image id."""
    wanted: dict[str, Image] = {}
    invalid = 0
    for row in store.image_links(SOURCE):
        image_id = image_id_of(row["href"])
        if image_id is None:
            invalid += 1
        elif image_id not in wanted:
            wanted[image_id] = Image(image_id, row["owner_id"], row["position"], row["updated"], row["size"])
    return wanted, invalid


def image_id_of(href: str | None) -> str | None:
    """The image id ending a download link, only if it is a canonical UUID: it becomes a file name."""
    segment = (href or "").rsplit("/", 1)[-1]
    try:
        return segment if str(uuid.UUID(segment)) == segment else None
    except ValueError:
        return None


def _cache_state(row: tuple | None, image: Image, images_dir: Path) -> str | None:
    """'current' if the cached file is this version, a reason if this version was rejected, else None.

    ``row`` is (updated, size, local_file, error) from image_cache.
    """
    if row is None or row[:2] != (image.updated, image.size):
        return None
    _, _, local_file, error = row
    if local_file and (images_dir / local_file).is_file():
        return "current"
    return error if error and CONTENT_REASONS_PATTERN.fullmatch(error) else None


def _fetch(client: MoySkladClient, images_dir: Path, image: Image, limit_bytes: int) -> Outcome:
    """Download one image through a temp file; failures of this image become its outcome."""
    too_large_text = too_large(limit_bytes)
    if image.size is not None and image.size > limit_bytes:
        return Outcome(image, reason=too_large_text, error=too_large_text)
    part = images_dir / f"{PART_PREFIX}{image.image_id}"
    try:
        kind, size = client.download(f"/download/{image.image_id}",
                                     lambda chunks: _save(chunks, part, limit_bytes, too_large_text))
        local_file = f"{image.image_id}.{kind}"
        os.replace(part, images_dir / local_file)
    except ImageRejected as exc:
        return Outcome(image, reason=str(exc), error=str(exc))
    except (RequestRejected, ServerFailure, TransportFailure) as exc:
        log.warning("image %s of %s not downloaded: %s", image.image_id, image.owner_id, exc)
        return Outcome(image, reason=DOWNLOAD_FAILED, error=str(exc))
    finally:
        part.unlink(missing_ok=True)  # nothing left after a failure; a no-op after the replace
    return Outcome(image, local_file=local_file, size=size)


def _save(chunks: Iterable[bytes], path: Path, limit_bytes: int, too_large: str) -> tuple[str, int]:
    """Write chunks to ``path`` (from the start), checking the format first and the size as it grows."""
    head, size = b"", 0
    with open(path, "wb") as out:
        for chunk in chunks:
            if len(head) < SIGNATURE_LENGTH:
                head += chunk[:SIGNATURE_LENGTH - len(head)]
                if len(head) >= SIGNATURE_LENGTH and picture_kind(head) is None:
                    raise ImageRejected(NOT_AN_IMAGE)
            size += len(chunk)
            if size > limit_bytes:
                raise ImageRejected(too_large)
            out.write(chunk)
    kind = picture_kind(head)
    if kind is None:
        raise ImageRejected(NOT_AN_IMAGE)
    return kind, size


def _record(store: CatalogStore, outcome: Outcome, result: ImageCacheResult) -> None:
    """Save what one download gave; a failed download keeps the copy of an earlier version."""
    image = outcome.image
    version = None
    if outcome.reason == DOWNLOAD_FAILED:
        _tally(result.failed, outcome.reason)
    else:
        if outcome.local_file:
            result.downloaded += 1
            result.bytes += outcome.size
        else:
            _tally(result.failed, outcome.reason)
        version = (image.updated, image.size, outcome.local_file)
    store.record_download(SOURCE, image.image_id, image.owner_id, image.position, error=outcome.error, version=version)


def _tally(failed: dict[str, int], reason: str) -> None:
    failed[reason] = failed.get(reason, 0) + 1


def _prune(store: CatalogStore, images_dir: Path, referenced: set[str]) -> int:
    """Delete rows and files of images the catalog no longer links to, and files no row names.

    Files any source's rows name are kept: pictures 1C sent through the exchange share the folder.
    """
    store.forget_images(SOURCE, referenced)
    keep = store.cached_files()
    removed = 0
    for entry in os.scandir(images_dir):
        if entry.name.startswith(PART_PREFIX):  # left by a process killed mid-download
            os.unlink(entry.path)
        elif FILE_NAME.fullmatch(entry.name) and entry.name not in keep:
            os.unlink(entry.path)
            removed += 1
    return removed


@contextlib.contextmanager
def _exclusive(images_dir: Path) -> Iterator[None]:
    """One cache run per folder: another one would delete the temp files this one writes."""
    try:
        with locked(images_dir / LOCK_NAME, wait=False):
            yield
    except LockTaken:
        raise StoreBusy(f"another image cache run is in progress on {images_dir}") from None


def _parallel(task: Callable, items: Iterable) -> Iterator:
    """Run ``task`` over items on a few threads, yielding results as they finish, with few queued."""
    items = iter(items)
    with AccountThreadPool(max_workers=WORKERS, thread_name_prefix="moysklad-images") as pool:
        pending = {pool.submit(task, item) for item in itertools.islice(items, 2 * WORKERS)}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                pending |= {pool.submit(task, item) for item in itertools.islice(items, len(done))}
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()


# --- permanent mode ------------------------------------------------------------------------------

def fetch_permanent_links(client: MoySkladClient, store: CatalogStore, *,
                          changed_since: str | None = None, progress: Progress | None = None) -> PermanentLinksResult:
    """Store each item's first-image CDN link: one request per item, so only for changed items.

    ``changed_since`` is a MoySklad moment ("YYYY-MM-DD HH:MM:SS", as the sync bookmark); items
    whose image has no link yet are asked regardless.
    """
    progress = progress or (lambda stage, count, total=None: None)
    result = PermanentLinksResult()
    referenced = set(_referenced_images(store)[0])
    items = _items_to_link(store, changed_since)
    progress("picture links", 0, len(items))
    for item, image_id, link, reason in _parallel(lambda item: _permanent_link(client, item), items):
        result.requested += 1
        progress("picture links", result.requested, len(items))
        if reason:
            _tally(result.failed, reason)
            if image_id:  # refused for what it is: not asked again until the item changes
                referenced.add(image_id)
                store.store_permanent_link(SOURCE, image_id, item["id"], None, refused=reason)
            continue
        referenced.add(image_id)
        store.store_permanent_link(SOURCE, image_id, item["id"], link)
        result.stored += 1
    store.forget_images(SOURCE, referenced)
    log.info("permanent image links: %d items asked, %d links stored, failed %s",
             result.requested, result.stored, result.failed or "none")
    return result


def pending_permanent_links(store: CatalogStore, changed_since: str | None) -> int:
    """How many items :func:`fetch_permanent_links` would ask MoySklad about now."""
    return len(_items_to_link(store, changed_since))


def _items_to_link(store: CatalogStore, changed_since: str | None) -> list[dict]:
    """Live items with an image whose first-image link is to be asked: changed ones, or not linked yet."""
    linked = store.linked_images(SOURCE, refused=(NOT_AN_IMAGE, too_large(MAX_PICTURE_BYTES)))
    items = []
    for row in store.first_images(SOURCE):
        image_id = image_id_of(row["href"])
        if image_id and (changed_since is None or image_id not in linked or (row["updated"] or "") >= changed_since):
            items.append(row)
    return items


def _permanent_link(client: MoySkladClient, item: dict) -> tuple[dict, str | None, str | None, str | None]:
    """(item, image id, CDN link, None), or (item, image id or None, None, reason) for one item's first image."""
    path = f"/entity/{item['kind']}/{quote(item['id'], safe='')}/images"
    try:
        page = client.get_page(path, {"fields": "downloadPermanentHref", "limit": 100}, None)
    except (RequestRejected, ServerFailure, TransportFailure) as exc:
        log.warning("permanent image link of %s %s not fetched: %s", item["kind"], item["id"], exc)
        return item, None, None, "request failed"
    first = page["rows"][0] if page["rows"] and isinstance(page["rows"][0], dict) else {}
    meta = first.get("meta") if isinstance(first.get("meta"), dict) else {}
    image_id, link = image_id_of(meta.get("href")), meta.get("downloadPermanentHref")
    if not image_id or not isinstance(link, str) or not link.startswith(("https://", "http://")):
        return item, None, None, "no permanent link in the answer"
    problem = listed_picture_problem(first.get("filename"), first.get("size"))
    if problem:
        return item, image_id, None, problem
    return item, image_id, link, None

"""Each offer's markup from the feed's last render, kept so that the next render builds only what changed.

A render writes, per rendering process, a file of records (product id, offer id, digest, markup)
in the order its rows come: by product. The digest covers everything the markup depends on: the
offer's store row and whether its folder is published; the file's header names the feed's options
and this code. The next render reads the files of the last one forward, in step with its own rows,
and takes an offer's markup from them only when the digest is the same, so a stale or foreign file
costs speed, never correctness. Memory holds one product's offers per file, whatever the size of
the catalog.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import core.money

MAGIC = b"skladbridge offer markup 2\n"
# lengths of the product id, the offer id and the markup; the row's digest; the markup's checksum
RECORD = struct.Struct("<IIIQI")
# A new release may write other markup from the same rows: its files are not this one's.
CODE = hashlib.blake2b(Path(__file__).with_name("icml.py").read_bytes()
                       + Path(core.money.__file__).read_bytes(), digest_size=16).digest()


def options_digest(*options) -> bytes:
    """What the markup depends on besides the row: the feed's resolved options (their repr) and this code."""
    return hashlib.blake2b(repr(options).encode() + CODE, digest_size=16).digest()


def row_digest(packed: bytes, listed: bool) -> int:
    """64 bits that change whenever the offer's packed store row (:meth:`store.CatalogReader.packed_offers`) or its
    folder's place in the feed does (the CRC's start value): two checksums of different kinds, a tenth of the cost
    of a cryptographic hash, and no one gains by forging them."""
    return zlib.crc32(packed, listed) << 32 | zlib.adler32(packed)


def cache_paths(folder: Path, feed: str) -> list[Path]:
    """The markup files of the feed's last render (one per rendering process)."""
    return sorted(folder.glob(f".{feed}.markup.*"))


def cache_path(folder: Path, feed: str, part: int, parts: int) -> Path:
    return folder / f".{feed}.markup.{part + 1}of{parts}"


def last_paths(folder: Path, feed: str, part: int, parts: int) -> list[Path]:
    """The last render's files that may hold the offers of this part: its own file when the last render
    split the catalog the same way (an offer stays in its part while its row lives), else all of them."""
    paths = cache_paths(folder, feed)
    own = cache_path(folder, feed, part, parts)
    return [own] if own in paths else paths


class LastRender:
    """The last render's markup files, read forward by product; :meth:`markup` finds an offer's."""

    def __init__(self, paths: list[Path], options: bytes):
        self._files = []
        for path in paths:
            try:
                file = open(path, "rb", buffering=1 << 20)
            except OSError:
                continue
            if file.read(len(MAGIC) + len(options)) == MAGIC + options:
                self._files.append(_MarkupFile(file))
            else:
                file.close()

    def markup(self, product_id: str, offer_id: str, digest: int) -> tuple[bytes, int] | None:
        """The offer's markup from the last render and its checksum if its digest is the same, else None."""
        for file in self._files:
            found = file.markup(product_id, offer_id, digest)
            if found is not None:
                return found
        return None

    def close(self) -> None:
        for file in self._files:
            file.close()


class _MarkupFile:
    """One file of records in product order; holds the records of one product at a time."""

    def __init__(self, file):
        self._file = file
        self._product = None
        self._offers: dict[bytes, tuple[int, int, bytes]] = {}  # offer id → digest, checksum, markup
        self._ahead = self._next()

    def _next(self) -> tuple[bytes, bytes, int, int, bytes] | None:
        """The next record: product id, offer id, digest, the markup's checksum, markup."""
        head = self._file.read(RECORD.size)
        if len(head) < RECORD.size:
            return None
        product_size, offer_size, markup_size, digest, checksum = RECORD.unpack(head)
        body = self._file.read(product_size + offer_size + markup_size)
        if len(body) < product_size + offer_size + markup_size:  # cut short: the rest is not there
            return None
        markup_start = product_size + offer_size
        return body[:product_size], body[product_size:markup_start], digest, checksum, body[markup_start:]

    def markup(self, product_id: str, offer_id: str, digest: int) -> tuple[bytes, int] | None:
        if product_id != self._product:
            self._product, self._offers = product_id, {}
            wanted, record = product_id.encode(), self._ahead
            while record is not None and record[0] < wanted:  # byte order of UTF-8 is SQLite's ORDER BY
                record = self._next()
            while record is not None and record[0] == wanted:
                self._offers[record[1]] = record[2:]
                record = self._next()
            self._ahead = record
        found = self._offers.get(offer_id.encode())
        if found is None or found[0] != digest:
            return None
        _, checksum, markup = found
        # checked only when taken: a damaged record is built again, never published as it is
        return (markup, checksum) if zlib.crc32(markup) == checksum else None

    def close(self) -> None:
        self._file.close()


class MarkupWriter:
    """This render's records for one rendering process, in a temporary file the build keeps or drops."""

    def __init__(self, path: Path, options: bytes):
        self._file = open(path, "wb", buffering=1 << 20)
        self._file.write(MAGIC + options)

    def add(self, product_id: str, offer_id: str, digest: int, markup: bytes, checksum: int | None = None) -> None:
        product, offer = product_id.encode(), offer_id.encode()
        if checksum is None:
            checksum = zlib.crc32(markup)
        head = RECORD.pack(len(product), len(offer), len(markup), digest, checksum)
        self._file.write(head + product + offer + markup)

    def close(self) -> None:
        self._file.close()


def keep(folder: Path, feed: str, written: list[Path]) -> None:
    """Make this render's files the ones the next render reads, in place of the last render's."""
    kept = [cache_path(folder, feed, part, len(written)) for part in range(len(written))]
    for path in cache_paths(folder, feed):
        if path not in kept:
            path.unlink(missing_ok=True)
    for temporary, path in zip(written, kept):
        os.replace(temporary, path)

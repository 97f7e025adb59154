"""Atomic publishing of a feed file: write beside the target, check, fsync, rename; keep the previous one.

A reader (retailCRM, a browser) always gets either the old file or the new one, whole: the new file
is renamed over the old only after it was written, fsynced and parsed back.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lxml import etree


class PublishRefused(Exception):
    """The new file was not published (malformed, or the guard stopped it); the old one stays."""


class GuardRefused(PublishRefused):
    """The new feed lost too many offers compared with the last published one."""


@dataclass
class Published:
    path: Path
    size: int
    offers: int
    active: int


def feed_paths(feeds_dir: Path, name: str) -> dict[str, Path]:
    return {
        "xml": feeds_dir / f"{name}.xml",
        "gz": feeds_dir / f"{name}.xml.gz",
        "previous": feeds_dir / f"{name}.previous.xml",
    }


def failure_outcome(feeds_dir: Path, name: str) -> str:
    """What readers get after a failed build, as the command line and the log say it."""
    return "the previous file stays published" if feed_paths(feeds_dir, name)["xml"].exists() else "nothing is published yet"


def withdraw(feeds_dir: Path, name: str) -> bool:
    """Stop serving a feed: its files are moved aside (``*.withdrawn``), not deleted; whether it was published."""
    published = False
    for path in feed_paths(feeds_dir, name).values():
        if path.exists():
            path.replace(path.with_name(path.name + ".withdrawn"))
            published = True
    return published


def remove_leftovers(feeds_dir: Path, name: str) -> None:
    """Temp files of a build that was killed; builds of one feed never overlap, so none is live."""
    for leftover in feeds_dir.glob(f".{name}.*.tmp"):
        leftover.unlink(missing_ok=True)


def count_offers(path: Path) -> int:
    """Parse the file back (no entities, no network) and count its offers; raises on malformed XML."""
    count = 0
    for _, element in etree.iterparse(str(path), events=("end",), tag="offer", resolve_entities=False,
                                      no_network=True, huge_tree=True):
        count += 1
        element.clear()
        while element.getprevious() is not None:
            del element.getparent()[0]
    return count


def publish(feeds_dir: Path, name: str, write: Callable[[BinaryIO], tuple[int, int]], *,
            previous_active: int | None, min_ratio: float, force: bool) -> Published:
    """Write a new feed with ``write`` and put it in place atomically.

    ``write`` returns (offers written, active offers among them). The guard compares active
    offers: goods turned inactive (productActivity N) deactivate a shop just as surely as
    missing ones.
    """
    feeds_dir.mkdir(parents=True, exist_ok=True)
    paths = feed_paths(feeds_dir, name)
    pid = os.getpid()
    tmp_xml = feeds_dir / f".{name}.{pid}.xml.tmp"
    tmp_gz = feeds_dir / f".{name}.{pid}.gz.tmp"
    tmp_previous = feeds_dir / f".{name}.{pid}.previous.tmp"
    try:
        with open(tmp_xml, "wb") as out:
            written, active = write(out)
            out.flush()
            os.fsync(out.fileno())
        try:
            parsed = count_offers(tmp_xml)
        except etree.XMLSyntaxError as exc:
            raise PublishRefused(f"the new file is not well-formed XML ({exc}); {failure_outcome(feeds_dir, name)}") from exc
        if parsed != written:
            raise PublishRefused(f"the new file holds {parsed} offers but {written} were written; "
                                 f"{failure_outcome(feeds_dir, name)}")
        if previous_active and not force and active < min_ratio * previous_active:
            raise GuardRefused(
                f"the new feed has {active} active offers, fewer than {min_ratio:.0%} of the {previous_active} "
                f"published last time: not published, so retailCRM keeps the previous catalog. If the catalog "
                f"really shrank, build with --force.")
        _gzip_copy(tmp_xml, tmp_gz)
        if paths["xml"].exists():
            os.link(paths["xml"], tmp_previous)  # a second name for the old file: no moment without a feed
            os.replace(tmp_previous, paths["previous"])
        os.replace(tmp_xml, paths["xml"])
        os.replace(tmp_gz, paths["gz"])
        _fsync_dir(feeds_dir)
        return Published(paths["xml"], paths["xml"].stat().st_size, written, active)
    finally:
        for leftover in (tmp_xml, tmp_gz, tmp_previous):
            leftover.unlink(missing_ok=True)


def _gzip_copy(source_path: Path, target_path: Path) -> None:
    """The precompressed copy served to clients that accept gzip."""
    with open(source_path, "rb") as source, open(target_path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as packed:
            shutil.copyfileobj(source, packed, 1 << 20)
        raw.flush()
        os.fsync(raw.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

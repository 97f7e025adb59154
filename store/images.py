"""Rows of the picture cache: which image files are on disk, which failed and why, CDN links.

The feed renderer joins ``image_cache`` to ``images`` (see ``store.catalog.PICTURES``); the MoySklad
picture cache (``moysklad/images.py``) and the CommerceML import fill it. ``image_id`` is what
follows ``/download/`` in ``images.href``.
"""

from __future__ import annotations

from collections.abc import Iterator

from core.clock import utc_now

IMAGE_CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS image_cache (
    source TEXT NOT NULL, image_id TEXT NOT NULL, owner_id TEXT, position INTEGER, updated TEXT,
    size INTEGER, local_file TEXT, permanent_href TEXT, error TEXT, fetched_at TEXT,
    PRIMARY KEY (source, image_id)) WITHOUT ROWID;
"""


class ImageCacheRows:
    """The picture cache's rows (mixed into the catalog store)."""

    def image_links(self, source: str) -> Iterator[dict]:
        """Every image the catalog links to: owner, position, version and download link, by owner."""
        return self.db.query("SELECT owner_id, position, updated, size, href FROM images WHERE source = ? "
                             "ORDER BY owner_id, position", [source])

    def cached_images(self, source: str) -> dict[str, tuple]:
        """image id → (updated, size, local_file, error) of what the cache holds."""
        return {row[0]: row[1:] for row in self.db.execute(
            "SELECT image_id, updated, size, local_file, error FROM image_cache WHERE source = ?", [source])}

    def record_download(self, source: str, image_id: str, owner_id: str, position: int, *, error: str | None,
                        version: tuple | None) -> None:
        """What one download gave. ``version`` is (updated, size, local_file) of what is now on disk; None
        when the download failed, which keeps the earlier copy's row as it was."""
        values = [source, image_id, owner_id, position, utc_now(), error]
        if version is None:
            sql = ("INSERT INTO image_cache (source, image_id, owner_id, position, fetched_at, error) VALUES (?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (source, image_id) DO UPDATE SET fetched_at = excluded.fetched_at, error = excluded.error")
        else:
            values += list(version)
            sql = ("INSERT INTO image_cache (source, image_id, owner_id, position, fetched_at, error, updated, size, local_file) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, image_id) DO UPDATE SET "
                   "owner_id = excluded.owner_id, position = excluded.position, fetched_at = excluded.fetched_at, "
                   "error = excluded.error, updated = excluded.updated, size = excluded.size, local_file = excluded.local_file")
        with self.db.atomic():
            self.db.execute(sql, values)

    def cached_files(self) -> set[str]:
        """Files any source's rows name (pictures 1C sent through the exchange share the folder)."""
        return {row[0] for row in self.db.execute("SELECT local_file FROM image_cache WHERE local_file IS NOT NULL")}

    def forget_images(self, source: str, keep: set[str]) -> None:
        """Drop the rows of a source's images that are not in ``keep``."""
        gone = [image_id for (image_id,) in self.db.execute("SELECT image_id FROM image_cache WHERE source = ?", [source])
                if image_id not in keep]
        with self.db.atomic():
            self.db.conn.executemany("DELETE FROM image_cache WHERE source = ? AND image_id = ?",
                                     [(source, image_id) for image_id in gone])

    def linked_images(self, source: str, refused: tuple[str, ...] = ()) -> set[str]:
        """Images whose permanent CDN link is known, or was refused for one of the ``refused`` reasons."""
        return {row[0] for row in self.db.execute(
            f"SELECT image_id FROM image_cache WHERE source = ? AND (permanent_href IS NOT NULL "
            f"OR error IN ({', '.join('?' * len(refused)) or 'NULL'}))", [source, *refused])}

    def first_images(self, source: str) -> Iterator[dict]:
        """The first image of every live offer: offer id, kind, its last change and the image link."""
        return self.db.query(
            "SELECT o.id, o.kind, o.updated, i.href FROM images i JOIN offers o ON o.source = i.source AND o.id = i.owner_id "
            "WHERE i.source = ? AND i.position = 0 AND o.removed = 0 ORDER BY o.id", [source])

    def store_permanent_link(self, source: str, image_id: str, owner_id: str, link: str | None,
                             refused: str | None = None) -> None:
        """An image's CDN link, or none and why retailCRM would not take the image (``refused``)."""
        with self.db.atomic():
            self.db.execute(
                "INSERT INTO image_cache (source, image_id, owner_id, position, permanent_href, error) "
                "VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT (source, image_id) DO UPDATE SET "
                "permanent_href = excluded.permanent_href, error = coalesce(excluded.error, image_cache.error)",
                [source, image_id, owner_id, link, refused])

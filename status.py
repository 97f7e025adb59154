"""Machine-readable status of the catalog store and the last MoySklad sync."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from feeds.build import feed_source
from settings import redacted
from store import CatalogStore, StoreError

status_bp = Blueprint("status", __name__)


@status_bp.get("/")
@status_bp.get("/status.json")
def status():
    """What the store holds and how the last sync went; ``ok`` is false when the last sync failed."""
    settings = current_app.config["SETTINGS"]
    try:
        store = CatalogStore(settings.store_path)
    except StoreError as exc:
        return jsonify({"ok": False, "error": str(exc)}), 503
    try:
        last = store.last_run("moysklad", "sync")
        last_ok = store.last_run("moysklad", "sync", "ok")
        feeds = [_feed_status(store, settings, feed) for feed in settings.feeds]
        body = {
            "ok": bool(last and last["status"] in ("ok", "running"))
                  and all(f["last_build"] and f["last_build"]["status"] in ("ok", "running") for f in feeds),
            "demo": settings.is_demo,
            "moysklad": {
                "last_sync": last,
                "last_successful_sync": last_ok,
                "skipped_in_last_sync": store.skipped_items(last["id"])[:50] if last else [],
                "bookmark": store.setting("moysklad", "bookmark"),
                "catalog": store.counts("moysklad"),
            },
            "feeds": feeds,
            "settings": redacted(settings),
        }
    finally:
        store.close()
    return jsonify(body)


def _feed_status(store: CatalogStore, settings, feed) -> dict:
    """The last build and the last published build of a feed, and where retailCRM fetches it."""
    path = f"/feeds/{'***/' if feed.token else ''}{feed.name}.xml"
    return {
        "name": feed.name,
        "source": feed.source,
        "url": settings.public_url.rstrip("/") + path,
        "last_build": store.last_run(feed_source(feed), "build"),
        "last_published": store.last_run(feed_source(feed), "build", "ok"),
    }

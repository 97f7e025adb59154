"""Machine-readable status of the catalog store and the last MoySklad sync."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

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
        body = {
            "ok": bool(last and last["status"] in ("ok", "running")),
            "demo": settings.is_demo,
            "moysklad": {
                "last_sync": last,
                "last_successful_sync": last_ok,
                "skipped_in_last_sync": store.skipped_items(last["id"])[:50] if last else [],
                "bookmark": store.setting("moysklad", "bookmark"),
                "catalog": store.counts("moysklad"),
            },
            "feeds": [feed.name for feed in settings.feeds],
            "settings": redacted(settings),
        }
    finally:
        store.close()
    return jsonify(body)

"""The MoySklad webhook receiver: a change in the catalog asks for a rebuild of the moysklad feeds.

MoySklad wants an answer within 1.5 s, and the request may reach any gunicorn worker while only
one process runs the scheduler, so the receiver only leaves a note in the mailbox (a ``rebuild``
note per account, whose time is that of the latest request); the scheduler picks it up once the
webhooks have been quiet for ``webhooks.debounce_seconds``.

A stock webhook (``reportUrl``) leaves a ``stock`` note instead when feeds of the account push to
retailCRM: the scheduler applies it at once from the cheap changedSince report and pushes what
changed (no sync, no render). Feeds without a ``retailcrm`` section are rebuilt as before.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

from flask import Blueprint, abort, current_app, jsonify, request

from core.account_context import working_for
from core.credentials import tokens_match
from core.settings import Settings
from core.mailbox import REBUILD, STOCK
from core.request_body import read_limited

# moysklad.stock is imported by the view: the app and its command line start without requests or SQLite.

log = logging.getLogger(__name__)

webhooks_bp = Blueprint("webhooks", __name__)

MAX_BODY_BYTES = 1024 * 1024
# Entity types whose changes show in a feed; stock webhooks carry a reportUrl instead of events.
CATALOG_TYPES = frozenset({"product", "variant", "productfolder", "service", "bundle"})


@webhooks_bp.post("/webhooks/moysklad/<secret>")
def moysklad_webhook(secret: str):
    """Answer at once; a catalog or stock change leaves a rebuild request for the scheduler."""
    settings = next((account for account in current_app.config["SETTINGS"].every_account()
                     if tokens_match(secret, account.webhooks.secret)), None)
    if settings is None:
        abort(404)
    with working_for(settings.account):
        return _take_webhook(settings)


def _take_webhook(settings: Settings):
    """The notes the webhook of the account ``settings`` asks for, left in the mailbox; the JSON answer."""
    from moysklad.stock import report_moment

    received_at = time.time()
    body = read_limited(request, MAX_BODY_BYTES)
    if body is None:
        return jsonify({"error": f"the body is larger than {MAX_BODY_BYTES} bytes"}), 413
    try:
        payload = json.loads(body)
        changes = catalog_changes(payload)
        changed_since = report_moment(payload["reportUrl"]) if changes == ["stock"] else None
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[… nested deeper than Python's stack
        reason = str(exc) if isinstance(exc, ValueError) else "the JSON is nested too deeply"
        log.warning("webhook POST /webhooks/moysklad/***: rejected: %s", reason)
        return jsonify({"error": reason}), 400
    pushing = [feed.name for feed in settings.moysklad_feeds if feed.retailcrm is not None]
    rebuilt = [feed.name for feed in settings.moysklad_feeds if not (changes == ["stock"] and feed.retailcrm)]
    rebuild = bool(changes and rebuilt)
    stock = changes == ["stock"] and bool(pushing)
    if rebuild:  # joined with the request still waiting (core.mailbox.JOINS)
        settings.mailbox.post(REBUILD, settings.account, feeds=rebuilt,
                              full=any(change.endswith(" DELETE") for change in changes))
    if stock:
        settings.mailbox.post(STOCK, settings.account, changed_since=changed_since, received_at=received_at)
    summary = ", ".join(f"{count} {change}" for change, count in Counter(changes).items())
    log.info("webhook POST /webhooks/moysklad/***: %s; %s%s", summary or "no change the feeds show",
             f"rebuild of {', '.join(rebuilt)} requested" if rebuild else "no rebuild",
             f"; stock push of {', '.join(pushing)} requested" if stock else "")
    return jsonify({"ok": True, "rebuild": rebuild, "stock": stock})


def catalog_changes(payload) -> list[str]:
    """What in a webhook payload concerns the feeds, e.g. ``["product UPDATE", "stock"]``."""
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object, got {type(payload).__name__}")
    if payload.get("reportUrl"):
        return ["stock"]
    events = payload.get("events")
    if not isinstance(events, list):
        raise ValueError("expected events[] (entity webhook) or reportUrl (stock webhook)")
    changes = []
    for event in events:
        meta = event.get("meta") if isinstance(event, dict) else None
        kind = meta.get("type") if isinstance(meta, dict) else None
        if kind in CATALOG_TYPES:
            changes.append(f"{kind} {event.get('action', '')}".strip())
    return changes

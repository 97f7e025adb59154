"""Cached pictures at ``/images/<file>``: public, because retailCRM fetches the feed's picture links without auth."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, send_from_directory

from moysklad.images import FILE_NAME

pictures_bp = Blueprint("pictures", __name__)

# A file keeps its name while its image id lives; a changed image is revalidated by ETag / Last-Modified.
MAX_AGE = 24 * 3600


@pictures_bp.get("/images/<filename>")
@pictures_bp.get("/images/<account>/<filename>")
def picture(filename: str, account: str = ""):
    """One cached picture (of the main account, or of another one); only names the cache itself
    writes, so no request can choose another path."""
    if not FILE_NAME.fullmatch(filename):
        abort(404)
    view = next((v for v in current_app.config["SETTINGS"].every_account() if v.account == account), None)
    if view is None:
        abort(404)
    return send_from_directory(view.images_dir, filename, max_age=MAX_AGE, conditional=True, etag=True)

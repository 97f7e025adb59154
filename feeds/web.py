"""What retailCRM downloads: the published feeds (whole files only, conditional GETs, gzip when asked)
and the cached pictures they link to (public: retailCRM fetches picture links without auth)."""

from __future__ import annotations

import os
import threading

from flask import Blueprint, Response, abort, current_app, request, send_from_directory
from werkzeug.wsgi import wrap_file

from core.credentials import tokens_match

# feeds.publish and moysklad.images are imported where a request needs them: the app starts without lxml or requests.

feeds_bp = Blueprint("feeds", __name__)


@feeds_bp.route("/feeds/<name>.xml", methods=["GET", "HEAD"])
def public_feed(name: str):
    """A feed without a token (the URL itself is public)."""
    account, feed = _feed(name)
    if feed.token:
        abort(404)
    return _serve(account, feed)


@feeds_bp.route("/feeds/<token>/<name>.xml", methods=["GET", "HEAD"])
def protected_feed(token: str, name: str):
    """A feed whose unguessable token is part of its URL (retailCRM cannot send a password)."""
    account, feed = _feed(name)
    if not tokens_match(token, feed.token):
        abort(404)
    return _serve(account, feed)


def _feed(name: str):
    """The feed of that name (of any account) and its account's settings."""
    found = current_app.config["SETTINGS"].find_feed(name)
    if found is None:
        abort(404)
    return found


def _serve(account, feed) -> Response:
    """Open the file first: a build renaming a new file over it cannot change what this reply sends."""
    from feeds.publish import feed_paths

    paths = feed_paths(account.feeds_dir, feed.name)
    if account.accel_redirect:
        return _hand_to_proxy(account, paths["xml"])
    slots = _download_slots(account.max_feed_downloads) if request.method == "GET" else None
    if slots is None:
        return _send_file(paths)
    if not slots.acquire(blocking=False):
        return Response("Сейчас раздаётся слишком много файлов; повторите через 30 секунд\n", status=503,
                        mimetype="text/plain", headers={"Retry-After": "30"})
    try:
        return _send_file(paths, slots.release)
    except BaseException:
        slots.release()
        raise


def _download_slots(limit: int) -> threading.BoundedSemaphore | None:
    """This process's download slots, so that slow downloads leave threads for everything else."""
    if not limit:
        return None
    slots = current_app.extensions.get("feed_downloads")
    return slots or current_app.extensions.setdefault("feed_downloads", threading.BoundedSemaphore(limit))


def _send_file(paths: dict, release=None) -> Response:
    """The feed (gzipped when asked and ready) with validators; ``release`` is called once the server
    closes the file: after its last byte, or when the client went away."""
    wants_gzip = request.accept_encodings["gzip"] > 0  # «gzip;q=0» refuses it
    handle = None
    if wants_gzip:
        handle = _open(paths["gz"])
        if handle is not None and _open_is_stale(handle, paths["xml"]):
            handle.close()
            handle = None
    gzipped = handle is not None
    if handle is None:
        handle = _open(paths["xml"])
    if handle is None:
        if release:
            release()
        return _not_built()
    if release:
        handle = _ReleasingFile(handle, release)
    stat = os.fstat(handle.fileno())
    etag = f"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{stat.st_size:x}" + ("-gz" if gzipped else "")
    response = Response(wrap_file(request.environ, handle), mimetype="application/xml", direct_passthrough=True)
    response.headers["Content-Type"] = "application/xml; charset=utf-8"
    response.content_length = stat.st_size
    response.set_etag(etag)
    response.last_modified = stat.st_mtime
    response.cache_control.no_cache = True  # always revalidate: a cheap 304 when nothing changed
    response.headers["Vary"] = "Accept-Encoding"
    if gzipped:
        response.headers["Content-Encoding"] = "gzip"
    return response.make_conditional(request, accept_ranges=True, complete_length=stat.st_size)


class _ReleasingFile:
    """A feed file that frees its download slot when the server closes it (sendfile still works:
    the server sees the real file descriptor)."""

    def __init__(self, handle, release):
        self.handle, self._release = handle, release

    def fileno(self) -> int:
        return self.handle.fileno()

    def read(self, size: int = -1) -> bytes:
        return self.handle.read(size)

    def seek(self, *args) -> int:
        return self.handle.seek(*args)

    def tell(self) -> int:
        return self.handle.tell()

    def close(self) -> None:
        self.handle.close()
        release, self._release = self._release, None
        if release:
            release()


def _hand_to_proxy(account, path) -> Response:
    """nginx sends the file (the .gz beside it when the client accepts gzip, with gzip_static) and
    answers conditional requests; the app only decided that this client may have it."""
    if not path.exists():
        return _not_built()
    response = Response(b"", mimetype="application/xml")
    response.headers["Content-Type"] = "application/xml; charset=utf-8"
    response.headers["X-Accel-Redirect"] = account.accel_redirect + path.relative_to(account.instance_dir).as_posix()
    response.cache_control.no_cache = True
    return response


def _not_built() -> Response:
    return Response("Фид ещё не собран: first build has not finished yet\n", status=404, mimetype="text/plain")


def _open(path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _open_is_stale(handle, xml_path) -> bool:
    """The .gz is replaced right after the .xml: in that instant serve the plain file instead."""
    try:
        return os.fstat(handle.fileno()).st_mtime_ns < os.stat(xml_path).st_mtime_ns
    except FileNotFoundError:
        return False


# A file keeps its name while its image id lives; a changed image is revalidated by ETag / Last-Modified.
MAX_AGE = 24 * 3600


@feeds_bp.get("/images/<filename>")
@feeds_bp.get("/images/<account>/<filename>")
def picture(filename: str, account: str = ""):
    """One cached picture (of the main account, or of another one); only names the cache itself
    writes, so no request can choose another path."""
    from moysklad.images import FILE_NAME

    if not FILE_NAME.fullmatch(filename):
        abort(404)
    view = next((v for v in current_app.config["SETTINGS"].every_account() if v.account == account), None)
    if view is None:
        abort(404)
    return send_from_directory(view.images_dir, filename, max_age=MAX_AGE, conditional=True, etag=True)

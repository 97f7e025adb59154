"""Files 1C uploads: safe names, bounded streaming appends and careful zip extraction.

Every name comes from the client (the ``filename`` parameter or a zip entry), so it is checked
before it touches the disk: a relative path of plain components under the session's upload
folder, nothing that could climb out of it or confuse a filesystem. Texts of :class:`UploadError`
are shown to the 1C operator, hence in Russian.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import stat
import zipfile
from pathlib import Path

from core.pictures import MAX_PICTURE_BYTES
from core.settings import ExchangeSettings
from exchange.sessions import ExchangeSession, Refused

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
MAX_NAME_CHARS = 255
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 8
# One component: letters, digits and a few punctuation marks 1C and MoySklad use in names;
# never starting with a dot (hidden files, "." and "..") nor ending with a dot or a space.
COMPONENT = re.compile(r"[\w()\[\]+@,=#~-]([\w .()\[\]+@,=#~-]*[\w()\[\]+@,=#~-])?")
# Zip bomb limits: unpacked bytes of one archive, and the packing ratio of an entry, and of the whole archive, that
# unpack to over 1 MB (CommerceML packs some 10-30 times, pictures not at all); the disk room an extraction leaves.
MAX_UNPACKED_BYTES = 20 * 1024 ** 3
MAX_RATIO = 200
RATIO_MIN_BYTES = 1024 * 1024
MAX_ENTRIES = 1_000_000
DISK_RESERVE_BYTES = 1024 ** 3  # the store, the feeds and the pictures must still have room to be written


class UploadError(Exception):
    """An upload or archive is refused; the message (Russian) goes back to 1C."""


def safe_name(filename: str | None) -> str:
    """The client's file name as a checked relative path, or UploadError saying what is wrong. Backslashes are
    folder separators (1C on Windows: import_files\\ab\\x.jpg), as in the Картинка paths and zip entries."""
    if not filename:
        raise UploadError("не указано имя файла (параметр filename)")
    shown = repr(filename[:80])
    if len(filename) > MAX_NAME_CHARS:
        raise UploadError(f"имя файла длиннее {MAX_NAME_CHARS} символов: {shown}…")
    filename = filename.replace("\\", "/")
    if filename.startswith("/"):
        raise UploadError(f"абсолютный путь в имени файла: {shown}")
    parts = filename.split("/")
    if len(parts) > MAX_DEPTH:
        raise UploadError(f"слишком глубокая вложенность папок в имени файла: {shown}")
    for part in parts:
        if part in (".", ".."):
            raise UploadError(f"переход по папкам («{part}») в имени файла: {shown}")
        if not COMPONENT.fullmatch(part) or len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise UploadError(f"недопустимые символы или пустая часть в имени файла: {shown}")
    return filename


def target_path(root: Path, name: str) -> Path:
    """Where a checked name lives under root; refuses any path that still resolves outside it."""
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise UploadError(f"файл {name!r} оказался бы вне папки обмена")
    return path


def receive(session: ExchangeSession, name: str, stream, declared_length: int | None,
            config: ExchangeSettings) -> tuple[Path, int]:
    """mode=file: append a request body to the named file of the session, within the request and
    session limits; returns the file's path and the bytes this request wrote.

    A name already imported or extracted in this session starts over (1C sends it anew).
    """
    with session.upload_lock():
        with session.state() as state:
            room = config.max_session_bytes - on_disk(state)
            limit = min(config.file_limit, room)
            too_large = (f"файл {name}: больше {config.file_limit} байт за один запрос (file_limit)"
                         if limit == config.file_limit else
                         f"файл {name}: превышен объём сеанса {config.max_session_bytes} байт (exchange.max_session_bytes)")
            if (declared_length or 0) > limit:
                raise UploadError(too_large)
            path = target_path(session.upload_dir, name)
            _start_or_append(state, name, path)
            new = not path.exists()
            if new:  # counted now, so that an archive extracted meanwhile cannot take the last place too
                if state.get("created", 0) >= config.max_session_files:
                    raise UploadError(f"файл {name} не принят: в сеансе не больше {config.max_session_files} файлов "
                                      "(exchange.max_session_files)")
                state["created"] = state.get("created", 0) + 1
            size = path.stat().st_size if not new else 0
            temp = None if _grows_in_place(path) else _temp_beside(path)
            # a worker killed mid-chunk leaves this behind: the sweep then counts what did arrive
            state["receiving"] = {"name": name, "from": size, "new": new,
                                  "temp": str(temp.relative_to(session.upload_dir)) if temp else None}
        written, stored = 0, False
        try:
            written = append_stream(stream, path, limit, too_large, temp)
            stored = True
        except OSError as exc:
            raise UploadError(f"не удалось записать файл {name}: {exc.strerror or exc}") from None
        finally:
            with session.state() as state:
                state.pop("receiving", None)
                if stored:  # an empty file is a file too
                    state["bytes"] += written
                    _count_file(state, name, written, new)
                elif new:
                    state["created"] -= 1
    log.info("exchange session %s: %s bytes appended to %r", session.id, written, name)
    return path, written


def _start_or_append(state: dict, name: str, path: Path) -> None:
    """A file being imported is refused; one imported or extracted before starts over."""
    job = state["imports"].get(name)
    if job and job["status"] == "running":
        raise Refused(f"файл {name} сейчас загружается в каталог: дождитесь окончания")
    if job or state["zips"].get(name, "pending") != "pending":
        state["imports"].pop(name, None)
        state["zips"].pop(name, None)
        path.unlink(missing_ok=True)
    if name.lower().endswith(".zip"):
        state["zips"][name] = "pending"


def _grows_in_place(path: Path) -> bool:
    """Only an upload no import can serve may grow in place: one over MAX_PICTURE_BYTES (the import refuses it,
    checking the very file it links) and linked nowhere else; any other write makes a new file (see append_stream)."""
    try:
        info = path.stat()
    except OSError:  # not there (a new file), or not reachable: appending will say what is wrong
        return False
    return info.st_size > MAX_PICTURE_BYTES and info.st_nlink == 1


def _temp_beside(path: Path) -> Path:
    """Where a file is written before it takes path's name: a name no client can send (it starts with a dot) nor
    guess, so that no Картинка of an import can point at a file still being written."""
    return path.with_name(f".{secrets.token_hex(8)}.part")


def _create(path: Path) -> int:
    """A new file (a new inode): never one an import linked into the images folder, never through a link."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)


def on_disk(state: dict) -> int:
    """Bytes the session put on disk: what was uploaded and what its archives unpacked to (what
    exchange.max_session_bytes limits)."""
    return state["bytes"] + state.get("unpacked", 0)


def _count_file(state: dict, name: str, written: int, new: bool) -> None:
    """Top-level files are listed one by one; pictures in subfolders are counted per folder."""
    if "/" not in name:
        state["files"].setdefault(name, {"bytes": 0})["bytes"] += written
        return
    folder = state["files"].setdefault(name.split("/")[0] + "/", {"files": 0, "bytes": 0})
    folder["bytes"] += written
    folder["files"] += int(new)


def append_stream(stream, path: Path, limit: int, too_large: str, temp: Path | None = None) -> int:
    """Append the request body to path in chunks; past ``limit`` bytes refuse with ``too_large``.

    With ``temp`` the file is made anew there (what arrived before, then the body) and takes path's name once
    whole: a picture the images folder links to never changes, and an import never links half a chunk. Without
    it the body is appended in place (see _grows_in_place). Returns the bytes written. On any failure the file
    is left as it was before this request (or not there at all), so a refused chunk never corrupts what 1C
    sent earlier.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if temp is None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        with os.fdopen(fd, "ab") as handle:
            start = handle.tell()
            try:
                return _copy_body(stream, handle, limit, too_large)
            except BaseException:
                handle.truncate(start)
                raise
    try:
        with os.fdopen(_create(temp), "wb") as handle:
            with contextlib.suppress(FileNotFoundError), open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as before:
                shutil.copyfileobj(before, handle, CHUNK_BYTES)
            written = _copy_body(stream, handle, limit, too_large)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return written


def _copy_body(stream, handle, limit: int, too_large: str) -> int:
    written = 0
    while chunk := stream.read(CHUNK_BYTES):
        written += len(chunk)
        if written > limit:
            raise UploadError(too_large)
        handle.write(chunk)
    return written


def archive_names(archive: Path) -> list[str]:
    """Names of the files in a zip (to tell whether an archive brings the file 1C asks to import)."""
    with _open_zip(archive) as zf:
        return [_entry_name(info) for info in zf.infolist() if not info.is_dir()]


def extract_archive(session: ExchangeSession, name: str, config: ExchangeSettings) -> int:
    """Extract an archive the session uploaded (see extract_zip), its files counted against the session's
    limits before any is written; returns the files written."""
    def reserve(total: int, files: int) -> None:
        with session.state() as state:
            used, created = on_disk(state), state.get("created", 0)
            if used + total > config.max_session_bytes:
                raise UploadError(f"архив {name} не распакован: его файлы ({total} байт) превысили бы объём сеанса "
                                  f"{config.max_session_bytes} байт (exchange.max_session_bytes), уже занято {used}")
            if created + files > config.max_session_files:
                raise UploadError(f"архив {name} не распакован: с его {files} файлами в сеансе их было бы {created + files}, "
                                  f"а можно не больше {config.max_session_files} файлов (exchange.max_session_files)")
            state["unpacked"] = state.get("unpacked", 0) + total
            state["created"] = created + files

    return extract_zip(target_path(session.upload_dir, name), session.upload_dir, reserve)


def extract_zip(archive: Path, root: Path, reserve=None) -> int:
    """Extract a complete archive under root after checking every entry; returns the files written.

    Refused as a whole, before anything is written: names that escape root (zip slip, absolute
    names), symbolic links, archives that unpack absurdly (zip bombs), and what ``reserve(bytes,
    files)`` refuses (it raises UploadError). The declared sizes are trustworthy upper bounds:
    zipfile never reads past them and checks each CRC.
    """
    with _open_zip(archive) as zf:
        entries = [info for info in zf.infolist() if not info.is_dir()]
        total = sum(info.file_size for info in entries)
        _check_bomb(archive.name, entries, archive.stat().st_size)
        _check_room(archive.name, total, root)
        targets = [(info, target_path(root, _entry_name(info))) for info in entries]
        if reserve is not None:
            reserve(total, len(targets))
        for info, path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = _temp_beside(path)  # a new file, renamed: never written into a picture the feeds serve
            try:
                with zf.open(info) as source, os.fdopen(_create(temp), "wb") as target:
                    shutil.copyfileobj(source, target, CHUNK_BYTES)
                os.replace(temp, path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
    return len(targets)


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(f"архив {archive.name} повреждён или передан не полностью: {exc}") from None


def _check_room(name: str, total: int, root: Path) -> None:
    """Refuse an archive whose files would leave the data disk without room for the store and the feeds."""
    free = shutil.disk_usage(root).free
    if total > free - DISK_RESERVE_BYTES:
        raise UploadError(f"архив {name} не распакован: его файлам нужно {total} байт, а на диске сервера свободно {free} "
                          f"(и {DISK_RESERVE_BYTES} нужны каталогу и фидам); освободите место и повторите обмен")


def _entry_name(info: zipfile.ZipInfo) -> str:
    """A zip entry's name, checked like an uploaded one (Windows separators read as folders)."""
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UploadError(f"архив содержит символическую ссылку {info.filename[:80]!r}: не распакован")
    try:
        return safe_name(info.filename)
    except UploadError as exc:
        raise UploadError(f"архив не распакован: {exc}") from None


def _check_bomb(name: str, entries: list[zipfile.ZipInfo], archive_bytes: int) -> None:
    if len(entries) > MAX_ENTRIES:
        raise UploadError(f"архив {name}: больше {MAX_ENTRIES} файлов, не распакован")
    total = sum(info.file_size for info in entries)
    if total > MAX_UNPACKED_BYTES:
        raise UploadError(f"архив {name} распаковывается в {total} байт (больше {MAX_UNPACKED_BYTES}): не распакован")
    if total > RATIO_MIN_BYTES and total > MAX_RATIO * max(archive_bytes, 1):  # many entries each under the entry check
        raise UploadError(f"архив {name} ({archive_bytes} байт) распаковывается в {total} байт, в {total // max(archive_bytes, 1)} "
                          f"раз больше (больше {MAX_RATIO}) — похоже на zip-бомбу, не распакован")
    for info in entries:
        if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise UploadError(f"архив {name}: файл {info.filename[:80]!r} сжат в {info.file_size // max(info.compress_size, 1)} раз "
                              f"(больше {MAX_RATIO}) — похоже на zip-бомбу, не распакован")

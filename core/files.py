"""File primitives shared by every part: whole-file replacement and advisory locks between processes.

gunicorn runs several workers and the CLI is another process, so anything they share on disk is
written whole (a reader never sees half a file) and guarded by ``flock`` (released by the kernel
when a process dies, so a killed holder never leaves a lock behind).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO


class LockTaken(Exception):
    """Another live process holds the lock; ``holder`` is the pid it wrote, when it wrote one."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by process {holder}")
        self.path = path
        self.holder = holder


def atomic_write(path: Path, data: str | bytes) -> None:
    """Replace the file whole through a temp file beside it: readers see the old or the new one."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        mode, encoding = ("wb", None) if isinstance(data, bytes) else ("w", "utf-8")
        with os.fdopen(handle, mode, encoding=encoding) as out:
            out.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def try_lock(path: Path, *, note_pid: bool = False, patience: float = 0.0) -> IO | None:
    """The lock on ``path`` held for as long as the returned file stays open, or None when taken.

    With ``note_pid`` the holder writes its pid into the file, for whoever finds it taken. With
    ``patience`` a lock taken only for a moment (by :func:`lock_is_held`) is tried again that long.
    """
    handle = open(path, "a+")
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.01)
    if note_pid:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return handle


def release(handle: IO) -> None:
    """Give up a lock taken with :func:`try_lock`."""
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def lock_is_held(path: Path) -> bool:
    """Whether a live process holds the lock on ``path`` (probed with a shared lock released at once)."""
    try:
        handle = open(path)
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def lock_holder(path: Path) -> str:
    """The pid the holder of a lock wrote, for an operator's message."""
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def locked(path: Path, *, wait: bool = True, note_pid: bool = False) -> Iterator[None]:
    """Hold the lock on ``path`` for the block; without ``wait`` a taken lock raises :class:`LockTaken`."""
    if wait:
        with open(path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    handle = try_lock(path, note_pid=note_pid)
    if handle is None:
        raise LockTaken(path, lock_holder(path))
    try:
        yield
    finally:
        release(handle)

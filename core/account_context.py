"""Which account's work the running code does, so that every log line it makes can say whose it is.

Set where an account's job starts (the build pool, a webhook, a command with ``--account``); worker
threads that job starts take it along when they are an :class:`AccountThreadPool`'s. A new thread
starts without it, so a pool of plain threads would log the job's lines as nobody's.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

_ACCOUNT: contextvars.ContextVar[str | None] = contextvars.ContextVar("skladbridge_account", default=None)


def current_account() -> str | None:
    """The account whose work runs here ('' = the main one), None outside any account's work."""
    return _ACCOUNT.get()


@contextlib.contextmanager
def working_for(account: str) -> Iterator[None]:
    """Inside, the code works for ``account`` ('' = the main one)."""
    token = _ACCOUNT.set(account)
    try:
        yield
    finally:
        _ACCOUNT.reset(token)


class AccountThreadPool(ThreadPoolExecutor):
    """A thread pool whose tasks run in the context of the code that submitted them (its account included)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)

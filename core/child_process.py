"""Heavy work in a child process whose results stream back through a pipe, one message at a time.

The child is forked from a fork server: a clean process that runs no thread of gunicorn or the
scheduler, so forking it is safe where forking a threaded worker is not (a thread could hold a
lock the child then waits on forever). The work is a generator function: each value it yields
reaches the parent as one pickled message, and the pipe's small buffer keeps about one message in
flight, so memory stays flat. Whatever happens in the child reaches the parent: its return value,
an expected exception re-raised as itself, a crash as :class:`ChildCrashed` with its traceback, a
killed child as :class:`ChildLost`; and the child is stopped whatever happens to the parent's loop.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import sys
import threading
import traceback
from collections.abc import Callable, Iterator

_PROCESSES = multiprocessing.get_context("forkserver")
_PRELOAD: list[str] = []
_READY = threading.Event()  # set once a child has started, which the fork server does only when it is up
_WARMING_UP = threading.Lock()  # held while a warm-up child runs, so that builds do not start one each
_STARTING = threading.Lock()  # held while a child starts with the main script's path hidden


class ChildCrashed(RuntimeError):
    """The child failed unexpectedly; the message is its traceback, for the server log."""


class ChildLost(RuntimeError):
    """The child stopped without finishing (killed, out of memory) and without a word."""


def start_soon() -> None:
    """Start the fork server on a thread now, so that the first child, seconds later, does not wait for
    its start (a fresh interpreter importing the preloaded modules: some 0.2 s); :func:`ready` tells
    when it is up. Once it is up (or starting), this does nothing."""
    if _READY.is_set() or not _WARMING_UP.acquire(blocking=False):
        return
    threading.Thread(target=_warm_up, name="forkserver-start", daemon=True).start()


def ready() -> bool:
    """Whether a child starts at once: the fork server has started and loaded its modules."""
    return _READY.is_set()


def _warm_up() -> None:
    try:
        with run_in_child(_nothing, name="forkserver-warm-up"):
            pass
    finally:
        _WARMING_UP.release()


def _nothing() -> Iterator:
    yield from ()


def preload(module: str) -> None:
    """Import ``module`` in the fork server before it forks children, so they start at once."""
    if module not in _PRELOAD:
        _PRELOAD.append(module)
        _PROCESSES.set_forkserver_preload(list(_PRELOAD))


class ChildStream:
    """The messages of one child, in order; ``result`` is what its generator returned."""

    def __init__(self, receiver, expected: tuple[type[BaseException], ...]):
        self.receiver = receiver
        self.expected = expected
        self.result = None

    def __iter__(self) -> Iterator:
        while True:
            ended, value = self.receive()
            if ended:
                return
            yield value

    def receive(self) -> tuple[bool, object]:
        """The next message as (False, message), or (True, None) once the child has ended well."""
        try:
            kind, value = self.receiver.recv()
        except (EOFError, OSError):  # OSError: the pipe ended in the middle of a message
            raise ChildLost("the child process stopped unexpectedly") from None
        if kind == "message":
            return False, value
        if kind == "done":
            self.result = value
            return True, None
        if kind == "raise":
            raise value
        raise ChildCrashed(value)


def interleaved(streams: list[ChildStream]) -> Iterator[tuple[int, object]]:
    """The messages of several children as they arrive, each with its stream's index, until all have ended."""
    waiting = {stream.receiver: n for n, stream in enumerate(streams)}
    while waiting:
        for receiver in multiprocessing.connection.wait(list(waiting)):
            n = waiting[receiver]
            ended, value = streams[n].receive()
            if ended:
                del waiting[receiver]
            else:
                yield n, value


@contextlib.contextmanager
def run_in_child(work: Callable[..., Iterator], *args, name: str,
                 expected: tuple[type[BaseException], ...] = ()) -> Iterator[ChildStream]:
    """Run the generator function ``work(*args)`` in a child; yield the stream of what it yields.

    Exceptions of the ``expected`` types are re-raised in the parent as they were (they must
    pickle); any other becomes :class:`ChildCrashed`.
    """
    receiver, sender = _PROCESSES.Pipe(duplex=False)
    process = _PROCESSES.Process(target=_child_main, args=(sender, work, args, expected), name=name, daemon=True)
    _start_without_main(process)
    _READY.set()
    sender.close()
    try:
        yield ChildStream(receiver, expected)
    finally:
        receiver.close()  # a child still sending gets a broken pipe and exits
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()


def _start_without_main(process: multiprocessing.Process) -> None:
    """Start the child without running the main script (gunicorn's, flask's) again in it.

    Before Python 3.14 a forkserver child runs the parent's main script again on start, preloaded or
    not (CPython gh-98552, gh-126631): gunicorn's imports cost each child some 60 ms. The works run
    here are functions of preloaded modules and never need it, so the script's path is not passed.
    """
    main = sys.modules["__main__"]
    with _STARTING:
        path = main.__dict__.pop("__file__", None)
        try:
            process.start()
        finally:
            if path is not None:
                main.__file__ = path


def _child_main(sender, work: Callable[..., Iterator], args: tuple, expected: tuple) -> None:
    """The child: every outcome, even a crash, reaches the parent as a message."""
    try:
        generator = work(*args)
        while True:
            try:
                value = next(generator)
            except StopIteration as stop:
                sender.send(("done", stop.value))
                break
            sender.send(("message", value))
    except BrokenPipeError:
        pass  # the parent gave up (its run failed or its process stopped): nothing to tell
    except expected as exc:
        sender.send(("raise", exc))
    except BaseException:  # noqa: BLE001 — the parent must hear of it rather than wait forever
        sender.send(("crash", f"{getattr(work, '__qualname__', work)} failed in a child process:\n{traceback.format_exc()}"))
    finally:
        sender.close()

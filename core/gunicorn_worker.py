"""gunicorn's threaded worker with a deadline for the request head, so half-sent requests cannot hold every thread.

gthread hands a connection to a thread as soon as its first bytes arrive, and the thread then waits for the rest
of the request line and headers without any limit: a few dozen connections that send ``GET / HTTP/1.1`` and
never finish (slowloris) froze every feed, the exchange and the health page until they closed. Here a request
head has ``REQUEST_HEAD_SECONDS`` (env ``SKLADBRIDGE_REQUEST_HEAD_SECONDS``) from the moment its connection is
queued for a thread: a connection still holding half a head when a thread takes it after that is closed at once,
and a watchdog shuts the reading side of one a thread is still waiting on, which then sees the end of the stream
and goes back to the pool. A burst of half-sent requests thus costs one deadline, not one per pool's worth. The
body is not limited here: 1C's upload chunks may be slow, and each is bounded by the exchange's own size limits.
A server facing the internet still belongs behind nginx (deploy/nginx.conf), which reads every head itself.

A request gunicorn cannot parse (an over-long header, a broken request line) it answers itself, before the app:
here as plain text whose first line is ``failure``, like every refusal of the exchange, never its HTML page.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker


def environment_number(name: str, default: int | float, kind: type = int) -> int | float:
    """A positive number from the environment variable ``name`` (``default`` when unset); one line naming the
    variable and exit 1 when it is something else, where Python's ValueError made gunicorn print a traceback."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not value > 0:
        what = "a whole number" if kind is int else "a number of seconds"
        raise SystemExit(f"skladbridge: config error: {name}={text!r} is not {what} above 0; fix or unset it")
    return value


REQUEST_HEAD_SECONDS = environment_number("SKLADBRIDGE_REQUEST_HEAD_SECONDS", 15.0, float)
WATCH_INTERVAL = min(1.0, REQUEST_HEAD_SECONDS / 4)
HEAD_PEEK_BYTES = 65536  # a request line and headers of any client seen (gunicorn's limits allow more, rarely met)
# What the operator reads in 1C or MoySklad for each status gunicorn answers a request it refuses with.
REFUSED_REQUEST_TEXTS = {
    400: "сервер не смог разобрать запрос",
    403: "запрос запрещён",
    414: "строка запроса длиннее 8 КБ",
    417: "ожидание (Expect) не поддерживается",
    431: "заголовки запроса слишком большие",
    500: "внутренняя ошибка сервера; подробности в журнале сервиса",
    501: "кодирование передачи не поддерживается",
}


class HeadDeadlineWorker(ThreadWorker):
    """gthread, but a request head that takes longer than REQUEST_HEAD_SECONDS ends its connection."""

    def init_process(self):
        self.head_deadlines: dict[socket.socket, float] = {}  # connections reading a request head → when they give up
        self.deadlines_lock = threading.Lock()
        threading.Thread(target=self._watch_heads, name="request-head-watchdog", daemon=True).start()
        super().init_process()

    def enqueue_req(self, conn):
        conn.head_deadline = time.monotonic() + REQUEST_HEAD_SECONDS  # new, kept alive or pending: a head is due
        super().enqueue_req(conn)

    def handle(self, conn):
        deadline = getattr(conn, "head_deadline", time.monotonic() + REQUEST_HEAD_SECONDS)
        if time.monotonic() >= deadline and not _head_complete(conn):
            _cut(conn.sock)  # it waited its whole deadline in the queue and still has half a head
            return False
        with self.deadlines_lock:
            self.head_deadlines[conn.sock] = deadline
        try:
            return super().handle(conn)
        finally:
            self._head_arrived(conn.sock)

    def handle_request(self, req, conn):
        self._head_arrived(conn.sock)  # the head is parsed: the application's time is not limited here
        return super().handle_request(req, conn)

    def _head_arrived(self, sock: socket.socket) -> None:
        with self.deadlines_lock:
            self.head_deadlines.pop(sock, None)

    def _watch_heads(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            with self.deadlines_lock:
                late = [sock for sock, deadline in self.head_deadlines.items() if deadline <= now]
                for sock in late:
                    del self.head_deadlines[sock]
            for sock in late:
                _cut(sock)


def _head_complete(conn) -> bool:
    """Whether a whole request head waits to be read (in the socket, or read ahead by the last request's parser)."""
    if conn.parser is not None and b"\r\n\r\n" in conn.parser.unreader.buf.getvalue():
        return True
    try:
        waiting = conn.sock.recv(HEAD_PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing yet, or the connection is gone
        return False
    return b"\r\n\r\n" in waiting


def _cut(sock: socket.socket) -> None:
    """End a connection whose head is late: its thread (if one waits on it) reads the end of the stream, and
    gunicorn's graceful close, which would otherwise wait up to 2 s on the worker's main loop for a client that
    never closes, finds nothing to drain."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed meanwhile
        pass



def write_refusal(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it refuses before the app, as plain text: 1C shows the body of an exchange
    answer and reads «failure» in its first line, and nothing else we serve answers with an HTML page."""
    text = REFUSED_REQUEST_TEXTS.get(status_int, "запрос отклонён")
    body = f"failure\n{text} (HTTP {status_int} {reason}){': ' + mesg if mesg else ''}\n".encode("utf-8", "replace")
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"X-Content-Type-Options: nosniff\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = write_refusal  # what Worker.handle_error calls; gunicorn has no setting for it

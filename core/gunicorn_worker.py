"""gunicorn's threaded worker with a deadline for the request head, so half-sent requests cannot hold every thread.

gthread hands a connection to a thread as soon as its first bytes arrive, and the thread then waits for the rest
of the request line and headers without any limit: a few dozen connections that send ``GET / HTTP/1.1`` and
never finish (slowloris) froze every feed, the exchange and the health page until they closed. Here a watchdog
shuts down the reading side of any connection whose head has not arrived whole within ``REQUEST_HEAD_SECONDS``
(env ``SKLADBRIDGE_REQUEST_HEAD_SECONDS``); the thread sees the end of the stream and goes back to the pool. The
body is not limited here: 1C's upload chunks may be slow, and each is bounded by the exchange's own size limits.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from gunicorn.workers.gthread import ThreadWorker

REQUEST_HEAD_SECONDS = float(os.environ.get("SKLADBRIDGE_REQUEST_HEAD_SECONDS", "15"))
WATCH_INTERVAL = min(1.0, REQUEST_HEAD_SECONDS / 4)


class HeadDeadlineWorker(ThreadWorker):
    """gthread, but a request head that takes longer than REQUEST_HEAD_SECONDS ends its connection."""

    def init_process(self):
        self.head_deadlines: dict[socket.socket, float] = {}  # connections reading a request head → when they give up
        self.deadlines_lock = threading.Lock()
        threading.Thread(target=self._watch_heads, name="request-head-watchdog", daemon=True).start()
        super().init_process()

    def handle(self, conn):
        with self.deadlines_lock:
            self.head_deadlines[conn.sock] = time.monotonic() + REQUEST_HEAD_SECONDS
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
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:  # closed meanwhile
                    pass

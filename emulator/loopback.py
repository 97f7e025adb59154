"""What every emulator shares: a server on a background thread, the common control calls, a hard reset."""

from __future__ import annotations

import json
import signal
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    """Lifecycle of an emulator whose ``httpd`` is set up by the subclass: start/stop, ``with``, CLI serving."""

    thread_name = "emulator"
    httpd: ThreadingHTTPServer

    def start(self):
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def serve_until_interrupted(self) -> None:
        """Serve in this thread until Ctrl+C, then free the port (the CLI commands).

        A background job of a shell script starts with SIGINT ignored, and Python keeps it so: the
        emulator would then outlive ``kill -INT``. It stops on SIGINT however it was started.
        """
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.httpd.server_close()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class QuietHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 that looks like nginx, logs nothing and hands every method to ``dispatch``."""

    protocol_version = "HTTP/1.1"
    server_version = "nginx"
    sys_version = ""
    timeout = 60

    def log_message(self, format, *args):  # noqa: A002 - quiet server
        pass

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def dispatch(self, method: str) -> None:
        raise NotImplementedError

    @property
    def emulator(self):
        return self.server.emulator


def common_control(emulator, method: str, path: str, body: bytes):
    """The control calls every emulator answers (stats, fault switches, stats reset); None for others.

    Raises ValueError/TypeError for a bad fault switch, which the caller answers with a 400.
    """
    if path == "/_emulator/stats" and method == "GET":
        return emulator.stats_snapshot()
    if path == "/_emulator/faults" and method == "POST":
        emulator.faults.update(json.loads(body or b"{}"))
        return emulator.faults.as_dict()
    if path == "/_emulator/faults" and method == "GET":
        return emulator.faults.as_dict()
    if path == "/_emulator/reset-stats" and method == "POST":
        emulator.reset_stats()
        return {"ok": True}
    return None


def abort_connection(connection: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) so the client sees a reset, not a clean end."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
    except OSError:
        pass

"""A hundred clients holding feed downloads open must not take the threads that /healthz, MoySklad's
webhooks (1.5 s to answer) and 1C need: gunicorn facing clients limits its downloads, and behind nginx
(X-Accel-Redirect, with the location block of deploy/nginx.conf) nginx sends the files itself.
The feed is bigger (about 6 MB) than a loopback socket buffers (4 MB), so a client that does not
read holds whoever sends it."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import socket
import subprocess

import pytest
import requests

from emulator.harness import EMULATOR_TOKEN, ROOT, Gunicorn, free_port, wait_for

PREFIX = "/_skladbridge_data/"
FEED_TOKEN = "n61nx-Feed-Token-0123456789"


def nginx_location(data_dir) -> str:
    """The block deploy/nginx.conf documents, pointed at this test's data directory."""
    text = (ROOT / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    block = re.search(r"# accel_redirect begin\n(.*?)\n\s*# accel_redirect end", text, re.S).group(1)
    return block.replace("/var/lib/skladbridge/", f"{data_dir}/")


@pytest.fixture
def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed (.ci/run installs nginx-light)")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return found


@pytest.fixture
def site(tmp_path, emulator_factory, nginx_binary):
    """gunicorn (one worker, two threads: a held download would block it) behind nginx."""
    app = small_gunicorn(tmp_path, emulator_factory, f"accel_redirect: {PREFIX}\n")
    port = free_port()
    user = "user root root;\n" if os.geteuid() == 0 else ""
    (tmp_path / "nginx.conf").write_text(
        f"{user}daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/nginx-error.log;\n"
        f"events {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  types {{ application/xml xml; }}\n"
        f"  client_body_temp_path {tmp_path}/nginx-body;\n  proxy_temp_path {tmp_path}/nginx-proxy;\n"
        f"  fastcgi_temp_path {tmp_path}/f;\n  uwsgi_temp_path {tmp_path}/u;\n  scgi_temp_path {tmp_path}/s;\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n{nginx_location(app.data_dir)}\n"
        f"    location / {{ proxy_pass http://127.0.0.1:{app.port}; proxy_http_version 1.1; }}\n  }}\n}}\n",
        encoding="utf-8")
    proxy = subprocess.Popen([nginx_binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                             stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base), 20, "nginx to listen")
        wait_for(lambda: requests.get(base + "/feeds/main.xml", timeout=5).status_code == 200
                 and requests.get(f"{base}/feeds/{FEED_TOKEN}/secret.xml", timeout=5).status_code == 200,
                 300, "the first builds")
        yield app, base
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        app.stop()


def small_gunicorn(tmp_path, emulator_factory, extra: str = "", threads: int = 2) -> Gunicorn:
    """One worker with few threads serving a big feed ``main`` and a tokened feed ``secret``."""
    emulator = emulator_factory(products=12_000)
    config = (f"data_dir: data\n{extra}moysklad:\n  base_url: {emulator.base_url}\n"
              f"  token: {EMULATOR_TOKEN}\nfeeds:\n  - name: main\n    pictures: none\n    interval_minutes: 600\n"
              f"  - name: secret\n    pictures: none\n    interval_minutes: 600\n    token: {FEED_TOKEN}\n")
    return Gunicorn(tmp_path, config, workers=1, options=("--threads", str(threads), "--worker-class", "gthread")).wait_ready()


def hold_downloads(base: str, count: int) -> list[socket.socket]:
    """Clients that ask for the feed and never read it (a tiny receive window, set before connecting)."""
    host, port = base.removeprefix("http://").split(":")
    held = []
    for _ in range(count):
        connection = socket.socket()
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        connection.settimeout(10)
        connection.connect((host, int(port)))
        connection.sendall(b"GET /feeds/main.xml HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
        held.append(connection)
    return held


def _answers(base: str) -> bool:
    try:
        requests.get(base + "/healthz", timeout=2)
        return True
    except requests.ConnectionError:
        return False


def test_nginx_sends_the_file_the_app_allows_plain_gzip_and_304(site):
    app, base = site
    published = (app.data_dir / "feeds" / "main.xml").read_bytes()
    plain = requests.get(base + "/feeds/main.xml", headers={"Accept-Encoding": "identity"}, timeout=10)
    assert plain.status_code == 200 and plain.content == published
    assert plain.headers["Content-Type"].startswith("application/xml") and "X-Accel-Redirect" not in plain.headers
    packed = requests.get(base + "/feeds/main.xml", headers={"Accept-Encoding": "gzip"}, stream=True, timeout=10)
    assert packed.headers.get("Content-Encoding") == "gzip"
    assert gzip.decompress(packed.raw.read(decode_content=False)) == published
    unchanged = requests.get(base + "/feeds/main.xml", timeout=10,
                             headers={"Accept-Encoding": "identity", "If-None-Match": plain.headers["ETag"]})
    assert unchanged.status_code == 304

    assert requests.get(f"{base}/feeds/{FEED_TOKEN}/secret.xml", timeout=10).content == \
        (app.data_dir / "feeds" / "secret.xml").read_bytes()
    assert requests.get(f"{base}/feeds/wrong-token-0123456789/secret.xml", timeout=10).status_code == 404
    assert requests.get(base + "/feeds/secret.xml", timeout=10).status_code == 404  # a tokened feed needs its token
    # the data directory itself is not reachable from outside
    assert requests.get(base + PREFIX + "feeds/secret.xml", timeout=10).status_code == 404
    assert requests.get(base + PREFIX + "catalog.sqlite", timeout=10).status_code == 404


def test_healthz_answers_while_a_hundred_clients_hold_feed_downloads(site):
    """The clients ask for the feed and never read it: without nginx sending the file each of them
    would hold one of the app's two threads, and /healthz would wait behind them."""
    app, base = site
    stalled = hold_downloads(base, 100)
    try:
        assert requests.get(base + "/healthz", timeout=10).text.startswith("ok")
        assert requests.get(base + "/health.json", timeout=10).json()["ok"] is True
        # and the clients were not turned away: each is being sent the feed, it just does not read it
        assert [connection.recv(64).split(b" ")[1] for connection in stalled] == [b"200"] * 100
    finally:
        for connection in stalled:
            connection.close()
        app.stop()


def test_gunicorn_facing_clients_keeps_threads_for_everything_but_downloads(tmp_path, emulator_factory):
    """Four threads, at most two downloads: the others are told to retry, /healthz answers at once."""
    app = small_gunicorn(tmp_path, emulator_factory, "max_feed_downloads: 2\n", threads=4)
    try:
        wait_for(lambda: requests.get(app.base + "/healthz", timeout=10).status_code == 200, 300, "the first builds")
        stalled = hold_downloads(app.base, 100)
        try:
            healthz = requests.get(app.base + "/healthz", timeout=10)
            assert healthz.status_code == 200 and healthz.text.startswith("ok"), healthz.text
            busy = requests.get(app.base + "/feeds/main.xml", timeout=10)
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "30"
            statuses = [connection.recv(64).split(b" ")[1] for connection in stalled]
            assert statuses.count(b"200") == 2 and statuses.count(b"503") == 98
        finally:
            for connection in stalled:
                connection.close()
        wait_for(lambda: requests.get(app.base + "/feeds/main.xml", timeout=10).status_code == 200, 30,
                 "the download slots to come back once the clients left")
    finally:
        app.stop()


def test_half_sent_request_heads_give_their_threads_back(tmp_path, emulator_factory):
    """Slowloris: connections that send part of a request head and never finish it held every thread of the
    threaded worker, so feeds, 1C and /healthz stopped answering until they closed. With the repo's config the head
    has a deadline (SKLADBRIDGE_REQUEST_HEAD_SECONDS), after which the connection is closed and its thread is free."""
    emulator = emulator_factory(products=60)
    config = (f"data_dir: data\nmoysklad:\n  base_url: {emulator.base_url}\n  token: {EMULATOR_TOKEN}\n"
              "feeds:\n  - name: main\n    pictures: none\n")
    app = Gunicorn(tmp_path, config, workers=1, deployed=True, options=("--threads", "2"),
                   environ={"SKLADBRIDGE_REQUEST_HEAD_SECONDS": "2"}).wait_ready()
    stalled = []
    for _ in range(16):  # eight times the threads: a deadline per thread's turn would take 16 s to reach the page
        connection = socket.create_connection(("127.0.0.1", app.port), timeout=15)
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        stalled.append(connection)
    try:
        answer = requests.get(f"http://127.0.0.1:{app.port}/health.json", timeout=10)
        assert answer.headers["Content-Type"].startswith("application/json")
        assert [connection.recv(1024) for connection in stalled] == [b""] * 16  # each closed at its deadline
    finally:
        for connection in stalled:
            connection.close()
        app.stop()


"""kill -9 in the middle of work: a feed build killed before it published, a gunicorn worker killed
while 1C uploads to it. Nothing already published or committed is lost and the next run recovers."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time

import pytest

from core.settings import load_settings
from emulator.harness import wait_for
from tests.exchange.test_commerceml import catalog as commerceml_catalog
from tests.exchange.test_exchange import FILE_LIMIT, LOGIN, PASSWORD, OneC, sessions
from tests.exchange.test_exchange import catalog as exchange_counts

pytestmark = pytest.mark.e2e

GOODS = 2500  # about four chunks of FILE_LIMIT
EXCHANGE = f"exchange:\n  login: {LOGIN}\n  password: {PASSWORD}\n  zip: false\n  file_limit: {FILE_LIMIT}\n"


def frozen_before_publish(process: subprocess.Popen, feeds_dir) -> bool:
    """Stop the build (SIGSTOP) while its new file is being written, i.e. rendered, checked and packed
    but not yet renamed over the old one; False when it published before it could be caught."""
    temp = feeds_dir / f".main.{process.pid}.xml.tmp"
    deadline = time.monotonic() + 180
    while process.poll() is None and time.monotonic() < deadline:
        if temp.exists():
            process.send_signal(signal.SIGSTOP)
            if temp.exists():
                return True
            process.send_signal(signal.SIGCONT)
            break
        time.sleep(0.002)
    process.wait(timeout=180)
    return False


def test_a_build_killed_mid_render_leaves_the_feed_served_and_the_next_build_recovers(site):
    shop = site(products=8000, seed=31)  # about 6,000 offers: a render long enough to be caught
    shop.wait_published()
    standalone = next(item for item in shop.emulator.catalog.items.values()
                      if item.kind == "product" and not item.variant_ids)
    for attempt in range(3):
        before = shop.published()
        shop.emulator.catalog.update_item(standalone.id, name=f"Переименован перед сборкой {attempt}")
        build = shop.cli("feeds", "build", "main", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if frozen_before_publish(build, shop.feeds_dir):
            break
    else:
        pytest.fail("three builds in a row published before they could be stopped mid-render")
    build.send_signal(signal.SIGKILL)
    assert build.wait(timeout=30) == -signal.SIGKILL

    assert shop.published() == before
    assert shop.served() == before and shop.served(encoding="gzip") == before
    # what the killed build left behind: the feed it was writing and, as far as its rendering processes got
    # before they died with it, their parts and markup files; all of them its own...
    left = shop.leftovers()
    assert f".main.{build.pid}.xml.tmp" in left and all(name.startswith(f".main.{build.pid}.") for name in left), left

    banner = shop.build_now()
    assert "завершена: опубликовано" in banner, banner
    assert not shop.leftovers()  # ...is swept by the next build
    after = shop.served()
    assert after == shop.published() != before and f"Переименован перед сборкой {attempt}".encode() in after
    feed = shop.feed_health()
    assert feed["state"] == "fresh" and feed["error"] is None
    assert [run["status"] for run in feed["history"]][-2:] == ["interrupted", "ok"]
    assert feed["totals"]["failed"] == 1


def worker_serving(shop, client_port: int) -> int | None:
    """The gunicorn worker holding the server end of the connection from ``client_port``."""
    server, client = f"0100007F:{shop.gunicorn.port:04X}", f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    sockets = {f"socket:[{row[9]}]" for row in rows if row[1] == server and row[2] == client and row[9] != "0"}
    for pid in shop.worker_pids():
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                    return pid
            except OSError:  # closed meanwhile
                continue
    return None


def test_a_worker_killed_during_an_upload_loses_nothing_and_1c_starts_over(site):
    shop = site(products=60, extra=EXCHANGE)
    settings = load_settings(shop.gunicorn.config, environ=shop.env)
    goods = [(f"e2e-{n:05d}", f"Товар {n}") for n in range(GOODS)]
    data = commerceml_catalog(goods).encode()
    chunks = [data[start:start + FILE_LIMIT] for start in range(0, len(data), FILE_LIMIT)]
    assert len(chunks) >= 4

    first = OneC(shop.base)
    assert first.checkauth()[0] == "success" and first.init()["file_limit"] == str(FILE_LIMIT)
    for chunk in chunks[:2]:
        assert first.call("file", "POST", data=chunk, filename="import.xml") == ["success"]
    # the third chunk: half of it sent, then the worker reading it is killed
    connection = http.client.HTTPConnection("127.0.0.1", shop.gunicorn.port, timeout=60)
    connection.putrequest("POST", "/exchange/1c?type=catalog&mode=file&filename=import.xml")
    connection.putheader("Cookie", "=".join(first.cookie))
    connection.putheader("Content-Length", str(len(chunks[2])))
    connection.endheaders(chunks[2][:len(chunks[2]) // 2])
    workers = shop.worker_pids()
    worker = wait_for(lambda: worker_serving(shop, connection.sock.getsockname()[1]), 30, "a worker to take the upload")
    os.kill(worker, signal.SIGKILL)
    with pytest.raises((OSError, http.client.HTTPException)):
        connection.send(chunks[2][len(chunks[2]) // 2:])
        connection.getresponse().read()
    connection.close()
    wait_for(lambda: len(shop.worker_pids()) == len(workers) and worker not in shop.worker_pids(), 60,
             "gunicorn to replace the killed worker")

    # 1C gives this exchange up and runs it again from the start: log in, send the whole file, import
    OneC(shop.base).exchange({"import.xml": data}, ["import.xml"])

    counts = exchange_counts(settings)
    assert counts["products"] == GOODS, counts
    retried, interrupted = sessions(settings)
    assert retried["result"] == "ok" and retried["bytes"] == len(data)
    assert [(f["name"], f["bytes"], f["import"]["status"]) for f in retried["files"]] == [("import.xml", len(data), "ok")]
    assert interrupted["result"] == "open" and not interrupted["finished_at"]
    upload = settings.data_dir / "exchange" / str(interrupted["id"]) / "upload" / "import.xml"
    assert upload.read_bytes() == b"".join(chunks[:2])  # the killed request appended nothing
    exchange = shop.health()["exchange"]
    assert [s["result"] for s in exchange["sessions"]] == ["ok", "open"]
    assert exchange["catalog"]["products"] == GOODS
    assert f"Worker (pid:{worker}) was sent SIGKILL" in shop.gunicorn.log()

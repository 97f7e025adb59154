"""retailCRM polling while the feed is rebuilt: 50 concurrent readers, 20 rebuilds, only whole files."""

from __future__ import annotations

import gzip
import hashlib
import threading
import time

import pytest
import requests
from lxml import etree

from core.russian import counted

pytestmark = pytest.mark.e2e

READERS = 50
REBUILDS = 20


def read_once(session: requests.Session, url: str, encoding: str) -> tuple[str, int] | str:
    """One download checked as retailCRM would need it: (digest of the XML, offers), or what was wrong."""
    response = session.get(url, headers={"Accept-Encoding": encoding}, stream=True, timeout=60)
    body = response.raw.read(decode_content=False)
    if response.status_code != 200:
        return f"status {response.status_code}"
    if int(response.headers["Content-Length"]) != len(body):
        return f"{len(body)} bytes, Content-Length {response.headers['Content-Length']}"
    packed = response.headers.get("Content-Encoding") == "gzip"
    if packed and encoding != "gzip":  # the reverse is fine: the instant between the two renames gets the plain file
        return f"asked for {encoding}, got gzip"
    try:
        xml = gzip.decompress(body) if packed else body
        offers = len(etree.fromstring(xml).findall("shop/offers/offer"))
    except (OSError, EOFError, etree.XMLSyntaxError) as exc:
        return f"{encoding}: {exc!r}"
    return (hashlib.sha256(xml).hexdigest(), offers) if offers else "no offers"


def test_fifty_readers_get_only_whole_published_files_during_twenty_rebuilds(site):
    # 50 readers at once: more than the downloads a worker sends at a time by default (the rest would be
    # told to retry, see tests/feeds/test_serving_under_load.py); here every reader must get a whole file
    shop = site(products=200, seed=21, extra="max_feed_downloads: 0\n")
    shop.wait_published()
    published = {hashlib.sha256(shop.published()).hexdigest()}
    url = shop.base + "/feeds/main.xml"
    stop = threading.Event()
    lock = threading.Lock()
    seen: dict[str, int] = {}  # digest -> responses
    problems: list[str] = []
    per_reader = [0] * READERS

    def reader(index: int) -> None:
        encoding = "gzip" if index % 2 else "identity"
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    outcome = read_once(session, url, encoding)
                except requests.RequestException as exc:
                    outcome = f"{encoding}: {exc!r}"
                with lock:
                    if isinstance(outcome, str):
                        problems.append(outcome)
                    else:
                        seen[outcome[0]] = seen.get(outcome[0], 0) + 1
                        per_reader[index] += 1
                time.sleep(0.25)  # each reader polls about four times a second

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(READERS)]
    for thread in threads:
        thread.start()
    try:
        offers = shop.feed_health()["last_success"]["offers"]
        for round_ in range(REBUILDS):
            shop.emulator.catalog.add_product(name=f"Новинка {round_}", price_kopecks=150000.0 + round_)
            if round_ % 2:  # a second process publishing while gunicorn serves
                done = shop.cli_build("main")
                assert done.returncode == 0 and f"published {offers + 1} offers" in done.stdout, done.stderr
            else:
                published_now = counted(offers + 1, "предложение", "предложения", "предложений")
                assert shop.build_now() == (f"Сборка №{shop.feed_health()['last_attempt']['number']} фида «main» "
                                            f"завершена: опубликовано {published_now}.")
            offers += 1
            digest = hashlib.sha256(shop.published()).hexdigest()
            assert digest not in published  # every rebuild published a different file
            published.add(digest)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        # a worker that dies drops every download it serves (its replacement boots in a second): say so, whatever
        # else this test saw (a SIGBUS came from two copies of SQLite sharing the store in one worker)
        log = shop.gunicorn.log()
        assert log.count("Booting worker") == 2, [line for line in log.splitlines() if "orker" in line]

    assert not problems, problems[:10]
    assert set(seen) <= published  # every response was one whole published file, byte for byte
    assert len(seen) >= REBUILDS // 2, f"readers saw only {len(seen)} of {len(published)} versions"
    assert min(per_reader) >= 3, per_reader
    assert shop.served() == shop.served(encoding="gzip") == shop.published()
    history = shop.feed_health()["history"]
    assert [run["status"] for run in history] == ["ok"] * (REBUILDS + 1)
    assert not shop.leftovers()

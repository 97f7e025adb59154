"""Serving feeds to retailCRM over a real WSGI server: whole files, conditional GETs, gzip, tokens."""

import dataclasses
import gzip
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import requests
from lxml import etree

from core.settings import load_settings
from emulator.harness import EMULATOR_TOKEN, ROOT
from feeds.build import build_feed
from feeds.icml import render_icml, resolve_options
from store import CatalogReader
from tests.feeds.test_feeds import feed_settings

TOKEN = "s3cr3t-Feed-Token-0123456789"


def cli_config(tmp_path, server, extra: str = "") -> tuple[Path, dict]:
    """A config file for ``flask feeds build`` against an emulator, and the environment with its token."""
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: data\n{extra}moysklad:\n  base_url: {server.base_url}\n"
                      f"feeds:\n  - name: main\n    pictures: none\n", encoding="utf-8")
    return config, dict(os.environ, SKLADBRIDGE_CONFIG=str(config), MOYSKLAD_TOKEN=EMULATOR_TOKEN)


def offer_count(body: bytes) -> int:
    return len(etree.fromstring(body).findall(".//offer"))


def test_a_feed_is_served_whole_with_validators_and_304s(tmp_path, emulator, serve):
    settings = feed_settings(tmp_path, emulator)
    base = serve(settings)
    assert requests.get(base + "/feeds/main.xml", timeout=5).status_code == 404  # not built yet
    result = build_feed(settings, settings.feeds[0])
    response = requests.get(base + "/feeds/main.xml", headers={"Accept-Encoding": "identity"}, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/xml; charset=utf-8"
    assert response.content == (settings.data_dir / "feeds" / "main.xml").read_bytes()
    assert offer_count(response.content) == result.offers
    etag, modified = response.headers["ETag"], response.headers["Last-Modified"]
    plain = {"Accept-Encoding": "identity"}
    assert requests.get(base + "/feeds/main.xml", headers={**plain, "If-None-Match": etag}, timeout=5).status_code == 304
    assert requests.get(base + "/feeds/main.xml", headers={**plain, "If-Modified-Since": modified}, timeout=5).status_code == 304
    # the gzip variant is another representation with its own validator
    assert requests.get(base + "/feeds/main.xml", headers={"Accept-Encoding": "gzip", "If-None-Match": etag}, timeout=5).status_code == 200
    head = requests.head(base + "/feeds/main.xml", headers={"Accept-Encoding": "identity"}, timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == len(response.content)

    emulator.catalog.update_item(next(iter(emulator.catalog.items)), name="Новое имя")
    build_feed(settings, settings.feeds[0])
    again = requests.get(base + "/feeds/main.xml", headers={**plain, "If-None-Match": etag}, timeout=5)
    assert again.status_code == 200 and again.headers["ETag"] != etag


def test_gzip_only_when_asked(tmp_path, emulator, serve):
    settings = feed_settings(tmp_path, emulator)
    base = serve(settings)
    build_feed(settings, settings.feeds[0])
    plain = requests.get(base + "/feeds/main.xml", headers={"Accept-Encoding": "identity"}, timeout=5)
    assert "Content-Encoding" not in plain.headers
    raw = requests.get(base + "/feeds/main.xml", headers={"Accept-Encoding": "gzip"}, timeout=5, stream=True)
    assert raw.headers["Content-Encoding"] == "gzip" and raw.headers["Vary"] == "Accept-Encoding"
    packed = raw.raw.read(decode_content=False)
    assert len(packed) < len(plain.content) / 3
    assert gzip.decompress(packed) == plain.content
    assert raw.headers["ETag"] != plain.headers["ETag"]
    refused = requests.get(base + "/feeds/main.xml", headers={"Accept-Encoding": "gzip;q=0, identity"}, timeout=5)
    assert "Content-Encoding" not in refused.headers and refused.content == plain.content  # q=0: not acceptable


def test_a_feed_with_a_token_is_only_at_its_secret_url(tmp_path, emulator, serve):
    settings = feed_settings(tmp_path, emulator, token=TOKEN)
    base = serve(settings)
    result = build_feed(settings, settings.feeds[0])
    published = (settings.data_dir / "feeds" / "main.xml").read_bytes()
    served = requests.get(f"{base}/feeds/{TOKEN}/main.xml", headers={"Accept-Encoding": "identity"}, timeout=5)
    assert served.status_code == 200 and served.headers["Content-Type"] == "application/xml; charset=utf-8"
    assert served.content == published and offer_count(served.content) == result.offers > 0
    for url in (f"{base}/feeds/main.xml", f"{base}/feeds/{TOKEN[:-1]}x/main.xml", f"{base}/feeds/{TOKEN}/other.xml"):
        refused = requests.get(url, headers={"Accept-Encoding": "identity"}, timeout=5)
        assert refused.status_code == 404 and b"<offer" not in refused.content, url


def test_readers_get_whole_files_while_the_feed_is_rebuilt(tmp_path, emulator_factory, serve):
    server = emulator_factory(products=1500, seed=4)
    # readers as fast as they can go, up to the download limit and past it as a slot is being freed:
    # this test is about whole files, the limit has its own (tests/feeds/test_serving_under_load.py)
    settings = dataclasses.replace(feed_settings(tmp_path, server), max_feed_downloads=0)
    base = serve(settings)
    published = {build_feed(settings, settings.feeds[0]).offers}
    failures, responses = [], []
    stop = threading.Event()

    def reader(encoding):
        session = requests.Session()
        while not stop.is_set():
            response = session.get(base + "/feeds/main.xml", headers={"Accept-Encoding": encoding}, timeout=10)
            try:
                responses.append(offer_count(response.content))
            except etree.XMLSyntaxError as exc:
                failures.append(str(exc))

    readers = [threading.Thread(target=reader, args=(enc,)) for enc in ("identity", "gzip") * 3]
    for thread in readers:
        thread.start()
    products = [i for i in server.catalog.items.values() if i.kind == "product" and not i.variant_ids]
    for round_ in range(6):
        server.catalog.add_product(name=f"Новинка {round_}", price_kopecks=1000.0, variants=round_ % 3)
        server.catalog.update_item(products[round_].id, sale_price=100.0 * (round_ + 1))
        published.add(build_feed(settings, settings.feeds[0]).offers)
    stop.set()
    for thread in readers:
        thread.join()
    assert not failures
    assert len(responses) > 20
    assert set(responses) <= published  # every response was one whole published file
    assert not list((settings.data_dir / "feeds").glob(".*.tmp"))


def test_a_build_killed_mid_render_leaves_the_old_feed_served(tmp_path, emulator_factory, serve):
    server = emulator_factory(products=30000, seed=6)
    config, env = cli_config(tmp_path, server, extra="public_url: http://127.0.0.1\n")
    flask = [sys.executable, "-m", "flask", "--app", "app", "feeds", "build"]
    first = subprocess.run(flask, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    feed = tmp_path / "data" / "feeds" / "main.xml"
    before = feed.read_bytes()

    server.catalog.update_item(next(iter(server.catalog.items)), name="Во время сборки")
    process = subprocess.Popen(flask + ["--no-sync"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if line.strip().startswith("render:"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert feed.read_bytes() == before
    base = serve(load_settings(config, environ=env))
    served = requests.get(base + "/feeds/main.xml", headers={"Accept-Encoding": "identity"}, timeout=10)
    assert served.content == before
    assert list(feed.parent.glob(".main.*.tmp"))  # what the killed build left behind...

    again = subprocess.run(flask + ["--no-sync"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not list(feed.parent.glob(".main.*.tmp"))  # ...is swept by the next build
    assert "published" in again.stderr + again.stdout


def test_a_big_catalog_rendered_by_several_processes_equals_a_single_process_render(tmp_path, emulator_factory, caplog):
    server = emulator_factory(products=9000, seed=8)
    config, env = cli_config(tmp_path, server)
    settings = load_settings(config, environ=env)
    feed = settings.feeds[0]
    assert threading.active_count() > 1  # the emulator serves from threads of this process, as a scheduler would run
    with caplog.at_level(logging.INFO, logger="feeds.icml"):
        result = build_feed(settings, feed)
    assert result.offers >= 5000  # large enough to render in parallel
    assert re.search(r"feed main: [2-9] processes render the offers", caplog.text)
    several = etree.parse(str(tmp_path / "data" / "feeds" / "main.xml")).getroot()
    single_file = tmp_path / "single.xml"
    with CatalogReader(settings.store_path) as reader, open(single_file, "wb") as out:
        render_icml(reader, resolve_options(reader, feed, settings.images_url), out, processes=1)
    one = etree.parse(str(single_file)).getroot()

    def offers(root):
        return {o.get("id"): etree.tostring(o) for o in root.iter("offer")}

    assert offers(several) == offers(one)
    assert [etree.tostring(c) for c in several.iter("category")] == [etree.tostring(c) for c in one.iter("category")]
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "feeds", "build", "--no-sync"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # without a sync the render starts before the fork server is up, and still in as many processes...
    assert re.search(r"feed main: [2-9] processes render the offers", done.stderr)
    # ...which take every offer from the markup files the processes of the build before wrote
    assert f"feed main: {result.offers} of {result.offers} offers as the last render made them" in done.stderr
    assert offers(etree.parse(str(tmp_path / "data" / "feeds" / "main.xml")).getroot()) == offers(one)

"""The first day, walked as a newcomer walks it, over loopback: the demo in its own folder, then the example
config against an account (the emulator plays the real one), then the usual mistakes, each one line; and an
install fed by 1C alone, with no MoySklad section at all."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from lxml import etree

from emulator.harness import EMULATOR_TOKEN, ROOT, Gunicorn, wait_for
from tests.exchange.test_commerceml import catalog, package
from tests.exchange.test_exchange import LOGIN, PASSWORD, OneC

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("MOYSKLAD_", "SKLADBRIDGE_", "EXCHANGE_"))}


def flask(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``flask --app app ARGS`` run from a folder of the newcomer's, as README says."""
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=workdir,
                          env={**CLEAN_ENV, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True, timeout=300)


def offer_ids(path: Path) -> set[str]:
    return {offer.get("id") for offer in etree.parse(str(path)).iterfind(".//offer")}


def test_from_the_demo_to_an_account_without_traps(tmp_path, emulator_factory):
    workdir = tmp_path / "checkout"
    workdir.mkdir()

    # 1. README's demo: no config file, no credentials
    demo = flask(workdir, "feeds", "build")
    assert demo.returncode == 0, demo.stderr
    assert (f"WARNING app: DEMO: no config file, so this is the demo: a generated catalog from the bundled MoySklad "
            f"emulator, kept in {workdir / 'demo-data'}, not your account.") in demo.stderr.splitlines()[0]
    demo_feed = workdir / "demo-data" / "feeds" / "demo.xml"
    demo_ids = offer_ids(demo_feed)
    assert demo_ids and not (workdir / "data").exists()

    # 2. README's Configuration: the example config, a token and an address (the emulator plays the account)
    shop = emulator_factory(products=60, seed=5)
    shutil.copy(ROOT / "config.example.yaml", workdir / "config.yaml")
    account = {"MOYSKLAD_TOKEN": EMULATOR_TOKEN, "MOYSKLAD_BASE_URL": shop.base_url}
    check = flask(workdir, "moysklad", "check", **account)
    assert check.returncode == 0, check.stderr
    assert "DEMO" not in check.stdout and check.stdout.rstrip().endswith("MoySklad connection OK.")
    built = flask(workdir, "feeds", "build", **account)
    assert built.returncode == 0, built.stderr
    ids = offer_ids(workdir / "data" / "feeds" / "main.xml")
    assert ids and ids <= set(shop.catalog.items) and not ids & demo_ids  # only that account's goods

    # 3. pointing the account at the demo's folder by mistake: refused, the demo's feed untouched
    before = demo_feed.read_bytes()
    mixed = flask(workdir, "feeds", "build", SKLADBRIDGE_DATA_DIR=str(workdir / "demo-data"), **account)
    assert mixed.returncode == 1
    assert (f"FAILED, nothing is published yet: the catalog store {workdir / 'demo-data' / 'catalog.sqlite'} holds the "
            "demo's generated catalog") in mixed.stderr
    assert "give this one a data_dir of its own" in mixed.stderr
    assert demo_feed.read_bytes() == before

    # 4. the usual mistakes: one line each, exit status 1, no traceback
    config = workdir / "config.yaml"
    example = config.read_text(encoding="utf-8")
    mistakes = [
        (example, {}, ("moysklad: no credentials, needed by feed main (source: moysklad): set moysklad.token "
                       "(or MOYSKLAD_TOKEN), or moysklad.login and moysklad.password")),
        (example.replace('  token: ""', '  tokn: ""'), account, "moysklad.tokn: unknown key (known keys: base_url, token"),
        (example.replace("log_level: INFO", "log_level: INFO\n  oops: [1"), account,
         f"config.yaml, line {example.splitlines().index('log_level: INFO') + 2}, column 7: not valid YAML: "),
        (example.replace("data_dir: ./data", "data_dir: ./config.yaml/data"), account,
         f"data_dir: {workdir / 'config.yaml' / 'data'} cannot be created by this user"),
        (example, {**account, "MOYSKLAD_BASE_URL": "https://online.moysklad.ru/api/remap/1.2"},
         ("moysklad.base_url: online.moysklad.ru refuses JSON API 1.2 since 2023-12-01; "
          "use https://api.moysklad.ru/api/remap/1.2")),
    ]
    for text, env, line in mistakes:
        config.write_text(text, encoding="utf-8")
        for command in (("moysklad", "check"), ("feeds", "build")):
            result = flask(workdir, *command, **env)
            assert result.returncode == 1, (line, result.stderr)
            assert result.stderr.startswith("Error: config error: ") and line in result.stderr, result.stderr
            assert result.stderr.count("\n") == 1 and result.stdout == ""  # one line and nothing else
        # the first thing a lost newcomer types: the mistake in one line, then Flask's own help
        listing = flask(workdir, "--help", **env)
        assert listing.stderr.startswith("Error: config error: ") and line in listing.stderr, listing.stderr
        assert "Traceback" not in listing.stderr and listing.stdout.startswith("Usage: ") and listing.returncode == 0

    # ... and the same mistake when gunicorn boots: it stops with the line in its log
    (tmp_path / "service").mkdir()
    server = Gunicorn(tmp_path / "service", example.replace('  token: ""', '  tokn: ""'), workers=2,
                      environ={"MOYSKLAD_TOKEN": EMULATOR_TOKEN})
    assert server.process.wait(timeout=60) != 0
    server.log_file.close()
    log = server.log()
    assert "skladbridge: config error: " in log and "moysklad.tokn: unknown key" in log
    assert "Traceback" not in log and log.count("config error") == 1


def test_the_emulator_starts_beside_a_config_still_missing_its_token(tmp_path):
    """README's Configuration: copy the example, then try it against the emulator. The emulator needs no config, so the
    token the copy still lacks must not stop it (it did: «config error: moysklad: no credentials»)."""
    shutil.copy(ROOT / "config.example.yaml", tmp_path / "config.yaml")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emulator = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "emulator", "run", "--port", str(port),
                                 "--products", "20"], cwd=tmp_path, env={**CLEAN_ENV, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert emulator.stdout.readline().strip() == f"MoySklad emulator: http://127.0.0.1:{port}/api/remap/1.2"
        answer = requests.get(f"http://127.0.0.1:{port}/api/remap/1.2/entity/assortment",
                              headers={"Authorization": f"Bearer {EMULATOR_TOKEN}", "Accept-Encoding": "gzip"}, timeout=10)
        assert answer.status_code == 200 and answer.json()["meta"]["size"] == 20
    finally:
        emulator.terminate()
        emulator.communicate(timeout=10)


def test_an_exchange_only_install_starts_and_exchanges_without_a_moysklad_section(tmp_path):
    """Issue 13, item 8: a shop fed by 1C needs no MoySklad token; its service starts and its feed follows 1C."""
    config = (f"data_dir: data\nexchange:\n  login: {LOGIN}\n  zip: false\n"
              "feeds:\n  - name: shop\n    source: exchange\n    pictures: none\n    interval_minutes: 0.05\n")
    server = Gunicorn(tmp_path, config, workers=2, environ={"EXCHANGE_PASSWORD": PASSWORD}).wait_ready(timeout=60)
    try:
        goods = [("kettle", "Чайник"), ("mug", "Кружка")]
        offers = "".join(f"<Предложение><Ид>{good}</Ид><Наименование>{name}</Наименование><Цены><Цена>"
                         f"<ИдТипаЦены>retail</ИдТипаЦены><ЦенаЗаЕдиницу>{price}</ЦенаЗаЕдиницу><Валюта>руб</Валюта>"
                         f"</Цена></Цены><Количество>5</Количество></Предложение>"
                         for (good, name), price in zip(goods, (1490, 350), strict=True))
        OneC(server.base).exchange({"import.xml": catalog(goods).encode(), "offers.xml": package(offers).encode()},
                                   ["import.xml", "offers.xml"])
        feed = server.data_dir / "feeds" / "shop.xml"
        wait_for(lambda: feed.exists() and offer_ids(feed) == {"kettle", "mug"}, 60, "the exchange feed to hold 1C's goods")
        prices = {o.get("id"): o.findtext("price") for o in etree.parse(str(feed)).iterfind(".//offer")}
        assert prices == {"kettle": "1490.00", "mug": "350.00"}
        health = wait_for(lambda: (body := requests.get(server.base + "/health.json", timeout=10).json())["ok"] and body,
                          30, "a healthy page")
        assert health["moysklad"] is None and health["feeds"][0]["state"] == "fresh"
    finally:
        server.stop()
    assert "no credentials" not in server.log() and "Traceback" not in server.log()


def test_moysklad_sync_of_an_install_fed_by_1c_alone_says_there_is_nothing_to_sync(tmp_path):
    """With no MoySklad section the sync tried the real api.moysklad.ru without credentials, retrying some 25 s, where
    `moysklad check` says at once that there is nothing to check."""
    (tmp_path / "config.yaml").write_text("data_dir: data\nfeeds:\n  - name: shop\n    source: exchange\n",
                                          encoding="utf-8")
    for command, doing in (("check", "check"), ("sync", "sync")):
        started = time.monotonic()
        refused = flask(tmp_path, "moysklad", command)
        assert refused.returncode == 1 and time.monotonic() - started < 15, refused.stderr
        assert refused.stderr == ("No MoySklad credentials are configured (moysklad.token or MOYSKLAD_TOKEN, or a login "
                                  "and password): no feed of this account reads the MoySklad API, so there is nothing "
                                  f"to {doing}.\n")
    assert not (tmp_path / "data" / "catalog.sqlite").exists()


def test_an_empty_config_or_a_missing_one_is_said_as_it_is(tmp_path):
    """An empty config.yaml made `feeds build` say «No feed named None (feeds: none configured)»; a missing config
    named a --config option there is not."""
    (tmp_path / "config.yaml").write_text("", encoding="utf-8")
    empty = flask(tmp_path, "feeds", "build")
    assert empty.returncode == 2
    assert empty.stderr == ("No feed is configured: add one to config.yaml, e.g. `feeds: [{name: main}]` "
                            "(source: moysklad, the default, or exchange for what 1C uploads)\n")

    missing = flask(tmp_path, "feeds", "build", SKLADBRIDGE_CONFIG=str(tmp_path / "nowhere.yaml"))
    assert missing.returncode == 1
    assert missing.stderr == (f"Error: config error: config file {tmp_path / 'nowhere.yaml'} does not exist "
                              "(named by SKLADBRIDGE_CONFIG)\n")
    named = flask(tmp_path, "shards", "nginx-map", f"a={tmp_path / 'nowhere.yaml'}")
    assert named.stderr == f"Error: instance a: config file {tmp_path / 'nowhere.yaml'} does not exist\n"


def test_a_reload_with_a_typo_in_the_config_keeps_the_service_serving_and_a_good_one_applies(tmp_path):
    """`systemctl reload` sends gunicorn SIGHUP. With a typo in the edited config the new workers failed to load and
    gunicorn halted: feeds, webhooks and 1C's exchange went dark until the file was fixed. Now the mistake is one
    line and the workers keep the configuration running; a config that loads is applied by the next reload."""
    feeds = "feeds:\n  - name: shop\n    source: exchange\n    pictures: none\n"
    config = f"data_dir: data\nexchange:\n  login: {LOGIN}\n"
    server = Gunicorn(tmp_path, config + feeds, workers=2, deployed=True,
                      environ={"EXCHANGE_PASSWORD": PASSWORD}).wait_ready(timeout=60)
    try:
        def feed_names() -> list[str]:
            return [feed["name"] for feed in requests.get(server.base + "/health.json", timeout=10).json()["feeds"]]

        assert feed_names() == ["shop"]
        server.config.write_text(config + feeds.replace("feeds:", "feedz:"), encoding="utf-8")
        workers = set(server.worker_pids())
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for(lambda: server.worker_pids() and not workers & set(server.worker_pids()), 60, "new workers")
        assert "skladbridge: config error: " in server.log() and "feedz: unknown key" in server.log()
        assert "the reload keeps the configuration running before" in server.log()
        assert server.process.poll() is None and feed_names() == ["shop"]
        assert OneC(server.base).checkauth()[0] == "success"  # 1C's exchange too

        server.config.write_text(config + feeds + "  - name: outlet\n    source: exchange\n    pictures: none\n",
                                 encoding="utf-8")
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for(lambda: feed_names() == ["shop", "outlet"], 60, "the edited config after the next reload")
    finally:
        server.stop()


def test_a_mistyped_server_variable_or_a_busy_port_is_one_line_not_a_traceback(tmp_path):
    """SKLADBRIDGE_WORKERS=two made gunicorn print «Failed to read config file» and a ValueError traceback without
    naming the variable; an emulator on a busy port or given a broken --icml file ended in a traceback too."""
    for variable, value, words in (("SKLADBRIDGE_WORKERS", "two", "is not a whole number above 0"),
                                   ("SKLADBRIDGE_THREADS", "0", "is not a whole number above 0"),
                                   ("SKLADBRIDGE_REQUEST_HEAD_SECONDS", "abc", "is not a number of seconds above 0")):
        started = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                                 env={**CLEAN_ENV, variable: value, "SKLADBRIDGE_BIND": "127.0.0.1:1"},
                                 capture_output=True, text=True, timeout=60)
        assert started.returncode == 1 and "Traceback" not in started.stderr
        assert started.stderr.strip() == f"skladbridge: config error: {variable}={value!r} {words}; fix or unset it"

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for command in (("emulator", "run", "--port", port), ("emulator", "retailcrm", "--port", port)):
            busy = flask(tmp_path, *command)
            assert busy.returncode == 1 and "Traceback" not in busy.stderr
            assert f"Error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another --port" in busy.stderr
    broken = tmp_path / "feed.xml"
    broken.write_text("<yml_catalog><shop>", encoding="utf-8")
    refused = flask(tmp_path, "emulator", "retailcrm", "--port", "0", "--icml", str(broken))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"Error: --icml {broken} is not an ICML (XML) file: " in refused.stderr

"""The operator pages: the health page in headless Chromium, /health.json, /healthz, /metrics, the build button.

Feeds are built for real against the emulator; a "stale" feed is one whose last build the test
dates back three hours in the runs table (waiting hours is not an option).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from core.mailbox import BUILD
from core.russian import plural
from core.settings import AdminSettings, ApiSettings, ExchangeSettings, FeedSettings, Settings
from emulator.harness import EMULATOR_TOKEN, ROOT, client_settings, wait_for
from feeds.build import BuildFailed, build_feed, sync_source
from health.collect import stale_from
from scheduler import run_build, start_scheduler
from store import CatalogStore

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ADMIN = ("operator", "a-long-admin-password")


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium driven over WebDriver (Debian's chromium and chromium-driver)."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium / chromium-driver are not installed; .ci/run installs them")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,2000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def three_feeds_settings(tmp_path, emulator, **extra) -> Settings:
    feeds = (FeedSettings(name="fresh", pictures="none"),
             FeedSettings(name="stale", pictures="none", interval_minutes=30),
             FeedSettings(name="broken", pictures="none", price_type="Нет такой цены"))
    return Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator), feeds=feeds, **extra)


def build_three_feeds(settings: Settings) -> None:
    """One sync, a published build of each good feed, the stale one dated back, the broken one failing."""
    sync_source(settings)
    for feed in settings.feeds[:2]:
        build_feed(settings, feed, sync=False)
    with pytest.raises(BuildFailed, match="Нет такой цены"):
        build_feed(settings, settings.feeds[2], sync=False)
    three_hours_ago = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=3)).isoformat(timespec="seconds")
    store = CatalogStore(settings.store_path)
    store.db.execute("UPDATE runs SET started_at = ?, finished_at = ? WHERE source = 'feed:stale'",
                     [three_hours_ago, three_hours_ago])
    store.db.conn.commit()
    store.close()


@pytest.fixture
def three_feeds(tmp_path, emulator_factory, serve):
    settings = three_feeds_settings(tmp_path, emulator_factory(products=60))
    build_three_feeds(settings)
    return settings, serve(settings)


def card_text(driver, feed: str) -> str:
    return driver.find_element("id", f"feed-{feed}").text


def test_health_page_in_chromium_shows_each_state_in_russian(three_feeds, browser, tmp_path):
    settings, base = three_feeds
    browser.get(base + "/")
    summary = browser.find_element("id", "summary").text
    assert summary.startswith("Есть проблемы (2)")
    assert "фид stale: устарел" in summary and "фид broken: ошибка сборки" in summary

    fresh = card_text(browser, "fresh")
    assert "Фид «fresh» свежий" in fresh
    offers = published_offers(settings, "fresh")
    assert re.search(rf"Предложений\n{offers:,} \(в продаже".replace(",", "\u202f"), fresh)
    assert browser.find_element("id", "url-fresh").text == f"{settings.public_url}/feeds/fresh.xml"
    assert "Администрирование → Магазины → <магазин> → Каталог, «Загружать из ICML»" in fresh
    assert "Защита от обнуления\nпройдена" in fresh
    assert "Расписание\nкаждый час;" in fresh and "(сборка №1)" in fresh

    stale = card_text(browser, "stale")
    assert "Фид «stale» устарел" in stale
    assert "3 ч назад" in stale
    assert "каждые 30 минут; устаревшим фид считается, если не обновлялся 1 ч" in stale

    broken = card_text(browser, "broken")
    assert "Фид «broken» ошибка сборки" in broken
    assert "Ошибка в настройках фида" in broken
    assert "Что делать: Исправьте настройку фида" in broken
    assert "price type «Нет такой цены» does not exist" in broken
    assert "Сборка №1, " in broken  # the feed's own first build, whatever ran before it
    assert "Последняя публикация\nещё не было" in broken
    assert "Ссылка для retailCRM появится здесь после первой публикации фида." in broken
    assert not browser.find_elements("id", "url-broken") and "Прежний файл" not in broken  # there is none

    moysklad = browser.find_element("id", "moysklad").text
    assert "Доступ\nработает" in moysklad
    assert re.search(r"Всего\n1 синхронизация, с ошибкой 0; \d+ запрос(а|ов)?, без ответов 429 и повторов", moysklad)
    body = browser.find_element("tag name", "body").text
    zone = browser.find_element("id", "zone").text
    assert zone.startswith("Время на странице — по часам сервера (") and body.count("UTC") == zone.count("UTC")

    shot = tmp_path / "health.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def published_offers(settings: Settings, feed: str) -> int:
    body = (settings.data_dir / "feeds" / f"{feed}.xml").read_bytes()
    return body.count(b"<offer ")


def test_copy_button_puts_the_feed_url_on_the_clipboard(three_feeds, browser):
    settings, base = three_feeds
    browser.get(base + "/")
    button = browser.find_element("css selector", "#feed-fresh button.copy")
    button.click()
    WebDriverWait(browser, 5).until(lambda _: button.text == "Скопировано")  # the clipboard answers asynchronously
    selected = browser.execute_script("return window.getSelection().toString() || document.activeElement.value")
    assert selected == f"{settings.public_url}/feeds/fresh.xml"


def test_a_feed_turns_stale_once_two_of_its_runs_passed_without_a_build():
    """A cron schedule's quiet hours miss nothing: built after the last run of the morning, a feed on
    «*/30 6-7 * * *» is fresh all day and night, and stale once the next morning's first two runs passed."""
    built = dt.datetime(2026, 12, 3, 7, 34).astimezone()  # the server's time, as cron reads it
    morning = FeedSettings(name="morning", pictures="none", cron="*/30 6-7 * * *")
    assert stale_from(morning, built) == dt.datetime(2026, 12, 4, 6, 30).astimezone()
    every_half_hour = FeedSettings(name="often", pictures="none", interval_minutes=30)
    assert stale_from(every_half_hour, built) == built + dt.timedelta(hours=1)


def test_health_json_shape_and_healthz(three_feeds):
    settings, base = three_feeds
    body = requests.get(base + "/health.json", timeout=10).json()
    assert body["ok"] is False
    states = {feed["name"]: feed["state"] for feed in body["feeds"]}
    assert states == {"fresh": "fresh", "stale": "stale", "broken": "failing"}
    fresh = body["feeds"][0]
    assert fresh["last_success"]["offers"] == published_offers(settings, "fresh")
    assert fresh["file"]["size"] == (settings.data_dir / "feeds" / "fresh.xml").stat().st_size
    assert fresh["schedule"]["interval_seconds"] == 3600 and fresh["stale_after_seconds"] == 7200
    assert [run["status"] for run in fresh["history"]] == ["ok"]
    broken = body["feeds"][2]
    assert broken["error"]["title"] == "Ошибка в настройках фида"
    assert broken["last_success"] is None and broken["last_attempt"]["status"] == "failed"
    assert body["moysklad"]["credentials"] == "ok"
    assert body["moysklad"]["last_sync"]["requests"] == body["moysklad"]["totals"]["requests"] > 0
    assert body["moysklad"]["catalog"]["offers"] > 0

    reply = requests.get(base + "/healthz", timeout=10)
    assert reply.status_code == 503
    assert reply.text.splitlines() == ["фид stale: устарел",
                                       "фид broken: ошибка сборки — Ошибка в настройках фида"]


def test_healthz_is_200_when_every_feed_is_fresh_and_503_when_the_store_does_not_open(three_feeds, serve, tmp_path):
    settings, _ = three_feeds
    only_fresh = Settings(data_dir=settings.data_dir, moysklad=settings.moysklad, feeds=settings.feeds[:1])
    reply = requests.get(serve(only_fresh) + "/healthz", timeout=10)
    assert (reply.status_code, reply.text) == (200, "ok\n")

    broken_dir = tmp_path / "broken-data"
    (broken_dir / "catalog.sqlite").mkdir(parents=True)  # a directory where the store file should be
    reply = requests.get(serve(Settings(data_dir=broken_dir, feeds=settings.feeds[:1])) + "/healthz", timeout=10)
    assert reply.status_code == 503
    assert reply.text.startswith("каталог не открывается")


def test_rejected_credentials_are_explained(tmp_path, emulator, serve):
    """A revoked token: the sync fails, the feed goes on failing, the page says what to do."""
    settings = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator, token="revoked-token"),
                        feeds=(FeedSettings(name="main", pictures="none"),))
    run_build(settings, settings.feeds[0])
    body = requests.get(serve(settings) + "/health.json", timeout=10).json()
    assert body["moysklad"]["credentials"] == "rejected"
    feed = body["feeds"][0]
    assert feed["state"] == "failing"
    assert feed["error"]["kind"] == "sync"
    assert feed["error"]["title"] == "МойСклад не принял токен или логин/пароль"
    assert "moysklad.token или в переменную MOYSKLAD_TOKEN," in feed["error"]["action"]
    assert "revoked-token" not in str(body)


def test_the_last_attempt_is_the_sync_that_failed_after_a_good_build(tmp_path, emulator, serve):
    """A build published, then the token was revoked: the next attempt died in its sync, before the build
    got a run of its own; the JSON must not go on saying the last attempt was ok."""
    settings = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator),
                        feeds=(FeedSettings(name="main", pictures="none"),))
    run_build(settings, settings.feeds[0])
    base = serve(settings)
    assert requests.get(base + "/health.json", timeout=10).json()["feeds"][0]["last_attempt"]["status"] == "ok"
    emulator.set_credentials(token="a-new-token-was-issued")
    run_build(settings, settings.feeds[0])
    feed = requests.get(base + "/health.json", timeout=10).json()["feeds"][0]
    assert (feed["last_attempt"]["kind"], feed["last_attempt"]["status"]) == ("sync", "failed")
    assert feed["last_success"] is not None and feed["state"] == "failing"


def test_secrets_are_never_shown(tmp_path, emulator, serve):
    secrets = {"feed": "feed-token-0123456789", "exchange": "exchange-password-1", "api": "api-key-0123456789abcdef",
               "admin": ADMIN[1], "moysklad": EMULATOR_TOKEN}
    settings = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator),
                        feeds=(FeedSettings(name="main", pictures="none", token=secrets["feed"]),),
                        exchange=ExchangeSettings(login="1c", password=secrets["exchange"]),
                        api=ApiSettings(key=secrets["api"]), admin=AdminSettings(login=ADMIN[0], password=ADMIN[1]))
    build_feed(settings, settings.feeds[0])
    base = serve(settings)
    texts = {path: requests.get(base + path, auth=ADMIN, timeout=10).text for path in ("/health.json", "/metrics", "/healthz")}
    for path, text in texts.items():
        for name, secret in secrets.items():
            assert secret not in text, f"{name} secret shown at {path}"
    body = requests.get(base + "/health.json", auth=ADMIN, timeout=10).json()
    assert body["feeds"][0]["url"].endswith("/feeds/***/main.xml")
    assert body["settings"]["moysklad"]["token"] == "***" and body["settings"]["admin"]["password"] == "***"
    # the page is behind the admin login, so it shows the whole link to give retailCRM
    assert f"/feeds/{secrets['feed']}/main.xml" in requests.get(base + "/", auth=ADMIN, timeout=10).text


def test_admin_login_guards_the_page_and_json_and_the_config_opens_monitors(tmp_path, emulator, serve):
    def settings(**admin):
        return Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator),
                        feeds=(FeedSettings(name="main", pictures="none"),),
                        admin=AdminSettings(login=ADMIN[0], password=ADMIN[1], **admin))

    base = serve(settings())
    for path in ("/", "/health", "/health.json", "/metrics"):
        assert requests.get(base + path, timeout=10).status_code == 401, path
        assert requests.get(base + path, auth=(ADMIN[0], "wrong"), timeout=10).status_code == 401, path
        assert requests.get(base + path, auth=ADMIN, timeout=10).status_code == 200, path
    denied = requests.get(base + "/", timeout=10)
    assert denied.headers["WWW-Authenticate"].startswith("Basic") and "admin.password" in denied.text
    assert requests.get(base + "/healthz", timeout=10).status_code == 503  # open, and the feed was never built

    base = serve(settings(healthz_public=False, metrics_public=True))
    assert requests.get(base + "/healthz", timeout=10).status_code == 401
    assert requests.get(base + "/metrics", timeout=10).status_code == 200


def test_metrics_match_the_health_data(three_feeds):
    settings, base = three_feeds
    body = requests.get(base + "/health.json", timeout=10).json()
    families = {f.name: f for f in text_string_to_metric_families(requests.get(base + "/metrics", timeout=10).text)}

    def value(name, **labels):
        samples = [s.value for s in families[name].samples if all(s.labels.get(k) == v for k, v in labels.items())
                   and not s.name.endswith("_created")]
        assert len(samples) == 1, (name, labels, families[name].samples)
        return samples[0]

    assert value("skladbridge_healthy") == 0
    assert value("skladbridge_feed_state", feed="stale", state="stale") == 1
    assert value("skladbridge_feed_state", feed="stale", state="fresh") == 0
    assert value("skladbridge_feed_offers", feed="fresh") == published_offers(settings, "fresh")
    assert value("skladbridge_feed_build_failures", feed="broken") == 1
    assert value("skladbridge_moysklad_requests") == body["moysklad"]["totals"]["requests"]
    assert value("skladbridge_moysklad_throttled") == 0
    published = dt.datetime.fromisoformat(body["feeds"][0]["last_success"]["finished_at"]).timestamp()
    assert value("skladbridge_feed_last_success_timestamp_seconds", feed="fresh") == published
    assert "broken" not in {s.labels.get("feed") for s in families["skladbridge_feed_offers"].samples}


def test_a_build_that_fails_at_its_sync_counts_as_a_failed_build(tmp_path, emulator, serve):
    """A revoked token or MoySklad down fails a build in its sync, before the build's own run: /metrics counted no
    build and no failure for the feed, so an alert on skladbridge_feed_build_failures_total never fired for the
    commonest failures. The page still explains it from the sync's run."""
    from moysklad.errors import MoySkladError

    settings = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator, token="revoked-token"),
                        feeds=(FeedSettings(name="main", pictures="none"),))
    for _ in range(2):
        with pytest.raises(MoySkladError):
            build_feed(settings, settings.feeds[0])
    base = serve(settings)
    families = {f.name: f for f in text_string_to_metric_families(requests.get(base + "/metrics", timeout=10).text)}
    counted = {sample.name: sample.value for name in ("skladbridge_feed_builds", "skladbridge_feed_build_failures")
               for sample in families[name].samples if sample.labels.get("feed") == "main"}
    assert counted == {"skladbridge_feed_builds_total": 2, "skladbridge_feed_build_failures_total": 2}
    feed = requests.get(base + "/health.json", timeout=10).json()["feeds"][0]
    assert feed["state"] == "failing" and feed["error"]["title"] == "МойСклад не принял токен или логин/пароль"


def test_the_readme_names_every_series_as_metrics_serves_it(three_feeds):
    """The README listed counters without the _total that Prometheus' text format gives them, and left some series
    out: PromQL copied from it found nothing."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    served = {sample.name.removesuffix("_count").removesuffix("_sum") if family.type == "summary" else sample.name
              for family in text_string_to_metric_families(requests.get(three_feeds[1] + "/metrics", timeout=10).text)
              for sample in family.samples if not sample.name.endswith("_created")}
    assert len(served) > 20 and {name for name in served if f"`{name}`" not in readme} == set()


def page_form(base: str, session: requests.Session, feed: str) -> str:
    html = session.get(base + "/", timeout=10).text
    return re.search(rf'action="/health/build/{feed}">\s*<input type="hidden" name="csrf" value="([^"]+)"', html).group(1)


def test_build_button_refuses_requests_without_the_page_token(three_feeds):
    settings, base = three_feeds
    session = requests.Session()
    token = page_form(base, session, "fresh")
    url = base + "/health/build/fresh"
    assert requests.post(url, data={"csrf": token}, timeout=10).status_code == 403  # no cookie: another site's form
    assert session.post(url, data={"csrf": "forged"}, timeout=10).status_code == 403
    assert session.post(url, data={"csrf": token}, headers={"Origin": "https://evil.example"}, timeout=10).status_code == 403
    assert settings.mailbox.notes(BUILD) == []

    reply = session.post(url, data={"csrf": token}, headers={"Origin": base}, allow_redirects=False, timeout=10)
    assert reply.status_code == 303
    assert reply.headers["Location"].startswith("/health?build=fresh&after=")
    assert [note.key for note in settings.mailbox.notes(BUILD)] == ["fresh"]
    page = session.get(base + reply.headers["Location"], timeout=10).text
    assert "запрошена и скоро начнётся" in page and "запрошена вручную, ждёт очереди" in page
    assert session.post(base + "/health/build/nope", data={"csrf": token}, timeout=10).status_code == 404


def test_build_button_refuses_a_big_body_unread(three_feeds):
    """The form is two short fields; open pages (no admin password) let anyone post. 20 MB, declared or sent in
    chunks without a length, must be refused, not read into memory or onto disk: even carrying the page's valid
    token (as multipart with a file part, which Flask's own form-memory limit would not stop), no build is asked for."""
    settings, base = three_feeds
    session = requests.Session()
    token = page_form(base, session, "fresh")
    url = base + "/health/build/fresh"
    boundary = "b0undary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n{token}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="pad"; filename="pad.bin"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    multipart = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def chunks():
        yield head
        for _ in range(20):
            yield b"x" * 1_000_000
        yield tail

    urlencoded = session.post(url, data=f"csrf={token}&pad=".encode() + b"x" * 20_000_000, timeout=30,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    declared = session.post(url, data=b"".join(chunks()), headers=multipart, timeout=30)
    chunked = session.post(url, data=chunks(), headers=multipart, timeout=30)
    assert (urlencoded.status_code, declared.status_code, chunked.status_code) == (413, 413, 413)
    assert settings.mailbox.notes(BUILD) == []
    # the same form at its real size is taken: what was refused was the size, not the form
    small = session.post(url, data=head + b"x" * 100 + tail, headers=multipart, allow_redirects=False, timeout=10)
    assert small.status_code == 303 and [note.key for note in settings.mailbox.notes(BUILD)] == ["fresh"]


def test_build_button_in_chromium_runs_a_build_and_shows_its_result(tmp_path, emulator_factory, browser):
    """The click reaches the scheduler (through a note any worker can leave) and the page shows how it ended."""
    from app import create_app

    settings = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator_factory(products=40)),
                        feeds=(FeedSettings(name="main", pictures="none"),))
    app = create_app(settings)
    scheduler = start_scheduler(app, retry_seconds=None)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        first = wait_for_build(settings, after=0)
        browser.get(base + "/")
        assert "Планировщик сборок не запущен" not in browser.find_element("tag name", "body").text
        browser.find_element("css selector", "#feed-main button.build").click()
        deadline = time.monotonic() + 60
        banner = ""
        while time.monotonic() < deadline:
            try:
                banner = browser.find_element("id", "build-result").text if browser.find_elements("id", "build-result") else ""
            except StaleElementReferenceException:  # the page reloaded itself between finding and reading
                continue
            if "завершена" in banner or "не удалась" in banner:
                break
            time.sleep(0.5)
        wait_for_build(settings, after=first)
        offers = published_offers(settings, "main")
        assert banner == (f"Сборка №2 фида «main» завершена: опубликовано {offers} "
                          f"{plural(offers, 'предложение', 'предложения', 'предложений')}.")
        browser.save_screenshot(str(tmp_path / "after-build.png"))
    finally:
        server.shutdown()
        scheduler.shutdown()


def wait_for_build(settings: Settings, after: int) -> int:
    """The id of the first finished build of 'main' after run ``after``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        store = CatalogStore(settings.store_path)
        try:
            run = store.last_run("feed:main", "build")
        finally:
            store.close()
        if run and run["id"] > after and run["status"] != "running":
            assert run["status"] == "ok", run
            return run["id"]
        time.sleep(0.2)
    raise AssertionError("no build finished within 60 s")


def test_guard_refusal_offers_a_forced_build(tmp_path, emulator_factory, serve):
    """When the guard stops a build, the page explains it and offers to publish anyway (POST force=1)."""
    emulator = emulator_factory(products=60)
    settings = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator),
                        feeds=(FeedSettings(name="main", pictures="none"),))
    build_feed(settings, settings.feeds[0])
    store = CatalogStore(settings.store_path)
    store.db.execute("UPDATE offers SET archived = 1 WHERE rowid % 4 != 0")  # most goods off sale at once
    store.db.conn.commit()
    store.close()
    with pytest.raises(BuildFailed):
        build_feed(settings, settings.feeds[0], sync=False)
    base = serve(settings)
    body = requests.get(base + "/health.json", timeout=10).json()["feeds"][0]
    assert body["state"] == "failing" and body["last_attempt"]["guard"] == "refused"
    assert body["error"]["title"].startswith("Защита остановила публикацию")
    html = requests.get(base + "/", timeout=10).text
    assert 'name="force" value="1"' in html and "Опубликовать несмотря на защиту" in html


def test_orders_waiting_for_1c_are_shown(tmp_path, serve):
    """An order 1C fetched but never confirmed is the classic "orders do not reach 1C" case."""
    from tests.exchange.test_orders_exchange import Api, Sale, sale_settings
    from tests.orders.test_orders import order_payload

    settings = sale_settings(tmp_path)
    base = serve(settings)
    api = Api(base)
    assert api.post(order_payload("A-1")).status_code == 201
    assert api.post(order_payload("A-2")).status_code == 201
    health = requests.get(base + "/health.json", timeout=10).json()["exchange"]["orders"]
    assert (health["orders"], health["waiting_for_1c"], health["last_query"]) == (2, 2, None)
    assert "1С ещё ни разу не запрашивала заказы" in requests.get(base + "/", timeout=10).text

    Sale(base).login().query()  # fetched, no success
    health = requests.get(base + "/health.json", timeout=10).json()["exchange"]["orders"]
    assert health["waiting_for_1c"] == 2 and health["last_query"]["orders"] == 2 and not health["last_query"]["confirmed_at"]
    assert "не подтверждён" in requests.get(base + "/", timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(requests.get(base + "/metrics", timeout=10).text)}
    assert families["skladbridge_orders_waiting_for_1c"].samples[0].value == 2


def test_a_build_killed_mid_run_shows_as_interrupted_at_once(tmp_path, emulator, serve):
    """A build process killed with -9 leaves its run 'running'; the page must not say so for an hour."""
    settings = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator),
                        feeds=(FeedSettings(name="main", pictures="none"),))
    build_feed(settings, settings.feeds[0])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from store import CatalogStore\n"
         "with CatalogStore(sys.argv[1]).run('feed:main', 'build'):\n    print('started', flush=True); time.sleep(60)",
         str(settings.store_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "started"
    base = serve(settings)
    feed = requests.get(base + "/health.json", timeout=10).json()["feeds"][0]
    assert feed["building"] is True and feed["state"] == "fresh"  # alive: really building
    holder.kill()
    holder.wait()
    feed = requests.get(base + "/health.json", timeout=10).json()["feeds"][0]
    assert feed["building"] is False and feed["last_attempt"]["status"] == "interrupted"
    assert feed["state"] == "failing" and feed["error"]["title"] == "Сборка прервана: процесс был остановлен"


def test_a_feed_anyone_can_guess_is_flagged_until_it_has_a_token(tmp_path, emulator, serve):
    """At a public address a feed without a token is /feeds/<name>.xml, purchase prices included: the page says
    so and what to do. A feed with a token, or the demo on this machine only, is not flagged."""
    feeds = (FeedSettings(name="open", pictures="none"), FeedSettings(name="costless", pictures="none", purchase_price="none"),
             FeedSettings(name="closed", pictures="none", token="feed-token-0123456789"))
    public = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator), public_url="https://feeds.example",
                      feeds=feeds)
    sync_source(public)
    for feed in feeds:
        build_feed(public, feed, sync=False)
    page = requests.get(serve(public) + "/", timeout=10).text
    assert "Фид открыт всем по адресу, который легко угадать: любой, кто наберёт …/feeds/open.xml, увидит каталог " \
           "вместе с закупочными ценами. Задайте фиду token" in page
    assert "…/feeds/costless.xml, увидит каталог. Задайте" in page and "/feeds/closed.xml" not in page
    body = requests.get(serve(public) + "/health.json", timeout=10).json()
    assert [bool(feed["open_warning"]) for feed in body["feeds"]] == [True, True, False]

    assert body["warnings"] == []

    local = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator), feeds=feeds)  # 127.0.0.1
    page = requests.get(serve(local) + "/", timeout=10).text
    assert "легко угадать" not in page
    # ... but a real account's feed and pictures at 127.0.0.1 are nothing retailCRM can open: the page says so
    assert "public_url — http://127.0.0.1:8080: ссылки на фиды и картинки ведут на этот компьютер" in page
    assert requests.get(serve(local) + "/healthz", timeout=10).status_code == 200  # nothing fails: a warning


def test_the_next_build_is_the_schedulers_own_plan_even_after_a_first_build_failed(tmp_path, emulator, serve):
    """The first build died in its sync (a revoked token), so the feed has no build of its own: the page must not
    say «сейчас, в очереди» for the next hour, but when the scheduler will really try again."""
    from app import create_app

    settings = Settings(data_dir=tmp_path / "data", moysklad=client_settings(emulator, token="revoked-token"),
                        feeds=(FeedSettings(name="main", pictures="none", interval_minutes=60),))
    running = start_scheduler(create_app(settings), retry_seconds=None)
    try:
        base = serve(settings)
        feed = wait_for(lambda: (body := requests.get(base + "/health.json", timeout=10).json())["feeds"][0]["error"]
                        and body["queue"] and body["feeds"][0], 30, "the failed first build")
        planned = running.get_job("feed:main").next_run_time
        assert dt.datetime.fromisoformat(feed["next_run_at"]) == planned.replace(microsecond=0)
        assert dt.timedelta(minutes=29) < planned - dt.datetime.now(dt.timezone.utc) < dt.timedelta(minutes=91)
        page = requests.get(base + "/", timeout=10).text
        line = page[page.index("<dt>Следующая сборка</dt>"):]
        assert "(через " in line[:line.index("</dd>")]
    finally:
        running.shutdown(wait=True)

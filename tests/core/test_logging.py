"""Log lines as operators read them: one per build, sync and exchange request, JSON when asked,
and no secret in any of them, the access log included (gunicorn with the repo's gunicorn.conf.py)."""

from __future__ import annotations

import json
import logging

import requests

from core.logging_setup import JsonFormatter, ScrubbingFormatter, scrub
from core.settings import AdminSettings, FeedSettings, MoySkladSettings, Settings, secret_values
from emulator.harness import wait_for

FEED_TOKEN = "feedtoken0123456789abc"
SESSID = "sessid-SECRET-0123456789"
HOOK = "hook-secret-0123456789"


def test_url_secrets_are_masked():
    line = (f'GET /exchange/1c?type=catalog&mode=file&sessid={SESSID}&filename=a.xml /feeds/{FEED_TOKEN}/main.xml '
            f'/feeds/{FEED_TOKEN}/main.xml.gz /webhooks/moysklad/{HOOK}')
    masked = scrub(line)
    assert SESSID not in masked and FEED_TOKEN not in masked and HOOK not in masked
    assert "sessid=***&filename=a.xml" in masked and "/feeds/***/main.xml" in masked and "/webhooks/moysklad/***" in masked
    # the router reads %2F and %2E as '/' and '.': such a path reaches the feed, so the log must not show its token
    for encoded in (f"/feeds/{FEED_TOKEN}%2Fmain.xml", f"/feeds/{FEED_TOKEN}/main%2Exml", f"/feeds/{FEED_TOKEN}%2fmain%2exml"):
        assert scrub(f'"GET {encoded} HTTP/1.1" 200') == '"GET /feeds/***/main.xml HTTP/1.1" 200'


def test_configured_secrets_are_scrubbed_from_text_and_json_lines():
    settings = Settings(moysklad=MoySkladSettings(token="moysklad-token-0123"), admin=AdminSettings(password="adm1n-pass"),
                        feeds=(FeedSettings(name="main", token=FEED_TOKEN),))
    secrets = secret_values(settings)
    assert set(secrets) == {"moysklad-token-0123", "adm1n-pass", FEED_TOKEN}
    record = logging.LogRecord("moysklad", logging.ERROR, __file__, 1, "request failed: Authorization: Bearer %s",
                               ("moysklad-token-0123",), None)
    assert ScrubbingFormatter(secrets).format(record).endswith("request failed: Authorization: Bearer ***")
    entry = json.loads(JsonFormatter(secrets).format(record))
    assert entry["message"] == "request failed: Authorization: Bearer ***"
    assert entry["level"] == "ERROR" and entry["logger"] == "moysklad" and entry["time"].endswith("+00:00")


def test_gunicorn_json_logs_have_one_line_per_build_and_sync_and_no_secrets(gunicorn):
    server = gunicorn(workers=1, feed_options=f"token: {FEED_TOKEN}",
                      environ={"SKLADBRIDGE_LOG_FORMAT": "json", "SKLADBRIDGE_WEBHOOK_SECRET": HOOK})
    server.wait_ready()
    base = f"http://127.0.0.1:{server.port}"
    wait_for(lambda: server.build_lines(), 60, "the first build")
    feed = requests.get(f"{base}/feeds/{FEED_TOKEN}/main.xml", headers={"Accept-Encoding": "identity"}, timeout=10)
    assert feed.status_code == 200
    feed_size = len(feed.content)
    requests.get(f"{base}/exchange/1c", params={"type": "catalog", "mode": "init", "sessid": SESSID}, timeout=10)
    requests.post(f"{base}/webhooks/moysklad/{HOOK}", json={}, timeout=10)
    for odd in (f"/feeds//{FEED_TOKEN}/main.xml", f"/feeds/{FEED_TOKEN}/main", f"/feeds/main.xml?token={FEED_TOKEN}",
                f"/webhooks/MoySklad/{HOOK}", f"/webhooks/moysklad//{HOOK}"):  # paths the URL patterns miss
        requests.get(base + odd, timeout=10, allow_redirects=False)
    server.stop()

    entries = [json.loads(line) for line in server.log().splitlines() if line.strip()]  # every line is JSON
    text = server.log()
    assert FEED_TOKEN not in text and SESSID not in text and HOOK not in text
    messages = [e.get("message") or e.get("request") for e in entries]
    assert any(m.startswith("moysklad sync #") and "requests" in m for m in messages)
    assert any(m.startswith("feed main: build #") and "published in" in m and "offers" in m for m in messages)
    access = [e for e in entries if e.get("logger") == "access"]
    assert {"GET /feeds/***/main.xml HTTP/1.1", "POST /webhooks/moysklad/*** HTTP/1.1"} <= {e["request"] for e in access}
    download = next(e for e in access if e["request"] == "GET /feeds/***/main.xml HTTP/1.1")
    assert download["bytes"] == str(feed_size) != "0"  # sent by sendfile, which gunicorn does not count
    assert all(isinstance(e["ms"], int) and e["status"] for e in access)
    exchange = [m for m in messages if m.startswith("exchange type=catalog mode=init")]
    assert exchange and "failure" in exchange[0] and " ms" in exchange[0]  # the exchange is off: refused, timed

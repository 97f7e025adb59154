"""The health page's «retailCRM» block and the push metrics, read back over HTTP from a real server."""

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from feeds.build import build_feed
from retailcrm.errors import KeyRejected
from retailcrm.push import push_feed
from tests.retailcrm.test_push import SITE, crm, crm_client, pushing_settings  # noqa: F401  (crm is a fixture)


def test_the_block_shows_the_last_push_what_waits_and_a_failure_with_what_to_do(tmp_path, emulator, crm, serve):  # noqa: F811
    settings = pushing_settings(tmp_path, emulator, crm)
    feed = settings.feeds[0]
    build_feed(settings, feed)
    crm.load_icml(b'<yml_catalog><shop><offers><offer id="nothing-we-have"/></offers></shop></yml_catalog>', SITE)
    waiting = push_feed(settings, feed, client=crm_client(crm)).waiting  # retailCRM has not loaded the feed yet
    assert waiting > 0
    crm.faults.revoked = True
    with pytest.raises(KeyRejected) as failure:  # the page must say why and what to do
        push_feed(settings, feed, full=True, client=crm_client(crm))
    base = serve(settings)

    block = requests.get(base + "/health.json", timeout=10).json()["feeds"][0]["retailcrm"]
    assert block["waiting"] == waiting and block["last_success"]["not_found"] == waiting
    assert block["error"]["title"] == "retailCRM не принял API-ключ" and "Ключи доступа к API" in block["error"]["action"]
    assert block["error"]["text"] == str(failure.value) and block["totals"] == {**block["totals"], "runs": 2, "failed": 1}

    page = requests.get(base + "/", timeout=10).text
    section = page[page.index('id="retailcrm-main"'):]
    section = section[:section.index("</dl>")]
    assert "retailCRM не принял API-ключ" in section and "Что делать:" in section
    assert f">{waiting} <span" in section.replace("\xa0", "")  # waiting offers, with what it means
    assert "ошибка, полная" in section
    assert "Отправка №2," in section and "2 отправки, 1 с ошибкой" in section  # the feed's own push number

    reply = requests.get(base + "/healthz", timeout=10)  # the feed file is fresh, but retailCRM's stock is not
    assert reply.status_code == 503
    assert reply.text.splitlines() == ["фид main: последняя отправка в retailCRM не прошла — retailCRM не принял API-ключ",
                                       "фид spb: ещё не собран", "фид rest: ещё не собран"]

    families = {f.name: f for f in text_string_to_metric_families(requests.get(base + "/metrics", timeout=10).text)}

    def value(name):
        samples = [s.value for s in families[name].samples if s.labels.get("feed") == "main"
                   and not s.name.endswith("_created")]
        assert len(samples) == 1, (name, families[name].samples)
        return samples[0]

    assert value("skladbridge_retailcrm_pushes") == 2 and value("skladbridge_retailcrm_push_failures") == 1
    assert value("skladbridge_retailcrm_waiting_offers") == waiting
    assert value("skladbridge_retailcrm_not_found") == waiting
    assert value("skladbridge_retailcrm_requests") == block["totals"]["requests"]
    assert {s.labels.get("feed") for s in families["skladbridge_retailcrm_pushes"].samples} == {"main"}

    crm.faults.revoked = False  # a new key: the next push gets through, and the monitor is satisfied again
    push_feed(settings, feed, full=True, client=crm_client(crm))
    assert requests.get(base + "/healthz", timeout=10).text.splitlines() == ["фид spb: ещё не собран", "фид rest: ещё не собран"]

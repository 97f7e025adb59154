"""Answers cut off on the way, in every read path of the client, against the emulator over loopback:
single documents, prefetched pages and bare-array reports are fetched again with the usual back-off,
never more than ``max_retries`` times, and the error after giving up says what happened."""

import collections
import datetime as dt
import logging

import pytest

from core.account_context import working_for
from core.logging_setup import configure_logging
from core.settings import Settings
from emulator.harness import client_settings
from moysklad.client import MoySkladClient, request_cost
from moysklad.errors import TransportFailure

FRAMINGS = ("close", "length", "chunked")
READS = {
    "get": lambda client: client.get("/entity/assortment", {"limit": 100})["rows"],
    "pages": lambda client: [row for page in client.iter_pages("/entity/assortment") for row in page["rows"]],
    "array": lambda client: list(client.iter_array("/report/stock/bystore/current", {"stockType": "reserve"})),
}
# what the error says happened, per framing of the cut (see emulator.server.TRUNCATE_FRAMINGS)
GAVE_UP = {"close": ("is not whole JSON (cut off on the way?)", "was cut off (the gzip stream ends early)"),
           "length": ("answer truncated",),
           "chunked": ("connection broken (Response ended prematurely)", "answer truncated")}


def read(server, what, **settings):
    client = MoySkladClient(client_settings(server, **settings))
    try:
        return READS[what](client), client.retries
    finally:
        client.close()


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("what", READS)
def test_a_cut_off_answer_is_fetched_again_and_reads_as_a_whole_one(emulator, what, framing):
    clean, _ = read(emulator, what, page_size=20)
    emulator.faults.update({"truncate_rate": 0.5, "truncate_framing": framing, "seed": 2})
    emulator.reset_stats()
    rows, retries = read(emulator, what, page_size=20, max_retries=10)
    assert rows == clean and len(rows) > 20
    assert retries > 0
    attempts = collections.Counter((e["path"], e["query"].get("offset")) for e in emulator.request_log)
    assert max(attempts.values()) <= 11


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("what", READS)
def test_an_answer_always_cut_off_fails_after_max_retries_saying_so(emulator, what, framing):
    emulator.faults.update({"truncate_rate": 1.0, "truncate_framing": framing})
    with pytest.raises(TransportFailure) as error:
        read(emulator, what, max_retries=2)
    assert emulator.stats["requests"] == 3
    assert str(error.value).endswith("(gave up after 3 attempts)")
    assert any(words in str(error.value) for words in GAVE_UP[framing]), str(error.value)


@pytest.mark.parametrize("day, assortment, stock_report", [
    ("2026-05-11", 1, 5), ("2026-05-12", 2, 5), ("2026-09-01", 3, 5), ("2026-11-30", 3, 5), ("2026-12-01", 4, 5)])
def test_a_request_costs_what_moysklad_charges_a_user_that_day(day, assortment, stock_report):
    """DOMAIN.md: a user's token (what МойСклад → Настройки → Токены makes) or login/password weighs 2 units from
    2026-05-12, 3 from 2026-09-01, 4 from 2026-12-01; a paged stock report costs 5."""
    today = dt.date.fromisoformat(day)
    assert (request_cost("/entity/assortment", today), request_cost("/report/stock/all", today)) == (
        assortment, stock_report)
    assert request_cost("/report/stock/all/current", today) == assortment


def test_retries_in_the_page_threads_are_logged_as_the_account_whose_sync_it_is(emulator, caplog):
    """With 20 clients in one log, a failing MoySklad must be traceable to its client, also from the threads that
    fetch pages ahead."""
    configure_logging(Settings())  # the service's logging: its records name the account
    emulator.faults.seed, emulator.faults.error_rate = 7, 0.3
    settings = client_settings(emulator, page_size=20, max_retries=8, retry_base_delay=0.01, retry_max_delay=0.02)
    with caplog.at_level(logging.WARNING, logger="moysklad.client"), working_for("client-b"), \
            MoySkladClient(settings) as client:
        rows = [row for page in client.iter_pages("/entity/assortment") for row in page["rows"]]
    retries = [record for record in caplog.records if "; retry " in record.getMessage()]
    assert len(rows) > settings.page_size and any(record.threadName.startswith("moysklad-page") for record in retries)
    assert {record.account for record in retries} == {"client-b"}

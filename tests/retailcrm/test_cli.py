"""``flask --app app retailcrm check|push`` as an operator runs them: real processes, both emulators on loopback."""

import os
import signal
import subprocess
import sys

from emulator.harness import EMULATOR_TOKEN, ROOT, free_port
from store import CatalogStore
from tests.moysklad.test_cli import flask
from tests.retailcrm.test_push import KEY, SITE, crm  # noqa: F401  (crm is a fixture)


def write_config(tmp_path, emulator, crm, stores="{main: all, spb: [Склад Санкт-Петербург]}",  # noqa: F811
                 prices="{wholesale: Оптовая цена}"):
    path = tmp_path / "config.yaml"
    path.write_text(
        f"data_dir: data\nmoysklad:\n  base_url: {emulator.base_url}\n  retry_base_delay: 0.05\n"
        f"feeds:\n  - name: main\n    pictures: none\n"
        f"    retailcrm: {{url: '{crm.base_url}', site: {SITE}, stores: {stores}, prices: {prices}}}\n"
        f"  - name: plain\n    pictures: none\n", encoding="utf-8")
    return dict(os.environ, SKLADBRIDGE_CONFIG=str(path), MOYSKLAD_TOKEN=EMULATOR_TOKEN, RETAILCRM_API_KEY=KEY)


def test_check_passes_when_the_key_shop_warehouses_and_price_types_exist(tmp_path, emulator, crm):  # noqa: F811
    env = write_config(tmp_path, emulator, crm)
    assert flask(env, "moysklad", "sync").returncode == 0
    result = flask(env, "retailcrm", "check")
    assert result.returncode == 0, result.stderr
    assert "accepted" in result.stdout and "retailCRM connection OK." in result.stdout
    assert "Склад Санкт-Петербург" in result.stdout and "wholesale" in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_check_exits_1_naming_what_is_missing_and_what_exists(tmp_path, emulator, crm):  # noqa: F811
    env = write_config(tmp_path, emulator, crm, stores="{main: all, msk: [Склад Питер]}", prices="{retail: Цена продажи}")
    assert flask(env, "moysklad", "sync").returncode == 0
    result = flask(env, "retailcrm", "check", "main")
    assert result.returncode == 1
    err = result.stderr
    assert "retailcrm.stores: retailCRM has no warehouse with the code 'msk' (it has: main, spb)" in err
    assert "retailcrm.prices: retailCRM has no price type with the code 'retail' (it has: base, wholesale)" in err
    assert "retailcrm.stores.msk: the moysklad catalog has no warehouse «Склад Питер» (it has: " in err
    assert "Основной склад" in err


def test_check_names_a_rejected_key(tmp_path, emulator, crm):  # noqa: F811
    env = dict(write_config(tmp_path, emulator, crm), RETAILCRM_API_KEY_MAIN="not-the-key-123")
    result = flask(env, "retailcrm", "check")
    assert result.returncode == 1 and "the API key is wrong or was deleted" in result.stderr
    assert "not-the-key-123" not in result.stdout + result.stderr


def test_push_prints_progress_and_a_summary_and_full_sends_everything_again(tmp_path, emulator, crm):  # noqa: F811
    env = write_config(tmp_path, emulator, crm)
    assert flask(env, "feeds", "build", "main").returncode == 0
    crm.load_icml(tmp_path / "data" / "feeds" / "main.xml", SITE)
    first = flask(env, "retailcrm", "push", "main")
    assert first.returncode == 0, first.stderr
    assert "stock:" in first.stderr and "prices:" in first.stderr
    assert "0 not found" in first.stdout and "throttled (503)" in first.stdout
    offers = int(first.stdout.split("s: ")[1].split(" offers")[0])
    assert offers > 100
    again = flask(env, "retailcrm", "push")
    assert again.returncode == 0 and "0 offers pushed (0 values) in 0 batches" in again.stdout
    full = flask(env, "retailcrm", "push", "--full")
    assert "full push #" in full.stdout and f": {offers} offers pushed" in full.stdout


def test_push_of_a_feed_that_does_not_push_exits_2_naming_the_ones_that_do(tmp_path, emulator, crm):  # noqa: F811
    env = write_config(tmp_path, emulator, crm)
    result = flask(env, "retailcrm", "push", "plain")
    assert result.returncode == 2 and "feeds that do: main" in result.stderr


def test_a_failing_push_exits_1_and_says_the_next_one_catches_up(tmp_path, emulator, crm):  # noqa: F811
    env = write_config(tmp_path, emulator, crm)
    assert flask(env, "feeds", "build", "main").returncode == 0
    crm.faults.revoked = True
    result = flask(env, "retailcrm", "push")
    assert result.returncode == 1 and "FAILED" in result.stderr and "rejected the API key" in result.stderr


def test_check_names_what_a_limited_key_may_not_do(tmp_path, emulator, crm):  # noqa: F811
    from emulator.retailcrm import REFERENCES

    crm.add_key("limited-key-0123", sites=("outlet",), methods=list(REFERENCES))
    env = dict(write_config(tmp_path, emulator, crm), RETAILCRM_API_KEY_MAIN="limited-key-0123")
    result = flask(env, "retailcrm", "check")
    assert result.returncode == 1
    assert "may not call /api/v5/store/inventories/upload" in result.stderr
    assert "may not call /api/v5/store/prices/upload" in result.stderr
    assert "no access to the shop 'shop' (it may use: outlet)" in result.stderr


def test_check_asks_a_stock_only_push_for_the_stock_method_only(tmp_path, emulator, crm):  # noqa: F811
    """A push without price types never calls the prices method: a key without it is fine for it."""
    from emulator.retailcrm import INVENTORIES, REFERENCES

    crm.add_key("stock-only-key-0123", sites=(SITE,), methods=[*REFERENCES, INVENTORIES])
    env = dict(write_config(tmp_path, emulator, crm, prices="{}"), RETAILCRM_API_KEY_MAIN="stock-only-key-0123")
    assert flask(env, "moysklad", "sync").returncode == 0
    result = flask(env, "retailcrm", "check", "main")
    assert result.returncode == 0, result.stderr
    assert "may not call" not in result.stderr


def test_check_refuses_to_push_another_price_into_the_price_type_the_icml_file_fills(tmp_path, emulator, crm):  # noqa: F811
    """retailCRM's default price type («base») takes the ICML file's <price> at every load: a push of the wholesale
    price into it would flip back every 3 hours. The feed's own price type there is fine."""
    env = write_config(tmp_path, emulator, crm, prices="{base: Оптовая цена, wholesale: Оптовая цена}")
    assert flask(env, "moysklad", "sync").returncode == 0
    result = flask(env, "retailcrm", "check", "main")
    assert result.returncode == 1
    assert ("retailcrm.prices.base: 'base' is retailCRM's default price type, which the ICML file's <price> fills "
            "from «Цена продажи»") in result.stderr
    assert "retailcrm.prices.wholesale" not in result.stderr  # only the base mapping is a problem

    env = write_config(tmp_path, emulator, crm, prices="{base: Цена продажи, wholesale: Оптовая цена}")
    result = flask(env, "retailcrm", "check", "main")
    assert result.returncode == 0, result.stderr


def test_an_address_where_nothing_listens_is_named_with_the_key_to_fix(tmp_path, emulator, crm):  # noqa: F811
    """A wrong retailcrm.url printed the library's text cut mid-word («… Failed to establi (gave up after 3 attempts)»)
    and named no key; MoySklad's check says which address refuses and which key to check."""
    closed = f"http://127.0.0.1:{free_port()}"
    env = write_config(tmp_path, emulator, crm)
    config = tmp_path / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace(crm.base_url, closed) +
                      f"accounts:\n  - name: client-b\n    moysklad: {{base_url: '{emulator.base_url}', token: other}}\n"
                      f"    feeds: [{{name: shop-b, pictures: none, retailcrm: {{url: '{closed}', api_key: k, "
                      f"site: {SITE}, stores: {{main: all}}}}}}]\n", encoding="utf-8")
    refuses = f"cannot reach retailCRM: 127.0.0.1:{closed.rsplit(':', 1)[1]} refuses connections (nothing listens there)"
    checked = flask(env, "retailcrm", "check")
    assert checked.returncode == 1
    assert f"  PROBLEM: {refuses}: check feeds.main.retailcrm.url (the retailCRM account's address" in checked.stderr
    assert f"  PROBLEM: {refuses}: check accounts.client-b.feeds.shop-b.retailcrm.url (" in checked.stderr
    assert "HTTPConnectionPool" not in checked.stderr

    assert flask(env, "moysklad", "sync").returncode == 0
    pushed = flask(env, "retailcrm", "push", "main")
    assert pushed.returncode == 1 and "HTTPConnectionPool" not in pushed.stderr
    assert f"FAILED (what was accepted before stays recorded; the next push sends the rest): {refuses}: check " \
           "feeds.main.retailcrm.url (" in pushed.stderr


def test_a_push_stopped_with_ctrl_c_records_that_what_retailcrm_accepted_stays(tmp_path, emulator_factory, crm):  # noqa: F811
    """A push commits batch by batch, yet Ctrl-C recorded «interrupted because the service was stopping; nothing of it
    was saved»: neither was true."""
    env = write_config(tmp_path, emulator_factory(products=1200), crm)
    assert flask(env, "feeds", "build", "main").returncode == 0
    crm.load_icml(tmp_path / "data" / "feeds" / "main.xml", SITE)
    crm.faults.latency_ms = 300
    push = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "retailcrm", "push", "main"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while " of " not in push.stderr.readline():  # the first batch was accepted
            assert push.poll() is None
        push.send_signal(signal.SIGINT)
        push.communicate(timeout=60)
    finally:
        push.kill()
    with CatalogStore(tmp_path / "data" / "catalog.sqlite") as store:
        run = store.last_run("retailcrm:main", "push")
    assert run["status"] == "interrupted"
    assert run["error"] == ("the run was interrupted (Ctrl-C, or the service stopping); what it finished before stays "
                            "saved, the next run does the rest")


def test_a_push_before_any_sync_says_the_catalog_is_not_loaded_yet(tmp_path, emulator, crm):  # noqa: F811
    """It said «price type «Оптовая цена» does not exist in the moysklad catalog (known: none)», as if the name were
    wrong; `retailcrm check` says the catalog is not loaded yet, and so does the push now, in the same words."""
    env = write_config(tmp_path, emulator, crm)
    not_loaded = "the moysklad catalog is not loaded yet (run `flask --app app moysklad sync`)"
    checked = flask(env, "retailcrm", "check", "main")
    assert f"{not_loaded}: names checked at the first push" in checked.stdout
    pushed = flask(env, "retailcrm", "push", "main")
    assert pushed.returncode == 1 and "known: none" not in pushed.stderr
    assert f"FAILED (what was accepted before stays recorded; the next push sends the rest): feed main: {not_loaded}; " \
           "nothing was pushed" in pushed.stderr
    assert not any("upload" in path for path in crm.stats_snapshot()["by_path"])

"""Several MoySklad accounts in one instance (one integrator, several clients): each with its own
store, feeds and pictures, taking turns in one build pool, so one failing client never stops another."""

from __future__ import annotations

import dataclasses

import pytest
import requests
from lxml import etree
from prometheus_client.parser import text_string_to_metric_families

from core.mailbox import REBUILD, Mailbox
from core.settings import AccountSettings, ConfigError, FeedSettings, Settings, load_settings
from emulator.harness import EMULATOR_TOKEN, Gunicorn, client_settings, free_port, wait_for
from emulator.retailcrm import RetailCrmEmulator
from scheduler import start_scheduler
from store import CatalogStore


def two_accounts(tmp_path, main_server, other_server, **other) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", moysklad=client_settings(main_server),
        feeds=(FeedSettings(name="shop-a", pictures="none"),),
        accounts=(AccountSettings(name="client-b", moysklad=client_settings(other_server, **other),
                                  feeds=(FeedSettings(name="shop-b", pictures="cache"),)),))


def offer_ids(body: bytes) -> set[str]:
    return {offer.get("id") for offer in etree.fromstring(body).iter("offer")}


def last_build(settings: Settings, feed: str) -> dict | None:
    view, _ = settings.find_feed(feed)
    store = CatalogStore(view.store_path)
    try:
        return store.last_run(f"feed:{feed}", "build")
    finally:
        store.close()


def test_each_account_has_its_own_store_feed_and_pictures(tmp_path, emulator_factory, serve):
    first, second = emulator_factory(products=30, seed=1), emulator_factory(products=20, seed=2)
    settings = two_accounts(tmp_path, first, second)
    base = serve(settings)
    from feeds.build import build_feed

    for view in settings.every_account():
        for feed in view.feeds:
            build_feed(view, feed)

    assert (tmp_path / "data" / "catalog.sqlite").exists()
    assert (tmp_path / "data" / "accounts" / "client-b" / "catalog.sqlite").exists()
    feed_a = requests.get(base + "/feeds/shop-a.xml", timeout=10)
    feed_b = requests.get(base + "/feeds/shop-b.xml", timeout=10)
    assert feed_a.status_code == feed_b.status_code == 200
    ids_a, ids_b = offer_ids(feed_a.content), offer_ids(feed_b.content)
    assert ids_a and ids_b and not ids_a & ids_b  # two catalogs, nothing mixed
    assert ids_b <= set(second.catalog.items) | {i for item in second.catalog.items.values() for i in item.variant_ids}

    pictures = [p.text for p in etree.fromstring(feed_b.content).iter("picture")]
    assert pictures and all(p.startswith(f"{settings.public_url}/images/client-b/") for p in pictures)
    picture = requests.get(base + pictures[0].removeprefix(settings.public_url), timeout=10)
    assert picture.status_code == 200 and picture.content[:3] in (b"\xff\xd8\xff", b"\x89PN")
    assert requests.get(base + "/images/" + pictures[0].rsplit("/", 1)[1], timeout=10).status_code == 404  # not main's
    assert requests.get(base + "/images/nobody/" + pictures[0].rsplit("/", 1)[1], timeout=10).status_code == 404

    health = requests.get(base + "/health.json", timeout=10).json()
    assert {(f["name"], f["account"], f["state"]) for f in health["feeds"]} == {
        ("shop-a", "main", "fresh"), ("shop-b", "client-b", "fresh")}
    assert [a["name"] for a in health["accounts"]] == ["main", "client-b"]
    assert all(a["moysklad"]["credentials"] == "ok" for a in health["accounts"])


def test_a_folder_left_by_a_renamed_account_is_named_on_the_page_with_what_to_do(tmp_path, emulator_factory, serve):
    """Renaming client-b to client-c in the config started client-c from nothing and left client-b's catalog (with
    its purchase prices) on disk, unsynced and unserved, without a word: the page now names the folder."""
    first, second = emulator_factory(products=30, seed=1), emulator_factory(products=20, seed=2)
    settings = dataclasses.replace(two_accounts(tmp_path, first, second), public_url="https://feeds.example")
    from feeds.build import build_feed

    for view in settings.every_account():
        for feed in view.feeds:
            build_feed(view, feed)
    assert requests.get(serve(settings) + "/health.json", timeout=10).json()["warnings"] == []

    renamed = dataclasses.replace(settings, accounts=(dataclasses.replace(settings.accounts[0], name="client-c"),))
    base = serve(renamed)
    folder = tmp_path / "data" / "accounts" / "client-b"
    warnings = requests.get(base + "/health.json", timeout=10).json()["warnings"]
    assert warnings == [next(w for w in warnings if w.startswith(f"Папка {folder} принадлежит аккаунту «client-b», "
                                                                "которого нет в accounts: конфигурации"))]
    assert "переименуйте client-b в новое имя" in warnings[0] and "Если клиент ушёл, удалите папку" in warnings[0]
    assert f"Папка {folder} принадлежит аккаунту «client-b»" in requests.get(base + "/", timeout=10).text
    assert (folder / "catalog.sqlite").exists()  # named, never touched


def test_an_account_whose_store_does_not_open_keeps_its_feeds_listed_as_failing(tmp_path, emulator_factory, serve):
    """client-b's catalog.sqlite became unreadable: /healthz said so, but its feed vanished from /health.json and
    /metrics, so a per-feed alert (feed_state fresh == 0) fell silent for exactly the broken account."""
    settings = two_accounts(tmp_path, emulator_factory(products=30, seed=1), emulator_factory(products=20, seed=2))
    from feeds.build import build_feed

    for view in settings.every_account():
        for feed in view.feeds:
            build_feed(view, feed)
    (tmp_path / "data" / "accounts" / "client-b" / "catalog.sqlite").write_text("not a database", encoding="utf-8")
    base = serve(settings)

    health = requests.get(base + "/health.json", timeout=10).json()
    feeds = {feed["name"]: feed for feed in health["feeds"]}
    assert feeds["shop-a"]["state"] == "fresh" and feeds["shop-b"]["state"] == "failing"
    assert feeds["shop-b"]["error"]["title"] == "Каталог аккаунта не открывается: фид не собирается"
    assert "file is not a database" in feeds["shop-b"]["error"]["text"] and feeds["shop-b"]["file"]["exists"]
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(requests.get(base + "/metrics", timeout=10).text)
               for sample in family.samples}
    assert samples[("skladbridge_store_ok", (("account", "client-b"),))] == 0
    assert samples[("skladbridge_store_ok", (("account", "main"),))] == 1
    assert samples[("skladbridge_feed_state", (("account", "client-b"), ("feed", "shop-b"), ("state", "failing")))] == 1
    assert ("skladbridge_feed_builds_total", (("account", "client-b"), ("feed", "shop-b"))) not in samples  # not 0
    assert samples[("skladbridge_feed_builds_total", (("account", "main"), ("feed", "shop-a")))] == 1
    page = requests.get(base + "/", timeout=10).text
    assert "Каталог аккаунта не открывается: фид не собирается" in page and "Каталог: " in page


def test_a_failing_account_does_not_hold_up_the_others(tmp_path, emulator_factory, serve):
    """Client B's MoySklad answers slowly and then rejects the token; client A's feed is built and
    served meanwhile, and the health page names B's problem."""
    first, second = emulator_factory(products=30, seed=1), emulator_factory(products=20, seed=2)
    second.faults.latency_ms = 6000
    settings = two_accounts(tmp_path, first, second, token="revoked-token")
    from app import create_app

    app = create_app(settings)
    scheduler = start_scheduler(app, retry_seconds=None)
    try:
        built_a = wait_for(lambda: (last_build(settings, "shop-a") or {}).get("status") == "ok" and last_build(settings, "shop-a"),
                           30, "client A's build")
        base = serve(settings)
        assert requests.get(base + "/feeds/shop-a.xml", timeout=10).status_code == 200
        sync_b = wait_for(lambda: last_sync(settings.every_account()[1]), 30, "client B's failed sync")
        assert sync_b["status"] == "failed" and built_a["finished_at"] <= sync_b["finished_at"]
        health = requests.get(base + "/health.json", timeout=10).json()
        assert health["accounts"][1]["moysklad"]["credentials"] == "rejected"
        states = {f["name"]: f["state"] for f in health["feeds"]}
        assert states == {"shop-a": "fresh", "shop-b": "failing"}
        assert health["feeds"][1]["error"]["title"] == "МойСклад не принял токен или логин/пароль"
        action = health["feeds"][1]["error"]["action"]  # where B's token goes, not where the main account's does
        assert "moysklad.token аккаунта client-b" in action and "переменную MOYSKLAD_TOKEN_CLIENT_B," in action
        assert health["accounts"][1]["moysklad"]["error"]["action"] == action
        assert requests.get(base + "/healthz", timeout=10).text == \
            "фид shop-b: ошибка сборки — МойСклад не принял токен или логин/пароль\n"
        metrics = {(sample.name, sample.labels.get("account")): sample.value
                   for family in text_string_to_metric_families(requests.get(base + "/metrics", timeout=10).text)
                   for sample in family.samples if family.name.startswith("skladbridge_moysklad_")}
        assert metrics[("skladbridge_moysklad_credentials_ok", "main")] == 1
        assert metrics[("skladbridge_moysklad_credentials_ok", "client-b")] == 0
        assert metrics[("skladbridge_moysklad_sync_failures_total", "client-b")] >= 1
        assert metrics[("skladbridge_moysklad_sync_failures_total", "main")] == 0
    finally:
        scheduler.shutdown()


def last_sync(view: Settings) -> dict | None:
    store = CatalogStore(view.store_path)
    try:
        run = store.last_run("moysklad", "sync")
    finally:
        store.close()
    return run if run and run["status"] != "running" else None


def test_account_secrets_come_from_the_environment(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("moysklad: {token: main-token}\nfeeds: [{name: a}]\n"
                      "accounts:\n  - name: shop-2\n    feeds: [{name: b}]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"accounts\[0\]\.moysklad: no credentials.*MOYSKLAD_TOKEN_SHOP_2"):
        load_settings(config, environ={})
    settings = load_settings(config, environ={"MOYSKLAD_TOKEN_SHOP_2": "second-token",
                                              "SKLADBRIDGE_WEBHOOK_SECRET_SHOP_2": "hook-secret-0123456789"})
    view = settings.every_account()[1]
    assert (view.account, view.moysklad.token, view.webhooks.secret) == ("shop-2", "second-token", "hook-secret-0123456789")
    assert view.data_dir == tmp_path / "data" / "accounts" / "shop-2"


@pytest.mark.parametrize("accounts, key, problem", [
    ("[{name: b, moysklad: {token: t}, feeds: [{name: a}]}]", "accounts[0].feeds[0].name", "used by another feed"),
    ("[{name: b, moysklad: {token: t}}, {name: b, moysklad: {token: t}}]", "accounts[1].name", "used by another account"),
    ("[{name: B, moysklad: {token: t}}]", "accounts[0].name", "lowercase"),
    ("[{name: b, moysklad: {token: t}, feeds: [{name: c, source: exchange}]}]", "accounts[0].feeds[0].source", "main feeds"),
    # shop-2 and shop_2 would share MOYSKLAD_TOKEN_SHOP_2 and its webhook secret
    ("[{name: shop-2, moysklad: {token: t}}, {name: shop_2, moysklad: {token: t}}]", "accounts[1].name",
     "read the same environment variables (MOYSKLAD_TOKEN_SHOP_2"),
    # one account's webhooks would rebuild another's feeds
    ("[{name: b, moysklad: {token: t}, webhook_secret: main-hook-0123456789}]", "accounts[0].webhook_secret",
     "the same secret as webhooks.secret"),
    # base64's '/' made every webhook a 404, with no error anywhere
    ("[{name: b, moysklad: {token: t}, webhook_secret: 'q9Zk/3hT+0aLw7Yx2bVn4cRm1sUe8dFp'}]",
     "accounts[0].webhook_secret (or SKLADBRIDGE_WEBHOOK_SECRET_B)", "openssl rand -hex 24"),
    ("[]", "webhooks.secret (or SKLADBRIDGE_WEBHOOK_SECRET)", "16-128 letters"),
    # the pages and the metrics call the main account main: two series of one name
    ("[{name: main, moysklad: {token: u}}]", "accounts[0].name", "names the main account"),
    # a copied token: two accounts syncing at once on one MoySklad user's limits
    ("[{name: b, moysklad: {token: t}, feeds: [{name: c}]}]", "accounts.b.moysklad", "the same MoySklad token as moysklad"),
    ("[{name: b, moysklad: {token: u}, feeds: [{name: c}]}, {name: d, moysklad: {token: u}, feeds: [{name: e}]}]",
     "accounts.d.moysklad", "the same MoySklad token as accounts.b.moysklad"),
])
def test_account_config_errors_name_the_key(tmp_path, accounts, key, problem):
    config = tmp_path / "config.yaml"
    hook = "short" if accounts == "[]" else "main-hook-0123456789"
    config.write_text(f"moysklad: {{token: t}}\nfeeds: [{{name: a}}]\nwebhooks: {{secret: {hook}}}\naccounts: {accounts}\n",
                      encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_settings(config, environ={})
    assert key in str(error.value) and problem in str(error.value)


def test_retailcrm_api_key_is_the_main_accounts_and_another_account_keeps_its_own(tmp_path):
    """Another account is another client's retailCRM: the main client's key must not be sent there."""
    config = tmp_path / "config.yaml"
    crm = "retailcrm: {{url: https://{0}.retailcrm.ru, site: s, api_key: {1}, stores: {{main: all}}}}"
    config.write_text(f"moysklad: {{token: t}}\nfeeds: [{{name: a, {crm.format('main', 'from-file-1')}}}]\n"
                      f"accounts: [{{name: b, moysklad: {{token: t2}}, feeds: [{{name: b1, {crm.format('other', 'from-file-2')}}},"
                      f" {{name: b2, {crm.format('third', 'from-file-3')}}}]}}]\n", encoding="utf-8")
    settings = load_settings(config, environ={"RETAILCRM_API_KEY": "main-key", "RETAILCRM_API_KEY_B2": "b2-key"})
    keys = {feed.name: feed.retailcrm.api_key for view in settings.every_account() for feed in view.feeds}
    assert keys == {"a": "main-key", "b1": "from-file-2", "b2": "b2-key"}


def test_a_client_accounts_retailcrm_key_hint_names_only_the_variables_it_reads(tmp_path):
    """RETAILCRM_API_KEY is the main account's: telling client b's operator to set it would send b nothing."""
    config = tmp_path / "config.yaml"
    crm = "retailcrm: {url: https://x.retailcrm.ru, site: s, stores: {main: all}}"
    config.write_text(f"moysklad: {{token: t}}\nfeeds: [{{name: a}}]\n"
                      f"accounts: [{{name: b, moysklad: {{token: t2}}, feeds: [{{name: b1, {crm}}}]}}]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_settings(config, environ={})
    assert str(error.value).endswith("accounts[0].feeds[0].retailcrm.api_key: set the retailCRM API key "
                                     "(accounts[0].feeds[0].retailcrm.api_key, or RETAILCRM_API_KEY_B1)")
    config.write_text(f"moysklad: {{token: t}}\nfeeds: [{{name: a, {crm}}}]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"feeds\[0\]\.retailcrm\.api_key, or RETAILCRM_API_KEY_A or RETAILCRM_API_KEY\)"):
        load_settings(config, environ={})


def test_log_lines_of_an_accounts_sync_build_push_and_webhook_name_the_account(tmp_path, emulator_factory):
    """An integrator reads one log for all clients: client b's MoySklad failing (its retries come from the threads
    that fetch pages ahead), its build, its retailCRM push and its webhook say account=client-b; the main account's
    say account=main; lines of no account's work say none."""
    main_server, other_server = emulator_factory(products=20, seed=1), emulator_factory(products=60, seed=2)
    other_server.faults.seed, other_server.faults.error_rate = 3, 0.3
    crm = RetailCrmEmulator(api_key="rcrm-key-0123456789", sites=("shop",)).start()
    hook = "client-b-hook-0123456789"
    config = (f"data_dir: data\nmoysklad: {{base_url: {main_server.base_url}, token: {EMULATOR_TOKEN}}}\n"
              "feeds: [{name: shop-a, pictures: none, interval_minutes: 0.05}]\n"
              "accounts:\n  - name: client-b\n"
              f"    moysklad: {{base_url: {other_server.base_url}, token: {EMULATOR_TOKEN}, page_size: 20, max_retries: 8, "
              "retry_base_delay: 0.01, retry_max_delay: 0.05}\n"
              f"    webhook_secret: {hook}\n"
              "    feeds: [{name: shop-b, pictures: none, interval_minutes: 0.05, "
              f"retailcrm: {{url: {crm.base_url}, site: shop, stores: {{main: all}}}}}}]\n")
    server = Gunicorn(tmp_path, config, workers=1, environ={"RETAILCRM_API_KEY_SHOP_B": "rcrm-key-0123456789"})
    try:
        server.wait_ready()
        wait_for(lambda: "retailcrm push #" in server.log() and server.build_lines("shop-a"), 60,
                 "client b's push and the main account's build")
        requests.post(f"{server.base}/webhooks/moysklad/{hook}",
                      json={"events": [{"meta": {"type": "product"}, "action": "UPDATE"}]}, timeout=10)
        server.stop()
    finally:
        crm.stop()
        if server.process.poll() is None:
            server.stop()
    lines = server.log().splitlines()

    def having(text: str) -> list[str]:
        found = [line for line in lines if text in line]
        assert found, f"no line with {text!r} in:\n" + "\n".join(lines[-40:])
        return found

    retries = having("; retry ")  # only client b's MoySklad fails
    assert all(" account=client-b: " in line for line in retries)
    for text in ("feed shop-b: build #", "retailcrm push #", "webhook POST /webhooks/moysklad/***"):
        assert all(" account=client-b: " in line for line in having(text)), text
    assert all(" account=main: " in line for line in having("feed shop-a: build #"))
    assert all("account=" not in line for line in having("scheduler started in process"))
    assert "rcrm-key-0123456789" not in server.log() and hook not in server.log()


def cli_environment(tmp_path, config: str, **variables: str) -> dict:
    """The environment of a command run against ``config`` with ``variables``, none of this shell's accounts."""
    path = tmp_path / "config.yaml"
    path.write_text(config, encoding="utf-8")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MOYSKLAD_", "SKLADBRIDGE_"))}
    return {**env, "SKLADBRIDGE_CONFIG": str(path), **variables}


def test_moysklad_check_says_which_account_it_checked_and_where_that_accounts_keys_are(tmp_path, emulator):
    from tests.moysklad.test_cli import flask

    closed = f"http://127.0.0.1:{free_port()}/api/remap/1.2"
    env = cli_environment(
        tmp_path, f"data_dir: data\nmoysklad: {{base_url: {emulator.base_url}}}\nfeeds: [{{name: a}}]\naccounts:\n"
        f"  - {{name: client-b, moysklad: {{base_url: {emulator.base_url}}}, feeds: [{{name: b}}]}}\n"
        f"  - {{name: client-c, moysklad: {{base_url: {closed}, token: c-token}}, feeds: [{{name: c}}]}}\n",
        MOYSKLAD_TOKEN=EMULATOR_TOKEN, MOYSKLAD_TOKEN_CLIENT_B="revoked")

    main = flask(env, "moysklad", "check")
    assert main.returncode == 0, main.stderr
    assert main.stdout.startswith("Checking MoySklad for account main (the others: client-b, client-c; name one with "
                                  "--account NAME).\n")
    assert main.stdout.endswith("MoySklad connection of account main OK.\n")

    other = flask(env, "moysklad", "check", "--account", "client-b")
    assert other.returncode == 1
    assert other.stdout.startswith("Checking MoySklad for account client-b (the others: main, client-c; name one with "
                                   "--account NAME, the main one without --account).\n")
    assert "For account client-b: accounts.client-b.moysklad.token (or MOYSKLAD_TOKEN_CLIENT_B)." in other.stderr
    assert "MoySklad connection check of account client-b failed" in other.stderr

    unreachable = flask(env, "moysklad", "check", "--account", "client-c")
    assert unreachable.returncode == 1
    assert "check accounts.client-c.moysklad.base_url (MoySklad's is " in unreachable.stderr
    assert "MOYSKLAD_BASE_URL" not in unreachable.stderr  # the main account's variable: client c's address is in the file


def test_the_main_account_is_named_main_on_the_command_line_as_on_the_pages(tmp_path, emulator):
    """`--account main` was refused: «No account named 'main' (accounts: (main))», while the pages, the metrics and the
    checks' own lines call it main."""
    from tests.moysklad.test_cli import flask

    env = cli_environment(
        tmp_path, f"data_dir: data\nmoysklad: {{base_url: {emulator.base_url}, retry_base_delay: 0.05}}\n"
        f"feeds: [{{name: a}}]\naccounts:\n"
        f"  - {{name: client-b, moysklad: {{base_url: {emulator.base_url}}}, feeds: [{{name: b}}]}}\n",
        MOYSKLAD_TOKEN=EMULATOR_TOKEN, MOYSKLAD_TOKEN_CLIENT_B="client-b-token")

    check = flask(env, "moysklad", "check", "--account", "main")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("Checking MoySklad for account main (the others: client-b; name one with "
                                   "--account NAME).\n")
    sync = flask(env, "moysklad", "sync", "--account", "main")
    assert sync.returncode == 0, sync.stderr
    assert (tmp_path / "data" / "catalog.sqlite").exists() and not (tmp_path / "data" / "accounts" / "client-b" / "catalog.sqlite").exists()

    unknown = flask(env, "moysklad", "sync", "--account", "client-x")
    assert unknown.returncode == 2 and unknown.stderr == "No account named 'client-x' (accounts: main, client-b)\n"


def test_a_webhook_rebuilds_only_its_own_account(tmp_path, emulator_factory, serve):
    settings = two_accounts(tmp_path, emulator_factory(products=10), emulator_factory(products=10, seed=3))
    import dataclasses

    account = dataclasses.replace(settings.accounts[0], webhook_secret="client-b-hook-0123456789")
    settings = dataclasses.replace(settings, accounts=(account,))
    base = serve(settings)
    reply = requests.post(f"{base}/webhooks/moysklad/client-b-hook-0123456789",
                          json={"events": [{"meta": {"type": "product"}, "action": "UPDATE"}]}, timeout=5)
    assert reply.json() == {"ok": True, "rebuild": True, "stock": False}
    mailbox = Mailbox(tmp_path / "data")
    assert mailbox.note(REBUILD, "client-b") is not None and mailbox.note(REBUILD) is None
    assert requests.post(f"{base}/webhooks/moysklad/wrong-secret", json={}, timeout=5).status_code == 404

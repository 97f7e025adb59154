"""A catalog store holds one MoySklad account: the demo's goods never become a real account's feed."""

import pytest

from core.settings import EmulatorSettings, MoySkladSettings
from emulator.harness import start_emulator
from moysklad.connect import open_client
from moysklad.errors import AccountMismatch
from moysklad.sync import sync_catalog
from store import CatalogStore
from tests.moysklad.test_cli import flask, write_config
from tests.moysklad.test_sync import dump, run_sync


def held(store) -> dict:
    return {key: store.setting("moysklad", f"account_{key}") for key in ("id", "address", "name")}


def test_the_first_sync_records_the_account_and_another_account_is_refused(emulator_factory, store):
    shop = emulator_factory(products=30, seed=1)
    run_sync(shop, store)
    account = shop.catalog.ids.account
    assert held(store) == {"id": account, "address": shop.base_url, "name": 'ООО "Ромашка & Ко"'}
    before = dump(store)

    other = emulator_factory(products=30, seed=2)
    with pytest.raises(AccountMismatch) as error:
        run_sync(other, store)
    message = str(error.value)
    assert message == (
        f"the catalog store {store.path} holds MoySklad account «ООО \"Ромашка & Ко\"» (accountId {account} at "
        f"{shop.base_url}), but moysklad.base_url and the credentials reach MoySklad account «ООО \"Ромашка & Ко\"» "
        f"(accountId {other.catalog.ids.account} at {other.base_url}). One store holds one account: give this one "
        f"a data_dir of its own (or an entry in accounts:), or, to replace the old catalog, stop the service and "
        f"move {store.path.parent} aside, then sync again; nothing was synced")
    assert dump(store) == before
    assert store.last_run("moysklad", "sync")["error"] == message  # the health page shows it


def test_the_same_account_at_another_address_is_the_same_account(emulator_factory, store):
    first = emulator_factory(products=30, seed=1)
    run_sync(first, store)
    first.stop()
    moved = emulator_factory(products=30, seed=1)  # the same account, reached at another port
    result = run_sync(moved, store)
    assert result.mode == "incremental"
    assert held(store)["address"] == moved.base_url


def test_the_demo_and_a_real_account_never_share_a_store(emulator_factory, tmp_path):
    demo = MoySkladSettings(emulator=EmulatorSettings(products=30, seed=1))
    with CatalogStore(tmp_path / "demo" / "catalog.sqlite") as store, open_client(demo) as client:
        sync_catalog(client, store)
        assert held(store)["address"] == "demo"
        real = start_emulator(30, seed=1)  # even one generated the same way is another thing than the demo
        try:
            with pytest.raises(AccountMismatch, match="holds the demo's generated catalog .* nothing was synced"):
                run_sync(real, store)
        finally:
            real.stop()


def test_check_warns_before_a_sync_would_be_refused(tmp_path, emulator_factory):
    shop, other = emulator_factory(products=30, seed=1), emulator_factory(products=30, seed=2)
    with CatalogStore(tmp_path / "data" / "catalog.sqlite") as store:
        run_sync(shop, store)
    _, env = write_config(tmp_path, other)
    result = flask(env, "moysklad", "check")
    assert result.returncode == 1
    assert (f"PROBLEM: a sync would be refused: the catalog store {tmp_path / 'data' / 'catalog.sqlite'} holds MoySklad "
            f"account «ООО \"Ромашка & Ко\"» (accountId {shop.catalog.ids.account} at {shop.base_url})") in result.stderr


def test_feeds_built_from_another_account_are_withdrawn_not_served_to_the_new_one(tmp_path, emulator_factory):
    """An account name reused for a new client (or a token changed to another account's): the store holds the old
    client's catalog, so the sync is refused, and the old client's goods, stock and purchase prices must stop
    being served at these feed URLs, to the new client's retailCRM. A rebuild's later feeds, which do not sync
    themselves, must not publish them again either."""
    import dataclasses

    from core.settings import FeedSettings, Settings
    from emulator.harness import client_settings
    from feeds.build import BuildFailed, build_feed

    old, new = emulator_factory(products=30, seed=1), emulator_factory(products=30, seed=2)
    feeds = (FeedSettings(name="shop", pictures="none"), FeedSettings(name="shop-opt", pictures="none"))
    settings = Settings(data_dir=tmp_path / "data", moysklad=client_settings(old), feeds=feeds)
    build_feed(settings, feeds[0])
    build_feed(settings, feeds[1], sync=False)
    served = [settings.feeds_dir / f"{feed.name}.xml" for feed in feeds]
    assert all(path.exists() for path in served)

    settings = dataclasses.replace(settings, moysklad=client_settings(new))
    with pytest.raises(AccountMismatch):
        build_feed(settings, feeds[0])
    assert not any(path.exists() for path in served)  # moved aside, not deleted
    assert all(path.with_name(path.name + ".withdrawn").exists() for path in served)
    with pytest.raises(BuildFailed, match="One store holds one account"):
        build_feed(settings, feeds[1], sync=False)
    assert not any(path.exists() for path in served)

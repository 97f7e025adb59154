"""The catalog store: one run is one transaction, runs are recorded, deletions only marked."""

import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from emulator.harness import ROOT
from store import CatalogReader, CatalogStore, ExchangeLog, RenderReader, StoreBusy, StoreError, unpack_offer


def offer(offer_id, name="Чайник", **extra):
    return {"id": offer_id, "product_id": offer_id, "kind": "product", "name": name, **extra}


def names(store):
    return {r["id"]: r["name"] for r in store.db.query("SELECT id, name FROM offers WHERE removed = 0")}


def test_a_successful_run_commits_and_is_recorded(store):
    with store.run("moysklad", "sync", "full") as run:
        run.upsert_offers([offer("a"), offer("b", "Кружка")])
        run.stats.add("offers", 2)
    assert names(store) == {"a": "Чайник", "b": "Кружка"}
    last = store.last_run("moysklad", "sync")
    assert last["status"] == "ok" and last["counts"] == {"offers": 2} and last["finished_at"]


def test_a_failed_run_changes_nothing_and_says_why(store):
    with store.run("moysklad", "sync") as run:
        run.upsert_offers([offer("a")])
    with pytest.raises(RuntimeError):
        with store.run("moysklad", "sync") as run:
            run.upsert_offers([offer("a", "Переименован"), offer("c")])
            run.skip("product", "x", "Без цены", "price is not a number")
            raise RuntimeError("MoySklad went away")
    assert names(store) == {"a": "Чайник"}
    last = store.last_run("moysklad", "sync")
    assert last["status"] == "failed" and last["error"] == "MoySklad went away"
    assert store.skipped_items(last["id"]) == [
        {"item_type": "product", "item_id": "x", "name": "Без цены", "reason": "price is not a number"}]


def test_readers_see_the_previous_state_until_the_run_commits(store, tmp_path):
    with store.run("moysklad", "sync") as run:
        run.upsert_offers([offer("a")])
    reader = sqlite3.connect(store.path)
    with store.run("moysklad", "sync") as run:
        run.upsert_offers([offer("a", "Новое имя")])
        assert reader.execute("SELECT name FROM offers").fetchall() == [("Чайник",)]
    assert reader.execute("SELECT name FROM offers").fetchall() == [("Новое имя",)]


def test_a_feed_reader_keeps_one_snapshot_while_a_run_commits(store):
    with store.run("moysklad", "sync") as run:
        run.upsert_categories([{"id": "f1", "name": "Чайники"}])
        run.upsert_offers([offer("a")])
    with CatalogReader(store.path) as reader:
        assert reader.offer_count("moysklad") == 1
        with store.run("moysklad", "sync") as run:
            run.upsert_categories([{"id": "f2", "name": "Кружки"}])
            run.upsert_offers([offer("b", "Кружка")])
        assert [row["name"] for row in reader.categories("moysklad")] == ["Чайники"]
        assert reader.offer_count("moysklad") == 1
    with CatalogReader(store.path) as reader:
        assert [row["name"] for row in reader.categories("moysklad")] == ["Кружки", "Чайники"]
        assert reader.offer_count("moysklad") == 2


def test_a_reader_of_a_missing_store_names_the_file(tmp_path):
    with pytest.raises(StoreError, match=r"cannot open the catalog store .*missing\.sqlite for reading"):
        CatalogReader(tmp_path / "missing.sqlite")
    assert not (tmp_path / "missing.sqlite").exists()


def test_a_packed_offer_unpacks_to_the_very_row_a_feed_reads(store):
    """The render digests packed rows and builds from unpacked ones: every value must come back the same, of
    the same type (a float that JSON shortened would publish another stock or weight)."""
    with store.run("moysklad", "sync") as run:
        run.upsert_products([{"id": "p", "kind": "product", "name": "Весы «Точность» \"2\"\n", "weight": 1 / 3,
                              "vat": 0.1 + 0.2, "volume": 123456789.12345679, "archived": 1}])
        run.upsert_offers([offer("p", code="\u0001x", buy_price=12345), offer("s", kind="service", product_id="p"),
                           offer("e", name="")])
        run.upsert("stock", [{"offer_id": "p", "warehouse_id": w, "stock": q, "reserve": 2.5e-7}
                             for w, q in (("a", 0.1), ("b", 0.2), ("c", 1e-300))], ("source", "offer_id", "warehouse_id"))
        run.upsert("prices", [{"offer_id": "p", "price_type_id": "t", "value": 99_999_999_00}],
                   ("source", "offer_id", "price_type_id"))
    query = dict(price_type_id="t", warehouse_ids=None, quantity_rule="free", include_bundles=True,
                 removed_before="2000-01-01T00:00:00+00:00")
    with CatalogReader(store.path) as reader:
        rows = list(reader.offers("moysklad", **query))
    store.close()  # a rendering process has the store open through apsw alone
    with RenderReader(store.path) as reader:
        packed = list(reader.packed_offers("moysklad", **query))
    unpacked = [unpack_offer(row[-1]) for row in packed]
    assert [[(type(value), value) for value in row] for row in unpacked] == \
        [[(type(value), value) for value in row] for row in rows]
    by_id = {row.id: row for row in rows}
    assert by_id["p"].stock_counted == pytest.approx(0.3 - 7.5e-7) and by_id["p"].weight == 1 / 3
    assert by_id["s"].price == by_id["p"].price == 99_999_999_00  # "s" has none of its own: its product's
    # live: neither the offer nor its card removed or archived (here the card is archived; "e" has none)
    assert [row[:4] for row in packed] == [("e", "e", None, 1), ("p", "p", None, 0), ("s", "p", None, 0)]


def test_a_process_has_a_store_open_through_one_sqlite_library_at_a_time(store, tmp_path):
    """Closing the file through one copy of SQLite would release the locks the other copy holds on it."""
    with pytest.raises(StoreError, match="open in this process through sqlite3"):
        RenderReader(store.path)
    with CatalogReader(store.path) as reader:  # the same library: it keeps track of its own locks
        assert reader.offer_count("moysklad") == 0
    store.close()
    store.close()  # closing twice uncounts it once
    with pytest.raises(StoreError, match="cannot open the catalog store"):
        RenderReader(tmp_path / "missing.sqlite")
    CatalogStore(tmp_path / "missing.sqlite").close()  # the failed apsw open left no count behind
    with RenderReader(store.path) as reader:
        with pytest.raises(StoreError, match="open in this process through apsw"):
            CatalogStore(store.path)
        assert reader.offer_count("moysklad") == 0
    with CatalogStore(store.path) as again:  # the apsw reader is closed: sqlite3 may open it again
        assert again.counts("moysklad")["offers"] == 0


def test_two_runs_of_one_source_cannot_overlap_and_other_sources_wait_their_turn(store, tmp_path):
    other = CatalogStore(store.path)
    finished = []

    def exchange_import():
        with other.run("exchange", "import") as run:  # SQLite has one writer: this waits for the sync
            run.upsert_offers([offer("e")])
        finished.append(time.monotonic())

    with store.run("moysklad", "sync") as run:
        with pytest.raises(StoreBusy, match="another moysklad run is in progress"):
            with other.run("moysklad", "sync"):
                pass
        waiting = threading.Thread(target=exchange_import)
        waiting.start()
        time.sleep(0.5)
        run.upsert_offers([offer("a")])
        assert not finished
        committed = time.monotonic()
    waiting.join(timeout=30)
    assert finished and finished[0] >= committed
    assert set(names(store)) == {"a", "e"}
    other.close()


def test_a_full_run_marks_what_it_did_not_see_as_removed(store):
    with store.run("moysklad", "sync") as run:
        run.upsert_offers([offer("a"), offer("b")])
    with store.run("exchange", "import") as run:
        run.upsert_offers([offer("x")])
    with store.run("moysklad", "sync") as run:
        run.upsert_offers([offer("a")])
        removed = run.mark_unseen_removed()
    assert removed["offers"] == 1
    rows = {r["id"]: (r["source"], r["removed"]) for r in store.db.query("SELECT id, source, removed FROM offers")}
    assert rows == {"a": ("moysklad", 0), "b": ("moysklad", 1), "x": ("exchange", 0)}
    with store.run("moysklad", "sync") as run:  # it comes back: live again
        run.upsert_offers([offer("a"), offer("b")])
        run.mark_unseen_removed()
    assert set(names(store)) == {"a", "b", "x"}


OFFER_ROW = ("id", "product_id", "kind", "name")


def by_product(store, product_id):
    """The offers of a product as a feed finds them: through the offers' product index."""
    sql = "SELECT id FROM offers WHERE source = 'moysklad' AND product_id = ?"
    plan = " ".join(row[3] for row in store.db.execute("EXPLAIN QUERY PLAN " + sql, ["p"]).fetchall())
    assert "offers_by_product" in plan, plan
    return sorted(row[0] for row in store.db.execute(sql, [product_id]).fetchall())


def test_a_whole_merge_builds_the_product_index_again_and_a_failed_one_keeps_it(store):
    with store.run("moysklad", "sync") as run:
        run.stage("offers", OFFER_ROW, [("v2", "p", "variant", "Синий"), ("v1", "p", "variant", "Красный"),
                                        ("q", "q", "product", "Кружка")])
        assert run.merge_staged("offers", "offers", ("source", "id"), seen=True, whole=True) == 3
    assert by_product(store, "p") == ["v1", "v2"]
    with pytest.raises(RuntimeError):
        with store.run("moysklad", "sync") as run:
            run.stage("offers", OFFER_ROW, [("v3", "p", "variant", "Зелёный")])
            run.merge_staged("offers", "offers", ("source", "id"), seen=True, whole=True)
            raise RuntimeError("MoySklad went away")
    assert by_product(store, "p") == ["v1", "v2"]


def test_a_skipped_item_keeps_its_last_good_version(store):
    with store.run("moysklad", "sync") as run:
        run.upsert_offers([offer("a"), offer("b")])
    with store.run("moysklad", "sync") as run:
        run.upsert_offers([offer("a")])
        run.skip("product", "b", None, "price is not a number")
        run.mark_unseen_removed()
    assert names(store) == {"a": "Чайник", "b": "Чайник"}


def test_a_killed_run_is_noticed_by_the_next_one(store, tmp_path):
    script = (
        "import os, store\n"
        f"s = store.CatalogStore({str(store.path)!r})\n"
        "with s.run('moysklad', 'sync') as run:\n"
        "    run.upsert_offers([{'id': 'k', 'product_id': 'k', 'kind': 'product', 'name': 'never'}])\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=str(ROOT))
    assert result.returncode == -9
    assert names(store) == {}
    with store.run("moysklad", "sync") as run:
        run.upsert_offers([offer("a")])
    runs = store.recent_runs()
    assert [r["status"] for r in runs] == ["ok", "interrupted"]
    assert "process killed" in runs[1]["error"]


def kill_a_push_after_its_first_batch(path) -> None:
    """A push in a process of its own, killed with -9 once retailCRM accepted (and it saved) one value."""
    script = (
        "import os, store\n"
        f"s = store.CatalogStore({str(path)!r})\n"
        "with s.run('retailcrm:main', 'push', one_transaction=False) as run:\n"
        "    s.record_pushed('main', [('offer-1', 'stock:main', '5')])\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    assert subprocess.run([sys.executable, "-c", script], cwd=str(ROOT)).returncode == -9


def test_a_killed_run_that_commits_as_it_goes_is_recorded_as_keeping_what_it_finished(store):
    """A push commits each batch retailCRM accepted; killed with -9 it was recorded as «nothing of it was saved»."""
    kill_a_push_after_its_first_batch(store.path)
    store.settle_dead_runs("retailcrm:main")
    run = store.last_run("retailcrm:main", "push")
    assert run["status"] == "interrupted"
    assert run["error"].endswith("what it finished before stays saved, the next run does the rest")
    assert store.pushed_values("main", "offer-1") == {"stock:main": "5"}


def test_a_push_an_earlier_version_left_running_is_recorded_as_keeping_what_it_finished(tmp_path):
    """A push of a release before runs.commits_as_it_goes, killed (-9, or the restart of an upgrade cut short), was
    settled by the upgraded service as «nothing of it was saved», though the batches retailCRM accepted were."""
    path = tmp_path / "catalog.sqlite"
    kill_a_push_after_its_first_batch(path)
    with sqlite3.connect(path) as old:  # as the earlier version made the file
        old.execute("ALTER TABLE runs DROP COLUMN commits_as_it_goes")
    old.close()
    with CatalogStore(path) as store:
        store.settle_dead_runs("retailcrm:main")
        run = store.last_run("retailcrm:main", "push")
        assert run["status"] == "interrupted"
        assert run["error"].endswith("what it finished before stays saved, the next run does the rest")
        assert store.pushed_values("main", "offer-1") == {"stock:main": "5"}


def test_a_store_made_before_tracking_type_gains_the_column_and_keeps_its_rows(tmp_path):
    path = tmp_path / "catalog.sqlite"
    with CatalogStore(path) as store:
        with store.run("moysklad", "sync") as run:
            run.upsert_products([{"id": "p", "kind": "product", "name": "Кроссовки"}])
        store.db.execute("ALTER TABLE products DROP COLUMN tracking_type")  # as an earlier version made it
        store.db.conn.commit()
    with CatalogStore(path) as store:
        with store.run("moysklad", "sync") as run:
            run.upsert_products([{"id": "q", "kind": "product", "name": "Ботинки", "tracking_type": "SHOES"}])
        rows = {r["id"]: (r["name"], r["tracking_type"]) for r in store.db.query("SELECT * FROM products")}
    assert rows == {"p": ("Кроссовки", None), "q": ("Ботинки", "SHOES")}


def test_a_store_from_before_a_cost_of_0_without_stock_counted_as_none_publishes_no_purchase_price_of_0(tmp_path):
    """Releases before it stored MoySklad's unit cost of 0 for a good with nothing in stock (no batch left), and an
    incremental sync after the upgrade does not read that cost again: the feed went on publishing
    <purchasePrice>0.00</purchasePrice> (which overwrites retailCRM's) until the next whole stock report."""
    path = tmp_path / "catalog.sqlite"
    with CatalogStore(path) as store:
        with store.run("moysklad", "sync") as run:
            run.upsert_offers([offer("none-left", cost=0), offer("in-stock", cost=0), offer("costed", cost=12300),
                               offer("sold-out-here", cost=0)])
            run.upsert("stock", [{"offer_id": "in-stock", "warehouse_id": "w1", "stock": 3},
                                 {"offer_id": "sold-out-here", "warehouse_id": "w1", "stock": 2},
                                 {"offer_id": "sold-out-here", "warehouse_id": "w2", "stock": -2}],
                       ("source", "offer_id", "warehouse_id"))
        for table, column in (("products", "from_offer"), ("price_types", "currency")):
            store.db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")  # as the earlier version made the file
        store.db.conn.commit()
    with CatalogStore(path) as store:
        costs = dict(store.db.execute("SELECT id, cost FROM offers").fetchall())
    assert costs == {"none-left": None, "in-stock": 0, "costed": 12300, "sold-out-here": None}


def test_the_run_log_keeps_the_latest_runs_and_counts_every_one(store, monkeypatch):
    """A service building every few minutes recorded every run for ever, and the health page and /metrics summed
    them all at every request: a year of one account's runs took them past 10 s. The log now keeps the latest
    RUNS_KEPT of each source and kind (and the latest good one), while the totals and numbers count every run."""
    monkeypatch.setattr("store.runs.RUNS_KEPT", 5)
    with store.run("feed:shop", "build") as run:
        run.stats.add("offers", 30)
        run.stats.requests = 4
    good = run.id
    for attempt in range(7):
        with pytest.raises(RuntimeError), store.run("feed:shop", "build") as run:
            run.skip("offer", f"o{attempt}", "Чайник", "no price")
            run.stats.requests = 1
            raise RuntimeError("MoySklad went away")
    with store.run("moysklad", "sync") as run:
        pass

    kept_runs = store.runs_of("feed:shop", "build", 100)
    kept = [r["id"] for r in kept_runs]
    assert len(kept) == 6 and kept[-1] == good  # the 5 latest failures and the build the feed was made by
    assert store.last_run("feed:shop", "build", "ok")["counts"] == {"offers": 30}
    assert [r["number"] for r in kept_runs] == [8, 7, 6, 5, 4, 1]
    skipped_of = {row[0] for row in store.db.execute("SELECT run_id FROM skipped")}
    assert skipped_of == set(kept[:5])  # what the forgotten runs skipped went with them
    totals = store.run_totals("feed:shop", "build")
    assert (totals["runs"], totals["failed"], totals["requests"]) == (8, 7, 11)
    assert store.counted_totals("feed:shop", "build") == {"offers": [30, 1], "skipped": [7, 7]}
    assert store.run_totals("moysklad", "sync")["runs"] == 1
    with store.run("feed:shop", "build") as run:
        pass
    assert run.number == 9 and store.last_run("feed:shop", "build")["number"] == 9


def test_a_store_from_before_run_totals_numbers_its_runs_and_counts_them(tmp_path):
    path = tmp_path / "catalog.sqlite"
    with CatalogStore(path) as store:
        for requests in (3, 5):
            with store.run("retailcrm:shop", "push") as run:
                run.stats.requests = requests
                run.stats.add("records", requests * 10)
        with pytest.raises(RuntimeError), store.run("retailcrm:shop", "push"):
            raise RuntimeError("retailCRM is down")
        with store.run("moysklad", "sync"):
            pass
        for statement in ("DROP TABLE run_totals", "DROP INDEX runs_by_source", "ALTER TABLE runs DROP COLUMN number"):
            store.db.execute(statement)  # as an earlier version made the file
        store.db.conn.commit()
    with CatalogStore(path) as store:
        assert [r["number"] for r in store.runs_of("retailcrm:shop", "push", 10)] == [3, 2, 1]
        assert store.push_totals("retailcrm:shop") | {"latency_sum": 0} == {
            "runs": 3, "failed": 1, "requests": 8, "throttled": 0, "retries": 0, "offers": 0, "records": 80,
            "not_found": 0, "latency_count": 0, "latency_sum": 0}
        assert store.run_totals("moysklad", "sync")["runs"] == 1
        with store.run("retailcrm:shop", "push"):
            pass
        assert store.run_totals("retailcrm:shop", "push")["runs"] == 4


def test_the_exchange_log_keeps_the_latest_sessions_and_counts_every_one(tmp_path, monkeypatch):
    """1C exchanging every few minutes left some 100,000 sessions a year, all summed at every /metrics scrape."""
    monkeypatch.setattr("store.exchange_log.SESSIONS_KEPT", 3)
    with ExchangeLog(tmp_path / "exchange.sqlite") as log:
        for number in range(5):
            session = log.open_session(f"hash-{number}", "10.0.0.5")
            log.update_session(session["id"], bytes=10, result="failed" if number == 0 else "success")
        assert log.totals() == {"sessions": 5, "failed": 1, "bytes": 50}
        assert [session["id"] for session in log.recent()] == [5, 4, 3]
        assert log.session_by_token("hash-0") is None

"""Picture cache and permanent links against the emulator over loopback, and the public /images route."""

import http.client
import threading

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

from core.settings import Settings
from emulator.harness import client_settings
from feeds.web import feeds_bp
from moysklad import images
from moysklad.client import MoySkladClient
from moysklad.images import cache_images, fetch_permanent_links, image_id_of
from moysklad.sync import sync_catalog
from store import StoreBusy

PNG = b"\x89PNG\r\n\x1a\n"
# How the feed renderer finds the cache row of an image (store.PICTURES).
RENDERER_JOIN = ("SELECT i.owner_id, i.href, c.* FROM images i JOIN image_cache c ON c.source = i.source "
                 "AND c.image_id = substr(i.href, instr(i.href, '/download/') + 10) WHERE i.source = 'moysklad'")


@pytest.fixture
def server(emulator_factory):
    return emulator_factory(products=40, seed=4)


@pytest.fixture
def client(server):
    client = MoySkladClient(client_settings(server))
    yield client
    client.close()


@pytest.fixture
def images_dir(tmp_path):
    return tmp_path / "images"


def sync(client, store, **kwargs):
    return sync_catalog(client, store, **kwargs)


def image_ids(store) -> set[str]:
    return {image_id_of(r["href"]) for r in store.db.query("SELECT href FROM images WHERE source = 'moysklad'")}


def cache_rows(store) -> dict[str, dict]:
    return {r["image_id"]: r for r in store.db.query("SELECT * FROM image_cache")}


def log_of(server, prefix: str) -> list[dict]:
    return [e for e in server.request_log if e["path"].startswith(prefix)]


def owner_of(store, image_id: str) -> str:
    return next(r["owner_id"] for r in store.db.query("SELECT owner_id, href FROM images") if r["href"].endswith(image_id))


def test_first_run_downloads_every_first_image_and_the_second_nothing(server, client, store, images_dir):
    sync(client, store)
    wanted = image_ids(store)
    assert len(wanted) > 10

    seen = []
    first = cache_images(client, store, images_dir, progress=lambda *step: seen.append(step))

    assert seen[0] == ("pictures", 0, len(wanted)) and seen[-1] == ("pictures", len(wanted), len(wanted))
    assert [step[1] for step in seen] == list(range(len(wanted) + 1))
    assert (first.downloaded, first.unchanged, first.failed) == (len(wanted), 0, {})
    files = {p.name for p in images_dir.iterdir() if not p.name.startswith(".")}
    assert files == {f"{image_id}.png" for image_id in wanted}
    for image_id in wanted:
        data = (images_dir / f"{image_id}.png").read_bytes()
        assert data.startswith(PNG) and data == server.renderer.image_bytes(image_id)
    assert first.bytes == sum(len(server.renderer.image_bytes(i)) for i in wanted)
    rows = cache_rows(store)
    assert {i: (r["local_file"], r["error"]) for i, r in rows.items()} == {i: (f"{i}.png", None) for i in wanted}
    assert len(list(store.db.query(RENDERER_JOIN))) == store.db["images"].count

    server.reset_stats()
    second = cache_images(client, store, images_dir)
    assert (second.downloaded, second.unchanged, second.failed, second.removed) == (0, len(wanted), {}, 0)
    assert server.request_log == []


def test_credentials_never_reach_the_file_links(server, client, store, images_dir):
    sync(client, store)
    server.reset_stats()
    result = cache_images(client, store, images_dir)

    downloads, files = log_of(server, "/download/"), log_of(server, "/_files/")
    assert len(downloads) == len(files) == result.downloaded
    assert {e["auth"] for e in downloads} == {"bearer"}
    assert {e["auth"] for e in files} == {None}


def test_an_image_whose_updated_changes_is_fetched_again(server, client, store, images_dir):
    sync(client, store)
    cache_images(client, store, images_dir)
    image_id = sorted(image_ids(store))[0]
    server.catalog.update_item(owner_of(store, image_id), name="Renamed")
    sync(client, store)
    server.reset_stats()

    result = cache_images(client, store, images_dir)

    assert result.downloaded == 1
    assert [e["path"] for e in log_of(server, "/download/")] == [f"/download/{image_id}"]
    assert cache_rows(store)[image_id]["updated"] == next(
        r["updated"] for r in store.db.query("SELECT updated, href FROM images") if r["href"].endswith(image_id))


def test_files_retailcrm_would_refuse_are_recorded_and_not_kept(server, client, store, images_dir):
    sync(client, store)
    cache_images(client, store, images_dir)
    not_image, too_big, lies_about_size = sorted(image_ids(store))[:3]
    overrides = {not_image: b"<html>Access denied</html>", too_big: PNG + b"\0" * 2_000_000,
                 lies_about_size: PNG + b"\0" * 2_100_000}
    server.catalog.image_bytes_override.update(overrides)
    for image_id in overrides:
        server.catalog.update_item(owner_of(store, image_id), name=f"Changed {image_id}")
    sync(client, store)
    store.db.execute("UPDATE images SET size = 100 WHERE href LIKE ?", [f"%{lies_about_size}"])
    store.db.conn.commit()
    server.reset_stats()

    result = cache_images(client, store, images_dir)

    assert result.failed == {"not a jpg/png": 1, "larger than 2 MB": 2}
    assert result.downloaded == 0
    # the reported size already rules the big one out: it is never downloaded
    assert sorted(e["path"] for e in log_of(server, "/download/")) == sorted(
        f"/download/{i}" for i in (not_image, lies_about_size))
    rows = cache_rows(store)
    for image_id in overrides:
        assert rows[image_id]["local_file"] is None
        assert not list(images_dir.glob(f"{image_id}*")) and not list(images_dir.glob(f".part-{image_id}"))
    assert rows[not_image]["error"] == "not a jpg/png"
    assert rows[too_big]["error"] == rows[lies_about_size]["error"] == "larger than 2 MB"

    server.reset_stats()
    again = cache_images(client, store, images_dir)
    assert again.failed == result.failed and again.downloaded == 0
    assert log_of(server, "/download/") == []  # the same file is not downloaded to be refused again


def test_a_failed_download_is_counted_and_the_others_go_on(server, client, store, images_dir):
    sync(client, store)
    broken = sorted(image_ids(store))[0]
    server.faults.fail_after = {"path": f"/download/{broken}", "after": 0, "status": 404}

    result = cache_images(client, store, images_dir)

    assert result.failed == {"download failed": 1}
    assert result.downloaded == len(image_ids(store)) - 1
    assert cache_rows(store)[broken]["local_file"] is None and "HTTP 404" in cache_rows(store)[broken]["error"]

    server.faults.fail_after = None
    retried = cache_images(client, store, images_dir)
    assert (retried.downloaded, retried.failed) == (1, {})
    assert cache_rows(store)[broken]["error"] is None


def test_a_failed_download_of_a_changed_image_keeps_the_earlier_copy(server, client, store, images_dir):
    sync(client, store)
    cache_images(client, store, images_dir)
    image_id = sorted(image_ids(store))[0]
    before = cache_rows(store)[image_id]
    server.catalog.update_item(owner_of(store, image_id), name="Renamed")
    sync(client, store)
    server.faults.fail_after = {"path": f"/download/{image_id}", "after": 0, "status": 404}

    assert cache_images(client, store, images_dir).failed == {"download failed": 1}
    row = cache_rows(store)[image_id]
    assert (row["local_file"], row["updated"]) == (before["local_file"], before["updated"]) and row["error"]
    assert (images_dir / row["local_file"]).is_file()

    server.faults.fail_after = None
    assert cache_images(client, store, images_dir).downloaded == 1
    assert cache_rows(store)[image_id]["error"] is None


def test_server_errors_are_retried_with_a_fresh_link(server, client, store, images_dir):
    sync(client, store)
    server.faults.seed = 3
    server.faults.error_rate = 0.3

    result = cache_images(client, store, images_dir)

    assert (result.downloaded, result.failed) == (len(image_ids(store)), {})
    assert client.retries > 0


def test_an_expired_file_link_is_replaced_by_a_fresh_one(server, client, store, images_dir, monkeypatch):
    sync(client, store)
    resolve, expired_once = server.resolve_download_link, set()

    def expire_each_first_link(link):
        image_id = resolve(link)
        if image_id in expired_once:
            return image_id
        expired_once.add(image_id)
        return None  # answered 403 "Request has expired", like the file host after a minute

    monkeypatch.setattr(server, "resolve_download_link", expire_each_first_link)
    server.reset_stats()

    result = cache_images(client, store, images_dir)

    wanted = image_ids(store)
    assert (result.downloaded, result.failed) == (len(wanted), {})
    assert len(log_of(server, "/download/")) == 2 * len(wanted)
    assert sorted(e["status"] for e in log_of(server, "/_files/")) == [200] * len(wanted) + [403] * len(wanted)


def test_files_of_images_no_longer_referenced_are_removed(server, client, store, images_dir):
    sync(client, store)
    cache_images(client, store, images_dir)
    product = next(i for i in server.catalog.items.values() if i.kind == "product" and i.image_count and not i.variant_ids)
    gone = server.catalog.image_ids(product)[0]
    server.catalog.delete_item(product.id)
    stray, foreign = images_dir / "00000000-0000-0000-0000-000000000000.jpg", images_dir / "notes.txt"
    stray.write_bytes(b"\xff\xd8\xff")
    foreign.write_text("not ours")
    (images_dir / f".part-{gone}").write_bytes(b"half")
    sync(client, store, full=True)

    result = cache_images(client, store, images_dir)

    assert result.removed == 2
    assert not (images_dir / f"{gone}.png").exists() and not stray.exists() and foreign.exists()
    assert not list(images_dir.glob(".part-*"))
    assert gone not in cache_rows(store)
    assert set(cache_rows(store)) == image_ids(store)


def test_one_cache_run_per_folder(client, store, images_dir):
    images_dir.mkdir()
    with images._exclusive(images_dir):
        with pytest.raises(StoreBusy):
            cache_images(client, store, images_dir)


def test_only_canonical_uuids_become_file_names():
    image_id = "3c0b1c6e-2f4a-11ee-0a80-0b5d0012a3f1"
    assert image_id_of(f"https://api.moysklad.ru/api/remap/1.2/download/{image_id}") == image_id
    for href in (None, "", "https://x/download/..", "https://x/download/../../etc/passwd",
                 f"https://x/download/{image_id.upper()}", f"https://x/download/{image_id.replace('-', '')}",
                 f"https://x/download/{image_id}?x=1"):
        assert image_id_of(href) is None


@pytest.fixture
def pictures_server(tmp_path):
    """A tiny app with only the pictures blueprint, under a real WSGI server."""
    app = Flask(__name__)
    app.config["SETTINGS"] = Settings(data_dir=tmp_path)
    app.register_blueprint(feeds_bp)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_the_pictures_route_serves_cached_files_and_nothing_else(server, client, store, images_dir, pictures_server):
    sync(client, store)
    cache_images(client, store, images_dir)
    name = sorted(p.name for p in images_dir.glob("*.png"))[0]
    base = f"http://127.0.0.1:{pictures_server.server_port}"

    answer = requests.get(f"{base}/images/{name}", allow_redirects=False)
    assert answer.status_code == 200
    assert answer.content == (images_dir / name).read_bytes()
    assert answer.headers["Content-Type"] == "image/png"
    assert "max-age=86400" in answer.headers["Cache-Control"] and answer.headers["ETag"]
    again = requests.get(f"{base}/images/{name}", headers={"If-None-Match": answer.headers["ETag"]})
    assert again.status_code == 304

    for path in (f"/images/{name.upper()}", "/images/00000000-0000-0000-0000-000000000000.png",
                 "/images/..%2Fcatalog.sqlite", "/images/%2e%2e%2fcatalog.sqlite", "/images/.lock"):
        assert requests.get(base + path).status_code == 404, path
    connection = http.client.HTTPConnection("127.0.0.1", pictures_server.server_port)
    connection.request("GET", "/images/../catalog.sqlite")
    assert connection.getresponse().status == 404
    connection.close()


def test_permanent_links_are_fetched_for_items_with_images_and_then_only_changed_ones(server, client, store):
    first_sync = sync(client, store)
    owners = {r["owner_id"] for r in store.db.query("SELECT owner_id FROM images")}
    server.reset_stats()

    result = fetch_permanent_links(client, store)

    assert (result.requested, result.stored, result.failed) == (len(owners), len(owners), {})
    asked = log_of(server, "/entity/")
    assert len(asked) == len(owners) and all(e["path"].endswith("/images") for e in asked)
    assert all(e["query"] == {"fields": "downloadPermanentHref", "limit": "100"} for e in asked)
    joined = list(store.db.query(RENDERER_JOIN))
    assert len(joined) == len(owners)
    for row in joined:
        assert row["permanent_href"] == f"{server.origin}/_files/cdn/{row['image_id']}"
    cdn = requests.get(joined[0]["permanent_href"])
    assert cdn.status_code == 200 and cdn.content.startswith(PNG)

    changed = sorted(owners)[0]
    server.catalog.update_item(changed, name="Changed")
    sync(client, store)
    server.reset_stats()
    again = fetch_permanent_links(client, store, changed_since=first_sync.bookmark)
    assert (again.requested, again.stored) == (1, 1)
    assert [e["path"] for e in log_of(server, "/entity/")][0].split("/")[3] == changed


def test_pictures_1c_sent_through_the_exchange_survive_a_moysklad_refresh(server, client, store, images_dir):
    """Both sources cache pictures in the same folder; MoySklad's pruning must keep the exchange's."""
    from exchange.catalog_import import import_file

    upload = images_dir.parent / "upload"
    (upload / "import_files").mkdir(parents=True)
    (upload / "import_files" / "soap.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9")
    (upload / "import.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><КоммерческаяИнформация ВерсияСхемы="2.07">'
        '<Каталог СодержитТолькоИзменения="true"><Ид>c</Ид><Товары><Товар><Ид>soap</Ид>'
        '<Наименование>Мыло</Наименование><Картинка>import_files/soap.jpg</Картинка></Товар></Товары></Каталог>'
        '</КоммерческаяИнформация>', encoding="utf-8")
    import_file(store, upload / "import.xml", upload_dir=upload, images_dir=images_dir)
    exchange_files = {r["local_file"] for r in store.db.query("SELECT local_file FROM image_cache WHERE source = 'exchange'")}
    assert len(exchange_files) == 1

    sync(client, store)
    cache_images(client, store, images_dir)
    cache_images(client, store, images_dir)

    assert all((images_dir / name).exists() for name in exchange_files)


def test_permanent_links_to_files_retailcrm_would_refuse_are_left_out_and_not_asked_again(server, client, store):
    """A CDN link is published without being downloaded: the file name and size MoySklad lists decide."""
    sync(client, store)
    webp, too_big = sorted(image_ids(store))[:2]
    server.catalog.image_bytes_override.update({webp: b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 64,
                                                too_big: PNG + b"\0" * 2_000_000})
    for image_id in (webp, too_big):
        server.catalog.update_item(owner_of(store, image_id), name=f"Changed {image_id}")
    sync(client, store)

    result = fetch_permanent_links(client, store)

    assert result.failed == {"not a jpg/png": 1, "larger than 2 MB": 1}
    links = {row["image_id"]: row["permanent_href"] for row in store.db.query(RENDERER_JOIN)}
    assert links[webp] is None and links[too_big] is None
    assert sum(link is not None for link in links.values()) == result.stored == result.requested - 2
    server.reset_stats()
    after_every_change = max(r["updated"] for r in store.db.query("SELECT updated FROM offers")) + "9"
    again = fetch_permanent_links(client, store, changed_since=after_every_change)
    assert again.requested == 0 and log_of(server, "/entity/") == []  # the refused ones are not asked again

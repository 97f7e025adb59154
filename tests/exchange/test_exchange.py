"""CommerceML exchange over a real WSGI server: a client that behaves like 1C / MoySklad runs whole exchanges."""

from __future__ import annotations

import http.client
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from core.settings import ConfigError, ExchangeSettings, MoySkladSettings, Settings, load_settings, redacted
from emulator.harness import ROOT, SHARED
from exchange import catalog_import
from store import CatalogStore, ExchangeLog

FIXTURES = SHARED / "fixtures" / "commerceml"
LOGIN, PASSWORD = "1c-exchange", "Пароль-обмена-42"
FILE_LIMIT = 64 * 1024


class OneC:
    """Calls the endpoint the way 1C does: cookie from checkauth, chunks of file_limit, import polling."""

    def __init__(self, base: str, path: str = "/exchange/1c", login: str = LOGIN, password: str = PASSWORD,
                 use_sessid: bool = False):
        self.url, self.use_sessid = base + path, use_sessid
        self.auth = (login.encode(), password.encode())  # 1C sends UTF-8 credentials
        self.cookie: tuple[str, str] | None = None
        self.file_limit = FILE_LIMIT

    def call(self, mode: str, method: str = "GET", data=None, kind: str = "catalog", **params) -> list[str]:
        """One request; returns the reply's lines after checking it is the protocol's plain text."""
        headers, query = {"Connection": "close"}, {"type": kind, "mode": mode, **params}
        if self.cookie and not self.use_sessid:
            headers["Cookie"] = f"{self.cookie[0]}={self.cookie[1]}"
        if self.cookie and self.use_sessid:
            query["sessid"] = self.cookie[1]
        response = requests.request(method, self.url, params=query, data=data, headers=headers, timeout=30,
                                    auth=self.auth if mode == "checkauth" else None)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/plain"), response.headers["Content-Type"]
        assert "<html" not in response.text.lower()
        return response.text.split("\n")

    def checkauth(self) -> list[str]:
        lines = self.call("checkauth")
        if lines[0] == "success":
            self.cookie = (lines[1], lines[2])
        return lines

    def init(self) -> dict:
        lines = self.call("init", version="3.1")
        values = dict(line.split("=", 1) for line in lines)
        self.file_limit = int(values["file_limit"])
        return values

    def send(self, name: str, data: bytes) -> list[str]:
        """Post a file in chunks of file_limit, as 1C splits big files; stops at the first failure."""
        for start in range(0, max(len(data), 1), self.file_limit):
            lines = self.call("file", "POST", data=data[start:start + self.file_limit], filename=name)
            if lines != ["success"]:
                return lines
        return lines

    def import_(self, name: str, timeout: float = 120) -> tuple[list[str], int]:
        """Repeat mode=import until it is not progress; returns the last answer and the polls made."""
        deadline, polls = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            lines = self.call("import", filename=name)
            polls += 1
            if lines[0] != "progress":
                return lines, polls
            assert len(lines) == 2 and lines[1]
            time.sleep(0.05)
        raise AssertionError(f"import of {name} still in progress after {timeout} s")

    def exchange(self, files: dict[str, bytes], imports: list[str]) -> None:
        """A whole successful exchange."""
        assert self.checkauth()[0] == "success"
        self.init()
        for name, data in files.items():
            assert self.send(name, data) == ["success"]
        for name in imports:
            assert self.import_(name)[0] == ["success"]
        assert self.call("deactivate") == ["success"]
        assert self.call("complete") == ["success"]


# --- the app under a real server --------------------------------------------------------------

def exchange_settings(tmp_path: Path, **overrides) -> Settings:
    values = dict(login=LOGIN, password=PASSWORD, file_limit=FILE_LIMIT, max_session_bytes=64 * 1024 * 1024)
    values.update(overrides)
    return Settings(data_dir=tmp_path / "data", moysklad=MoySkladSettings(token="unused"),
                    exchange=ExchangeSettings(**values))


def catalog(settings: Settings) -> dict:
    store = CatalogStore(settings.store_path)
    try:
        return store.counts("exchange")
    finally:
        store.close()


def sessions(settings: Settings) -> list[dict]:
    with ExchangeLog(settings.exchange_log_path) as log:
        return log.recent()


def fixture(folder: str, name: str) -> bytes:
    path = FIXTURES / folder / name
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path.read_bytes()


def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# --- configuration --------------------------------------------------------------------------

def test_exchange_credentials_come_from_the_environment(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("moysklad: {token: t}\nexchange: {login: from-file, password: from-file, zip: false}\n", encoding="utf-8")
    settings = load_settings(config, environ={"EXCHANGE_LOGIN": "env-login", "EXCHANGE_PASSWORD": "env-pass"})
    assert (settings.exchange.login, settings.exchange.password, settings.exchange.zip) == ("env-login", "env-pass", False)
    assert settings.exchange.file_limit == 100 * 1024 * 1024 and settings.exchange.session_minutes == 60
    assert "env-pass" not in repr(redacted(settings))


@pytest.mark.parametrize("exchange, key", [
    ("{password: p}", "exchange.login"),
    ("{file_limit: 10}", "exchange.file_limit"),
    ("{file_limit: 2048, max_session_bytes: 1024}", "exchange.max_session_bytes"),
    ("{max_session_files: 0}", "exchange.max_session_files"),
    ("{session_minutes: 0}", "exchange.session_minutes"),
    ("{zip: maybe}", "exchange.zip"),
])
def test_exchange_config_errors_name_the_key(tmp_path, exchange, key):
    config = tmp_path / "config.yaml"
    config.write_text(f"moysklad: {{token: t}}\nexchange: {exchange}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_settings(config, environ={})


# --- whole exchanges ------------------------------------------------------------------------

def test_a_split_ut11_exchange_loads_the_goods(tmp_path, serve):
    settings = exchange_settings(tmp_path)
    client = OneC(serve(settings))
    files = {"import0_1.xml": fixture("1c-ut11-2.07", "import0_1.xml"), "offers0_1.xml": fixture("1c-ut11-2.07", "offers0_1.xml")}
    assert len(files["import0_1.xml"]) > 2 * FILE_LIMIT  # really sent in chunks
    client.exchange(files, list(files))
    assert catalog(settings)["offers"] > 0
    [logged] = sessions(settings)
    assert logged["result"] == "ok" and logged["finished_at"] and logged["client"] == "127.0.0.1"
    assert logged["bytes"] == sum(map(len, files.values()))
    assert {f["name"]: f["bytes"] for f in logged["files"]} == {name: len(data) for name, data in files.items()}
    assert all(f["import"]["status"] == "ok" and f["import"]["results"] for f in logged["files"])
    assert not (settings.data_dir / "exchange" / str(logged["id"])).exists()  # uploads freed on complete


def test_the_php_alias_with_sessid_instead_of_a_cookie(tmp_path, serve):
    settings = exchange_settings(tmp_path)
    client = OneC(serve(settings), path="/1c_exchange.php", use_sessid=True)
    lines = client.checkauth()
    assert lines[0] == "success" and lines[3] == f"sessid={lines[2]}" and lines[4].startswith("timestamp=")
    assert abs(int(lines[4].split("=")[1]) - time.time()) < 5
    assert client.init() == {"zip": "yes", "file_limit": str(FILE_LIMIT), "sessid": lines[2], "version": "3.1"}
    assert client.send("import.xml", fixture("1c-official-2.04", "import.xml")) == ["success"]
    assert client.import_("import.xml")[0] == ["success"]
    assert client.import_("import.xml")[0] == ["success"]  # asked again: the same answer, no second import
    assert catalog(settings)["offers"] > 0
    with CatalogStore(settings.store_path) as store:
        assert [run["status"] for run in store.runs_of("exchange", "import", 10)] == ["ok"]  # one import, not two


def test_init_echoes_a_version_and_honours_zip_no(tmp_path, serve):
    client = OneC(serve(exchange_settings(tmp_path, zip=False, file_limit=5000)))
    client.checkauth()
    assert client.call("init", version="2.10")[:2] == ["zip=no", "file_limit=5000"]
    assert client.call("init", version="2.10")[3] == "version=2.10"
    assert client.call("init", version="<b>")[3] == "version=3.1"


def picture(seed: int) -> bytes:
    return bytes((seed * 7 + i) % 256 for i in range(20_000))


def test_a_zip_exchange_is_extracted_with_its_picture_folders(tmp_path, serve):
    settings = exchange_settings(tmp_path)
    client = OneC(serve(settings))
    pictures = {f"import_files/{i:02x}/{i:02x}c0ffee-{i}.jpg": picture(i) for i in range(5)}
    archive = make_zip({"import.xml": fixture("1c-official-2.04", "import.xml"),
                        "offers.xml": fixture("1c-official-2.04", "offers.xml"), **pictures})
    assert client.checkauth()[0] == "success"
    client.init()
    assert client.send("catalog.zip", archive) == ["success"]
    upload = settings.data_dir / "exchange" / str(sessions(settings)[0]["id"]) / "upload"
    assert not (upload / "import.xml").exists()  # not extracted before 1C asks for an import
    assert client.import_("import.xml")[0] == ["success"]
    for name, data in pictures.items():
        assert (upload / name).read_bytes() == data
    assert client.import_("offers.xml")[0] == ["success"]
    assert client.call("deactivate") == ["success"]
    assert client.call("complete") == ["success"]
    assert catalog(settings)["offers"] > 0
    [logged] = sessions(settings)
    archive_entry = next(f for f in logged["files"] if f["name"] == "catalog.zip")
    assert archive_entry["bytes"] == len(archive) and archive_entry["archive"] == "extracted 7 files"
    assert {f["name"] for f in logged["files"]} == {"catalog.zip", "import.xml", "offers.xml"}


def test_importing_the_archive_itself_imports_its_xml_files_in_order(tmp_path, serve, monkeypatch):
    settings = exchange_settings(tmp_path)
    order = []
    real = catalog_import.import_file
    monkeypatch.setattr("exchange.imports.import_file", lambda store, path, **kw: order.append(path.name) or real(store, path, **kw))
    client = OneC(serve(settings))
    archive = make_zip({"offers.xml": fixture("1c-official-2.04", "offers.xml"),
                        "import.xml": fixture("1c-official-2.04", "import.xml")})
    client.checkauth()
    assert client.send("full.zip", archive) == ["success"]
    assert client.import_("full.zip")[0] == ["success"]
    assert order == ["import.xml", "offers.xml"]


def test_a_picture_folder_sent_file_by_file_is_counted_per_folder(tmp_path, serve):
    settings = exchange_settings(tmp_path, zip=False)
    client = OneC(serve(settings))
    client.checkauth()
    for i in range(3):
        assert client.send(f"import_files/ab/pic{i}.jpg", picture(i)) == ["success"]
    assert client.send("import_files\\ab\\pic0.jpg", b"more") == ["success"]  # same name (1C on Windows): appended
    upload = settings.data_dir / "exchange" / str(sessions(settings)[0]["id"]) / "upload"
    assert (upload / "import_files/ab/pic0.jpg").read_bytes() == picture(0) + b"more"
    assert client.call("complete") == ["success"]
    assert sessions(settings)[0]["files"] == [{"name": "import_files/", "files": 3, "bytes": 60_004}]


def test_polls_report_progress_until_the_import_ends(tmp_path, serve, monkeypatch):
    settings = exchange_settings(tmp_path)
    release = threading.Event()
    real = catalog_import.import_file

    def slow(store, path, **kw):
        kw["progress"](17)
        release.wait(10)
        return real(store, path, **kw)

    monkeypatch.setattr("exchange.imports.import_file", slow)
    monkeypatch.setattr("exchange.imports.BEAT_SECONDS", 0.05)
    client = OneC(serve(settings))
    client.checkauth()
    client.send("import.xml", fixture("1c-official-2.04", "import.xml"))
    assert client.call("import", filename="import.xml") == ["progress", "начата загрузка import.xml"]
    deadline = time.monotonic() + 5
    while client.call("import", filename="import.xml")[1] != "17 позиций обработано (import.xml)":
        assert time.monotonic() < deadline
    assert client.call("deactivate")[0] == "failure"  # not while the import runs
    release.set()
    assert client.import_("import.xml")[0] == ["success"]


def test_a_job_whose_worker_died_is_reported_failed(tmp_path, serve, monkeypatch):
    settings = exchange_settings(tmp_path)
    monkeypatch.setattr("exchange.imports._run", lambda *args: None)  # the job's worker "dies" at once
    monkeypatch.setattr("exchange.imports.STALE_SECONDS", 0.2)
    client = OneC(serve(settings))
    client.checkauth()
    client.send("import.xml", fixture("1c-official-2.04", "import.xml"))
    assert client.call("import", filename="import.xml")[0] == "progress"
    time.sleep(0.3)
    lines = client.call("import", filename="import.xml")
    assert lines[0] == "failure" and "прервалась" in lines[1]
    assert catalog(settings)["offers"] == 0


def test_a_file_sent_again_after_its_import_starts_over(tmp_path, serve):
    settings = exchange_settings(tmp_path)
    client = OneC(serve(settings))
    client.checkauth()
    client.send("import.xml", b"<broken")
    assert client.import_("import.xml")[0][0] == "failure"
    client.send("import.xml", fixture("1c-official-2.04", "import.xml"))
    assert client.import_("import.xml")[0] == ["success"]


class Holder:
    """Keeps one sync gunicorn worker busy: an upload whose body arrives only when released."""

    def __init__(self, base: str):
        self.client = OneC(base)  # logged in now: a login waits while an import holds the store's write lock
        assert self.client.checkauth()[0] == "success"

    def hold(self) -> None:
        url = urlsplit(self.client.url)
        self.connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        self.connection.putrequest("POST", f"{url.path}?type=catalog&mode=file&filename=hold.jpg")
        self.connection.putheader("Cookie", "=".join(self.client.cookie))
        self.connection.putheader("Content-Length", "10")
        self.connection.endheaders(b"12345")
        time.sleep(0.5)  # accepted by a worker, which now waits for the rest

    def release(self) -> None:
        self.connection.send(b"67890")
        assert self.connection.getresponse().read() == b"success"
        self.connection.close()


def test_an_exchange_across_two_gunicorn_workers(tmp_path):
    """One worker runs the import, the other answers the polls from the shared state."""
    files = {"import0_1.xml": fixture("1c-ut11-2.07", "import0_1.xml"), "offers0_1.xml": fixture("1c-ut11-2.07", "offers0_1.xml")}
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: data\nmoysklad:\n  token: unused\nexchange:\n  login: {LOGIN}\n"
                      f"  file_limit: {FILE_LIMIT}\n", encoding="utf-8")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, SKLADBRIDGE_CONFIG=str(config), EXCHANGE_PASSWORD=PASSWORD)
    access_log = tmp_path / "access.log"
    with open(tmp_path / "gunicorn.log", "w") as errors:
        server = subprocess.Popen(
            # sync workers, one thread (not gunicorn.conf.py's threaded ones): a held upload must occupy a worker
            [sys.executable, "-m", "gunicorn", "--worker-class", "sync", "--threads", "1", "--workers", "2",
             "--bind", f"127.0.0.1:{port}",
             "--access-logfile",
             str(access_log), "--access-logformat", "%(p)s %(r)s", "app:create_app()"],
            cwd=ROOT, env=env, stderr=errors)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(base + "/status.json", timeout=10)
                break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still booting
                assert time.monotonic() < deadline and server.poll() is None, "gunicorn did not start"
                time.sleep(0.2)
        client = OneC(base)
        assert client.checkauth()[0] == "success"
        client.init()
        for name, data in files.items():
            assert client.send(name, data) == ["success"]
        first, second = Holder(base), Holder(base)
        first.hold()  # worker 1 busy: the import starts in worker 2
        assert client.call("import", filename="import0_1.xml")[0] == "progress"
        second.hold()  # lands on worker 2 (worker 1 is busy)
        first.release()  # worker 1 answers the polls from here on
        assert client.import_("import0_1.xml")[0] == ["success"]
        second.release()
        assert client.import_("offers0_1.xml")[0] == ["success"]
        assert client.call("deactivate") == ["success"]
        assert client.call("complete") == ["success"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    polls = [line.split()[0] for line in access_log.read_text().splitlines() if "mode=import&filename=import0_1.xml" in line]
    assert len(set(polls)) == 2, polls  # started by one worker, answered by the other
    settings = load_settings(config, environ=env)
    assert catalog(settings)["offers"] > 0
    assert [s["result"] for s in sessions(settings)][-1] == "ok"


def test_a_refusal_during_an_import_is_answered_at_once_and_logged_after(tmp_path, serve, monkeypatch):
    """The import holds the store's write lock: a refusal meanwhile must not wait for it."""
    settings = exchange_settings(tmp_path)
    release = threading.Event()

    def holding(store, path, **kw):
        with store.run("exchange", "import"):
            release.wait(10)
        return catalog_import.ImportResult("import", {}, 0)

    monkeypatch.setattr("exchange.imports.import_file", holding)
    client = OneC(serve(settings))
    client.checkauth()
    client.send("import.xml", b"<x/>")
    client.send("offers.xml", b"<x/>")
    assert client.call("import", filename="import.xml")[0] == "progress"
    started = time.monotonic()
    assert client.call("import", filename="offers.xml") == ["failure", "дождитесь окончания загрузки import.xml"]
    assert time.monotonic() - started < 2
    release.set()
    assert client.import_("import.xml")[0] == ["success"]
    [logged] = sessions(settings)
    assert logged["result"] == "failed" and logged["error"] == "дождитесь окончания загрузки import.xml"


def test_a_failed_exchange_is_a_problem_for_the_monitor_until_the_next_one_succeeds(tmp_path, serve):
    """1C reports a refused file to whoever watches 1C; MoySklad's automatic exchange tells nobody. /healthz must."""
    settings = exchange_settings(tmp_path)
    base = serve(settings)
    client = OneC(base)
    client.checkauth()
    client.init()
    client.send("import.xml", "<?xml version='1.0' encoding='UTF-8'?><КоммерческаяИнформация><Каталог>".encode())  # cut off
    answer, _ = client.import_("import.xml")
    assert answer[0] == "failure"
    reply = requests.get(base + "/healthz", timeout=10)
    assert reply.status_code == 503
    assert reply.text.splitlines() == [f"обмен с 1С: последний сеанс (127.0.0.1) завершился ошибкой — {answer[1]}"]
    assert requests.get(base + "/health.json", timeout=10).json()["ok"] is False

    good = {"import.xml": fixture("1c-official-2.04", "import.xml")}
    OneC(base).exchange(good, list(good))
    reply = requests.get(base + "/healthz", timeout=10)
    assert (reply.status_code, reply.text) == (200, "ok\n")


def test_a_picture_sent_again_after_its_import_never_changes_the_served_one(tmp_path, serve):
    """Imported pictures are hard-linked into the images folder; 1C appending to the same name later
    must get a file of its own, not grow the picture the feeds link to."""
    from tests.exchange.test_commerceml import catalog

    settings = exchange_settings(tmp_path, zip=False)
    base = serve(settings)
    client = OneC(base)
    client.checkauth()
    jpeg = b"\xff\xd8\xff\xe0" + picture(3)
    assert client.send("import_files/ab/kettle.jpg", jpeg) == ["success"]
    document = catalog([("kettle", "Чайник")], extra="<Картинка>import_files/ab/kettle.jpg</Картинка>")
    assert client.send("import.xml", document.encode()) == ["success"]
    assert client.import_("import.xml")[0] == ["success"]
    served = [path for path in settings.images_dir.iterdir() if path.suffix == ".jpg"]
    assert len(served) == 1 and served[0].read_bytes() == jpeg

    assert client.send("import_files/ab/kettle.jpg", b"more bytes") == ["success"]  # appended, as 1C does
    upload = settings.data_dir / "exchange" / str(sessions(settings)[0]["id"]) / "upload" / "import_files/ab/kettle.jpg"
    assert upload.read_bytes() == jpeg + b"more bytes"
    assert served[0].read_bytes() == jpeg
    assert requests.get(f"{base}/images/{served[0].name}", timeout=10).content == jpeg


def test_an_archive_bringing_a_served_picture_again_never_changes_the_served_one(tmp_path, serve):
    """A second archive of the session with the same picture path is extracted into a file of its own: writing
    into the upload the images folder links to would serve its bytes unchecked (over 2 MB, not a picture)."""
    from tests.exchange.test_commerceml import catalog

    settings = exchange_settings(tmp_path)
    base = serve(settings)
    client = OneC(base)
    client.checkauth()
    client.init()
    jpeg = b"\xff\xd8\xff\xe0" + picture(5)
    extra = "<Картинка>import_files/cd/kettle.jpg</Картинка>"
    document = catalog([("kettle", "Чайник")], extra=extra).encode()
    assert client.send("a.zip", make_zip({"import.xml": document, "import_files/cd/kettle.jpg": jpeg})) == ["success"]
    assert client.import_("import.xml")[0] == ["success"]
    [served] = [path for path in settings.images_dir.iterdir() if path.suffix == ".jpg"]
    assert served.stat().st_nlink == 2  # hard-linked to the upload

    html = b"<html><script>alert(1)</script>" + os.urandom(3 * 1024 * 1024).hex().encode()[:3 * 1024 * 1024]
    assert client.send("b.zip", make_zip({"import2.xml": document, "import_files/cd/kettle.jpg": html})) == ["success"]
    client.import_("import2.xml")  # extracts b.zip; its picture is refused (over 2 MB, not a JPEG)
    upload = settings.data_dir / "exchange" / str(sessions(settings)[0]["id"]) / "upload" / "import_files/cd/kettle.jpg"
    assert upload.read_bytes() == html
    assert served.read_bytes() == jpeg
    assert requests.get(f"{base}/images/{served.name}", timeout=10).content == jpeg


def test_a_chunk_appears_at_the_upload_name_only_once_it_has_arrived_whole(tmp_path, serve):
    """An import running meanwhile could link a half-arrived picture (and serve it while it grows): a chunk is
    written beside the upload and takes its name when whole."""
    settings = exchange_settings(tmp_path, zip=False)
    holder = Holder(serve(settings))
    upload = settings.data_dir / "exchange" / str(sessions(settings)[0]["id"]) / "upload"
    holder.hold()  # hold.jpg: 5 of 10 bytes sent
    assert not (upload / "hold.jpg").exists()
    holder.release()
    assert (upload / "hold.jpg").read_bytes() == b"1234567890"
    holder.hold()  # 1C appends to the same name: the whole file stays as it was until the chunk is in
    assert (upload / "hold.jpg").read_bytes() == b"1234567890"
    holder.release()
    assert (upload / "hold.jpg").read_bytes() == b"12345678901234567890"

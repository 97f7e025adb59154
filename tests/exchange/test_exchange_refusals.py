"""Bad input to the exchange: every refusal is ``failure\\n<reason>`` (status 200, plain text) and changes nothing."""

from __future__ import annotations

import http.client
import io
import json
import logging
import shutil
import socket
import stat
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
import requests

from emulator.harness import Gunicorn
from exchange import sessions as exchange_sessions
from tests.exchange.test_exchange import (
    FILE_LIMIT,
    LOGIN,
    PASSWORD,
    OneC,
    catalog,
    exchange_settings,
    fixture,
    make_zip,
    sessions,
)

GOOD_IMPORT = ("1c-official-2.04", "import.xml")


@pytest.fixture
def setup(tmp_path, serve):  # noqa: F811 — the fixture imported above
    """A served app whose store already holds one imported catalog; yields (settings, base URL)."""
    settings = exchange_settings(tmp_path, max_session_bytes=4 * FILE_LIMIT)
    base = serve(settings)
    OneC(base).exchange({"import.xml": fixture(*GOOD_IMPORT)}, ["import.xml"])
    return settings, base


@pytest.fixture
def client(setup):
    """A logged-in client, and after the test: the catalog is as it was and nothing escaped the folder."""
    settings, base = setup
    before = catalog(settings)
    client = OneC(base)
    assert client.checkauth()[0] == "success"
    client.init()
    yield client
    assert catalog(settings) == before
    assert not list(settings.data_dir.parent.rglob("evil*"))


def failed(lines: list[str], *words: str) -> None:
    assert lines[0] == "failure" and len(lines) == 2 and lines[1], lines
    for word in words:
        assert word in lines[1], lines


def upload_dir(settings, client) -> Path:
    return settings.data_dir / "exchange" / str(sessions(settings)[0]["id"]) / "upload"


# --- documents ------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"<\xd0\x9a\xd0\xbe\xd0\xbc", b"not xml at all", b"",
                                  "<КоммерческаяИнформация><Каталог><Товары><Товар>".encode()])
def test_a_malformed_document_fails_its_import(client, body):
    assert client.send("import.xml", body) == ["success"]
    lines, _ = client.import_("import.xml")
    failed(lines)
    failed(client.call("deactivate"), "деактивация")  # never after a broken import


def test_import_before_any_file(client):
    failed(client.call("import", filename="import.xml"), "не был загружен")
    failed(client.call("import", filename="missing.zip"), "не был загружен")


# --- names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "../evil.xml", "/etc/passwd", "..\\evil.xml", "\\etc\\passwd", "import_files/../../evil.xml", "a\x00b.xml", "a\nb.xml", "a\rb",
    "x" * 300, "a/" * 9 + "b", ".htaccess", "a//b", "", "a/", "con:x", "a*b", "a?b", "evil.xml\u202e", " lead.xml", "trail. ",
    "../../" + "x" * 10,
])
def test_a_name_that_could_escape_or_confuse_is_refused(client, name):
    failed(client.call("file", "POST", data=b"<x/>", filename=name))
    failed(client.call("import", filename=name))


def test_a_name_under_an_uploaded_file_is_refused(client):
    assert client.send("a.jpg", b"x") == ["success"]
    failed(client.call("file", "POST", data=b"x", filename="a.jpg/b.jpg"), "не удалось записать")


# --- archives -------------------------------------------------------------------------------

def zip_with(info: zipfile.ZipInfo, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("import.xml", fixture(*GOOD_IMPORT))
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, data)
    return buffer.getvalue()


def many_small_bombs() -> bytes:
    """30 entries of 1 MiB of zeros: each under the one-entry check, together 30 MiB from some 40 KB."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("import.xml", fixture(*GOOD_IMPORT))
        for n in range(30):
            archive.writestr(f"import_files/{n}.bin", bytes(1024 * 1024))
    return buffer.getvalue()


def symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("import_files/link.jpg")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("archive, words", [
    (lambda: zip_with(zipfile.ZipInfo("../evil.txt"), b"slip"), ["архив"]),
    (lambda: zip_with(zipfile.ZipInfo("import_files/../../../evil.txt"), b"slip"), ["архив"]),
    (lambda: zip_with(zipfile.ZipInfo("/tmp/evil.txt"), b"absolute"), ["абсолютный"]),
    (lambda: zip_with(zipfile.ZipInfo("..\\evil.txt"), b"windows slip"), ["архив"]),
    (lambda: zip_with(symlink_entry(), b"/etc/passwd"), ["символическую ссылку"]),
    (lambda: zip_with(zipfile.ZipInfo("zeros.bin"), bytes(48 * 1024 * 1024)), ["zip-бомбу"]),
    (many_small_bombs, ["zip-бомбу", "распаковывается в 31"]),
    (lambda: make_zip({"import.xml": fixture(*GOOD_IMPORT)})[:-40], ["повреждён"]),
])
def test_a_dangerous_archive_is_not_extracted(client, setup, archive, words):
    settings, _ = setup
    data = archive()
    assert len(data) <= 4 * FILE_LIMIT
    assert client.send("catalog.zip", data) == ["success"]
    lines = client.call("import", filename="import.xml")
    if lines[0] == "progress":  # refused inside the job (the archive is checked as it is extracted)
        lines, _ = client.import_("import.xml")
    failed(lines, *words)
    assert not (upload_dir(settings, client) / "import.xml").exists()  # nothing of it was written


def test_a_zip_bomb_by_total_size(client, monkeypatch):
    monkeypatch.setattr("exchange.uploads.MAX_UNPACKED_BYTES", 1000)
    assert client.send("catalog.zip", make_zip({"import.xml": fixture(*GOOD_IMPORT)})) == ["success"]
    failed(client.import_("catalog.zip")[0], "распаковывается")


def test_an_archive_the_disk_has_no_room_for_is_not_extracted(client, setup, monkeypatch):
    """A full data disk would stop the store and the feeds from being written: the archive is refused, saying why."""
    settings, _ = setup
    archive = make_zip({"import.xml": fixture(*GOOD_IMPORT)})
    free = shutil.disk_usage(settings.data_dir)
    monkeypatch.setattr("exchange.uploads.shutil.disk_usage", lambda path: free._replace(free=1024 ** 3 + 1000))
    assert client.send("catalog.zip", archive) == ["success"]
    failed(client.import_("catalog.zip")[0], "на диске сервера свободно", "освободите место")
    assert not (upload_dir(settings, client) / "import.xml").exists()


# --- sizes ----------------------------------------------------------------------------------

def raw_post(client: OneC, name: str, length: int, body: bytes = b"") -> list[str]:
    """Declare a body of ``length`` bytes but send only ``body``: the answer must come without the rest."""
    url = urlsplit(client.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    query = urlencode({"type": "catalog", "mode": "file", "filename": name})
    connection.putrequest("POST", f"{url.path}?{query}")
    connection.putheader("Cookie", f"{client.cookie[0]}={client.cookie[1]}")
    connection.putheader("Content-Length", str(length))
    connection.endheaders(body)
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/plain")
    lines = response.read().decode().split("\n")
    connection.close()
    return lines


def test_a_declared_body_over_file_limit_is_refused_unread(client, setup):
    failed(raw_post(client, "import.xml", 10 ** 12), "file_limit")
    failed(raw_post(client, "import.xml", FILE_LIMIT + 1, b"x" * 1000), "file_limit")
    assert not (upload_dir(setup[0], client) / "import.xml").exists()


def test_a_chunked_body_over_file_limit_is_cut_back(client, setup):
    assert client.send("offers.xml", b"first chunk") == ["success"]
    chunks = (b"y" * 8192 for _ in range(FILE_LIMIT // 8192 + 2))  # no Content-Length: chunked
    failed(client.call("file", "POST", data=chunks, filename="offers.xml"), "file_limit")
    assert (upload_dir(setup[0], client) / "offers.xml").read_bytes() == b"first chunk"


def test_the_session_total_is_limited(client, setup):
    block = b"z" * FILE_LIMIT
    for i in range(4):
        assert client.send(f"import_files/{i}.jpg", block) == ["success"]
    failed(client.send("import_files/5.jpg", b"one byte too many"), "объём сеанса")
    assert not (upload_dir(setup[0], client) / "import_files/5.jpg").exists()


def test_archives_count_what_they_unpack_against_the_session_total(client, setup):
    """The limit is on what lands on disk: archives of a few KB each that unpack to 150 KB, two of them over
    max_session_bytes (256 KB), though each alone fits and together they were sent in some 2 KB."""
    settings, _ = setup
    document = fixture(*GOOD_IMPORT)
    first = make_zip({"import.xml": document, "import_files/a.bin": bytes(150 * 1024)})
    second = make_zip({"import2.xml": document, "import_files/b.bin": bytes(150 * 1024)})
    assert client.send("first.zip", first) == ["success"]
    assert client.import_("import.xml")[0] == ["success"]
    assert client.send("second.zip", second) == ["success"]
    failed(client.import_("import2.xml")[0], "архив second.zip", "объём сеанса", str(4 * FILE_LIMIT),
           "exchange.max_session_bytes")
    assert not (upload_dir(settings, client) / "import_files/b.bin").exists()
    failed(client.send("import_files/c.jpg", b"z" * (110 * 1024)), "объём сеанса")  # what the first unpacked counts


def test_every_file_a_session_creates_counts_and_their_number_is_limited(tmp_path, serve):  # noqa: F811
    settings = exchange_settings(tmp_path, max_session_files=5)
    client = OneC(serve(settings))
    assert client.checkauth()[0] == "success"
    for n in range(3):
        assert client.send(f"empty{n}.xml", b"") == ["success"]
    assert client.send("empty0.xml", b"") == ["success"]  # the same file again: not another one
    state = json.loads((settings.data_dir / "exchange" / str(sessions(settings)[0]["id"]) / "state.json").read_text())
    assert state["files"] == {f"empty{n}.xml": {"bytes": 0} for n in range(3)}
    assert client.send("import_files/ab/empty.jpg", b"") == ["success"]
    assert client.send("empty3.xml", b"") == ["success"]
    failed(client.send("empty9.xml", b""), "5 файлов", "exchange.max_session_files")
    assert not list((settings.data_dir / "exchange").rglob("empty9.xml"))


def test_an_archive_with_more_files_than_the_session_may_hold_is_not_extracted(tmp_path, serve):  # noqa: F811
    settings = exchange_settings(tmp_path, max_session_files=5)
    client = OneC(serve(settings))
    assert client.checkauth()[0] == "success"
    entries = {"import.xml": fixture(*GOOD_IMPORT), **{f"import_files/{n}.jpg": b"" for n in range(4)}}
    assert client.send("catalog.zip", make_zip(entries)) == ["success"]  # the sixth file of the session
    failed(client.import_("import.xml")[0], "архив catalog.zip", "5 файлов", "exchange.max_session_files")
    assert not list((settings.data_dir / "exchange").rglob("import.xml"))


# --- authentication and sessions -------------------------------------------------------------

@pytest.mark.parametrize("login, password", [(LOGIN, "wrong"), ("someone", PASSWORD), ("", ""), (LOGIN, PASSWORD + "x")])
def test_wrong_credentials(setup, login, password):
    failed(OneC(setup[1], login=login, password=password).checkauth(), "неверный логин или пароль")


def test_no_credentials_or_another_scheme(setup):
    url = setup[1] + "/exchange/1c?type=catalog&mode=checkauth"
    for headers in ({}, {"Authorization": "Bearer abc"}, {"Authorization": "Basic !!!not-base64"}):
        response = requests.get(url, headers=headers, timeout=10)
        assert response.status_code == 200
        failed(response.text.split("\n"), "неверный логин или пароль")


def test_repeated_failures_from_one_address_are_refused_for_a_while(setup, monkeypatch):
    settings, base = setup
    for _ in range(exchange_sessions.MAX_FAILURES):
        failed(OneC(base, password="guess").checkauth(), "неверный")
    failed(OneC(base).checkauth(), "слишком много неудачных попыток", "10 мин")  # even the right password
    table = json.loads((settings.data_dir / "exchange" / "login-failures.json").read_text())
    assert list(table) == ["127.0.0.1"] and PASSWORD not in json.dumps(table)
    monkeypatch.setattr(exchange_sessions, "FAILURE_WINDOW", 0.01)
    time.sleep(0.02)
    assert OneC(base).checkauth()[0] == "success"  # the window passed


def test_parallel_failures_cannot_pass_the_limit(setup):
    """The check, the compare and the record of a failure are one step: 64 wrong logins at once get exactly
    MAX_FAILURES answers «неверный», the rest are refused without a compare."""
    start = threading.Barrier(64)

    def guess(_):
        start.wait(10)
        return OneC(setup[1], password="guess").checkauth()

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(guess, range(64)))
    for lines in answers:
        assert lines[0] == "failure", lines
    wrong = [lines for lines in answers if "неверный логин" in lines[1]]
    assert len(wrong) == exchange_sessions.MAX_FAILURES
    assert all("слишком много неудачных попыток" in lines[1] for lines in answers if lines not in wrong)


@pytest.mark.parametrize("cookie", [None, "", "forged-token", "x" * 5000])
def test_no_or_unknown_session(setup, cookie):
    client = OneC(setup[1])
    if cookie is not None:
        client.cookie = ("skladbridge_exchange", cookie)
    for mode in ("init", "file", "import", "deactivate", "complete"):
        failed(client.call(mode, "POST" if mode == "file" else "GET", data=b"<x/>", filename="import.xml"), "сеанс")


def test_an_expired_or_completed_session(client, setup, monkeypatch):
    monkeypatch.setattr("exchange.sessions.time.time", lambda: time.monotonic() + 10 ** 10)
    failed(client.call("init"), "истёк")
    monkeypatch.undo()
    fresh = OneC(setup[1])
    fresh.checkauth()
    assert fresh.call("complete") == ["success"]
    failed(fresh.call("init"), "завершён")


def test_the_exchange_is_off_without_a_password(tmp_path, serve):  # noqa: F811
    base = serve(exchange_settings(tmp_path, password="", login=""))
    failed(OneC(base, password="").checkauth(), "выключен")


# --- protocol -------------------------------------------------------------------------------

@pytest.mark.parametrize("query, words", [
    ("type=catalog&mode=launch", ["неизвестный режим"]),
    ("type=catalog", ["неизвестный режим"]),
    ("type=orders&mode=init", ["неизвестный тип"]),
    ("mode=init", ["неизвестный тип"]),
    ("type=sale&mode=deactivate", ["неизвестный режим", "type=sale"]),
    ("type=sale&mode=launch", ["неизвестный режим"]),
])
def test_unknown_modes_and_types(client, query, words):
    response = requests.get(f"{client.url}?{query}", headers={"Cookie": "=".join(client.cookie)}, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    failed(response.text.split("\n"), *words)


@pytest.mark.parametrize("method, path", [("PUT", "/exchange/1c"), ("DELETE", "/1c_exchange.php"),
                                          ("GET", "/exchange/1c/"), ("GET", "/exchange/other")])
def test_routing_errors_are_failure_texts_too(setup, method, path):
    response = requests.request(method, setup[1] + path + "?type=catalog&mode=init", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    failed(response.text.split("\n"))


@pytest.mark.parametrize("method, path", [
    ("GET", "/1c_exchange.php/"), ("GET", "/1C_exchange.php"), ("POST", "/1C_EXCHANGE.PHP"), ("GET", "/Exchange/1C"),
    ("GET", "/exchange"), ("GET", "/exchange/1c//"), ("GET", "/1c_exchange.php/x"), ("GET", "/bitrix/admin/1c_exchange.php"),
])
def test_a_mistyped_exchange_address_is_a_failure_text_naming_the_right_one(setup, method, path):
    """What an operator may type for the address (1C-Bitrix habits, another case, a slash more) is answered the
    way 1C expects, never with an HTML page."""
    response = requests.request(method, setup[1] + path + "?type=catalog&mode=checkauth", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    assert "<html" not in response.text.lower()
    failed(response.text.split("\n"), "/exchange/1c")


def raw_answer(port: int, request: bytes) -> tuple[str, dict, str]:
    """Send bytes as they are (requests would refuse to) and read the answer to the end: status line, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *fields = head.decode("latin-1").split("\r\n")
    return status, dict(field.split(": ", 1) for field in fields), body.decode("utf-8")


def test_requests_gunicorn_refuses_itself_get_a_failure_text_not_its_html_page(tmp_path):
    """A header over gunicorn's 8 KB limit, an over-long request line or a broken one never reach the app: gunicorn
    answered them with its own HTML page, which 1C shows as it is. Under the deployed config they are a failure text."""
    config = f"data_dir: data\nexchange:\n  login: {LOGIN}\nfeeds:\n  - name: shop\n    source: exchange\n"
    server = Gunicorn(tmp_path, config, workers=1, deployed=True, environ={"EXCHANGE_PASSWORD": PASSWORD}).wait_ready()
    exchange = "/exchange/1c?type=catalog&mode=checkauth"
    try:
        refused = {
            "431": raw_answer(server.port, f"GET {exchange} HTTP/1.1\r\nHost: x\r\nCookie: {'a' * 9000}\r\n\r\n".encode()),
            "414": raw_answer(server.port, f"GET {exchange}&{'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
            "400": raw_answer(server.port, b"GET /exchange/1c HTTP/1.1 extra\r\nHost: x\r\n\r\n"),
        }
        for status, (status_line, headers, body) in refused.items():
            assert status_line.startswith(f"HTTP/1.1 {status} ")
            assert headers["Content-Type"] == "text/plain; charset=utf-8"
            assert int(headers["Content-Length"]) == len(body.encode())
            assert "<html" not in body.lower() and body.split("\n")[0] == "failure"
        assert "заголовки запроса слишком большие" in refused["431"][2]
        assert "строка запроса длиннее 8 КБ" in refused["414"][2]
        assert OneC(server.base).checkauth()[0] == "success"  # the same server still answers whole requests
    finally:
        server.stop()


def test_other_pages_keep_their_own_errors(setup):
    response = requests.get(setup[1] + "/feeds/nope.xml", timeout=10)
    assert response.status_code == 404


def test_an_unexpected_error_is_a_failure_text_and_logged(client, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("exchange.uploads.append_stream", broken)
    failed(client.call("file", "POST", data=b"x", filename="import.xml"), "внутренняя ошибка")
    assert "disk on fire" in caplog.text


def test_secrets_are_never_logged(setup, caplog):
    caplog.set_level(logging.INFO)
    client = OneC(setup[1])
    client.checkauth()
    client.send("import.xml", fixture(*GOOD_IMPORT))
    client.import_("import.xml")
    OneC(setup[1], password="wrong-guess").checkauth()
    assert client.cookie[1] not in caplog.text
    assert PASSWORD not in caplog.text and "wrong-guess" not in caplog.text
    assert "mode=file filename='import.xml'" in caplog.text

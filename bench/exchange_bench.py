"""Exchange benchmark: a generated CommerceML catalog pushed to a running server the way 1C does.

Generates import.xml and offers.xml for N goods (streamed to disk, ~1 KB per good in all), starts
gunicorn (one worker) on loopback, then runs checkauth, init, the upload in 1 MB chunks and the
import polling loop. Prints MB/s of the upload and of parse+store, goods/s, and the peak RSS of the
server's worker (which writes the store) and of the parser process an import starts (VmHWM, /proc).
With --pictures every good names a picture of its own (about 4 KB) in import_files/, and the whole
exchange travels as one zip, as 1C sends it with zip=yes: the import then starts by unpacking it.
Kept from before: 20,000 goods with 20,000 pictures in about 22 s end to end (upload + import).

    python bench/exchange_bench.py                 # 100,000 goods (~100 MB)
    python bench/exchange_bench.py --goods 20000 --pictures
    python bench/exchange_bench.py --goods 20000 --pictures --json   # the figures for bench/summary.py
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import bench_parser, print_json, table_output  # noqa: E402  (bench scripts live side by side)

from emulator.harness import Gunicorn, PeakRss  # noqa: E402

LOGIN, PASSWORD = "bench", "bench-password"
CHUNK = 1024 * 1024
PRICE_TYPE, STORES = "price-type-retail", ("store-moscow", "store-spb", "store-kazan")
KEPT_SECONDS = 22  # the whole exchange of 20,000 goods with 20,000 pictures before this benchmark had pictures
PICTURE_BYTES = 4096
HEADER = '\ufeff<?xml version="1.0" encoding="UTF-8"?>\n<КоммерческаяИнформация xmlns="urn:1C.ru:commerceml_2" ВерсияСхемы="2.07">\n'


def good_id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def picture_path(i: int) -> str:
    return f"import_files/{i % 256:02x}/{good_id(i)}.jpg"


def write_pictures(root: Path, goods: int) -> None:
    """A JPEG-headed file of PICTURE_BYTES per good, of random bytes (pictures do not compress)."""
    rng = random.Random(5)
    for i in range(goods):
        path = root / picture_path(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8\xff\xe0" + rng.randbytes(PICTURE_BYTES - 4))


def write_import(path: Path, goods: int, pictures: bool = False) -> None:
    """Classifier with 100 groups, then every good with the fields 1C UT 11 sends (and its picture)."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(HEADER + "<Классификатор><Ид>cls</Ид><Наименование>Классификатор</Наименование><Группы>\n")
        out.writelines(f"<Группа><Ид>group-{g}</Ид><Наименование>Группа {g}</Наименование></Группа>\n" for g in range(100))
        out.write('</Группы></Классификатор>\n<Каталог СодержитТолькоИзменения="false"><Ид>cat</Ид><ИдКлассификатора>cls</ИдКлассификатора>'
                  "<Наименование>Каталог</Наименование><Товары>\n")
        for i in range(goods):
            out.write(
                f"<Товар><Ид>{good_id(i)}</Ид><Штрихкод>{4600000000000 + i}</Штрихкод><Артикул>ART-{i:07d}</Артикул>"
                f"<Наименование>Товар номер {i} &amp; компания, размер {i % 50}</Наименование>"
                '<БазоваяЕдиница Код="796" НаименованиеПолное="Штука" МеждународноеСокращение="PCE">шт</БазоваяЕдиница>'
                f"<Группы><Ид>group-{i % 100}</Ид></Группы>"
                f"<Описание>Описание товара {i}: прочный, лёгкий, удобный; подходит для дома и дачи.</Описание>"
                + (f"<Картинка>{picture_path(i)}</Картинка>" if pictures else "") +
                "<СтавкиНалогов><СтавкаНалога><Наименование>НДС</Наименование><Ставка>20</Ставка></СтавкаНалога></СтавкиНалогов>"
                "<ЗначенияРеквизитов>"
                f"<ЗначениеРеквизита><Наименование>Вес</Наименование><Значение>{i % 7},5</Значение></ЗначениеРеквизита>"
                "</ЗначенияРеквизитов></Товар>\n")
        out.write("</Товары></Каталог>\n</КоммерческаяИнформация>\n")


def write_offers(path: Path, goods: int) -> None:
    """One offer per good: a price and stock on three warehouses."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(HEADER + '<ПакетПредложений СодержитТолькоИзменения="false"><Ид>cat#</Ид><Наименование>Пакет</Наименование>'
                  "<ИдКаталога>cat</ИдКаталога><ИдКлассификатора>cls</ИдКлассификатора>"
                  f"<ТипыЦен><ТипЦены><Ид>{PRICE_TYPE}</Ид><Наименование>Розничная</Наименование><Валюта>RUB</Валюта></ТипЦены></ТипыЦен><Склады>"
                  + "".join(f"<Склад><Ид>{s}</Ид><Наименование>{s}</Наименование></Склад>" for s in STORES) + "</Склады><Предложения>\n")
        for i in range(goods):
            stock = "".join(f'<Склад ИдСклада="{s}" КоличествоНаСкладе="{(i + n) % 13}"/>' for n, s in enumerate(STORES))
            out.write(
                f"<Предложение><Ид>{good_id(i)}</Ид><Артикул>ART-{i:07d}</Артикул><Наименование>Товар номер {i}</Наименование>"
                f"<Цены><Цена><ИдТипаЦены>{PRICE_TYPE}</ИдТипаЦены>"
                f"<ЦенаЗаЕдиницу>{100 + i % 900}.50</ЦенаЗаЕдиницу><Валюта>RUB</Валюта><Единица>шт</Единица></Цена></Цены>"
                f"<Количество>{sum((i + n) % 13 for n in range(len(STORES)))}</Количество>{stock}</Предложение>\n")
        out.write("</Предложения></ПакетПредложений>\n</КоммерческаяИнформация>\n")


def start_server(workdir: Path, zipped: bool) -> Gunicorn:
    config = (f"data_dir: data\nlog_level: WARNING\nmoysklad:\n  token: unused\n"
              f"exchange:\n  login: {LOGIN}\n  password: {PASSWORD}\n  zip: {str(zipped).lower()}\n  file_limit: {CHUNK}\n")
    return Gunicorn(workdir, config, workers=1, app="app:create_app()").wait_ready()


def call(base: str, cookie: str, mode: str, **kwargs) -> list[str]:
    data = kwargs.pop("data", None)
    response = requests.request("POST" if data is not None else "GET", base + "/exchange/1c",
                                params={"type": "catalog", "mode": mode, **kwargs}, data=data,
                                headers={"Cookie": cookie}, timeout=120)
    return response.text.split("\n")


def generate(goods: int, pictures: bool, workdir: Path) -> list[Path]:
    """The files 1C uploads: import.xml and offers.xml, or with pictures one zip of them and import_files/."""
    folder = workdir / "exchange"
    folder.mkdir()
    write_import(folder / "import.xml", goods, pictures)
    write_offers(folder / "offers.xml", goods)
    if not pictures:
        return [folder / "import.xml", folder / "offers.xml"]
    write_pictures(folder, goods)
    archive = workdir / "exchange.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return [archive]


def run(goods: int, pictures: bool, workdir: Path, out) -> dict:
    started = time.monotonic()
    files = generate(goods, pictures, workdir)
    total_mb = sum(f.stat().st_size for f in files) / CHUNK
    print(f"generated {goods} goods{f' with {goods} pictures, one zip' if pictures else ''}: {total_mb:.1f} MB "
          f"in {time.monotonic() - started:.1f} s", file=out)
    gunicorn = start_server(workdir, zipped=pictures)
    server, base = gunicorn.process, gunicorn.base
    try:
        lines = requests.get(base + "/exchange/1c", params={"type": "catalog", "mode": "checkauth"},
                             auth=(LOGIN, PASSWORD), timeout=10).text.split("\n")
        assert lines[0] == "success", lines
        cookie = f"{lines[1]}={lines[2]}"
        call(base, cookie, "init")
        started = time.monotonic()
        for path in files:
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    assert call(base, cookie, "file", filename=path.name, data=chunk) == ["success"]
        upload = time.monotonic() - started
        print(f"upload:       {upload:6.1f} s  {total_mb / upload:7.1f} MB/s  (1 MB chunks, {int(total_mb) + 2} requests)",
              file=out)
        started, polls, rss = time.monotonic(), 0, PeakRss(server.pid)
        for path in files:  # a zip: unpacked, then each XML inside imported (import before offers)
            while (answer := call(base, cookie, "import", filename=path.name))[0] == "progress":
                polls += 1
                rss.sample()
                time.sleep(0.2)
            assert answer == ["success"], answer
        parse = time.monotonic() - started
        print(f"{'unzip+' if pictures else ''}parse+store: {parse:6.1f} s  {total_mb / parse:7.1f} MB/s  "
              f"{goods / parse:8.0f} goods/s  ({polls} progress polls)", file=out)
        assert call(base, cookie, "complete") == ["success"]
        rss.sample()
        worker, parser = rss.largest("worker"), rss.largest("parser")
        print(f"whole exchange (upload + import): {upload + parse:.1f} s; server peak RSS (VmHWM): worker {worker:.0f} MB "
              f"+ parser {parser:.0f} MB = {worker + parser:.0f} MB", file=out)
    finally:
        server.terminate()
        server.wait(timeout=60)
    result = {"goods": goods, "pictures": goods if pictures else 0, "mb": total_mb, "upload_seconds": upload,
              "import_seconds": parse, "seconds": upload + parse, "worker_rss_mb": worker, "parser_rss_mb": parser,
              "goals": {}}
    if pictures and goods == 20_000:
        result["goals"][f"whole exchange <= {KEPT_SECONDS} s (kept)"] = upload + parse <= KEPT_SECONDS
    return result


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--goods", type=int, default=100_000)
    parser.add_argument("--pictures", action="store_true", help="a picture per good, everything in one zip")
    args = parser.parse_args()
    out = table_output(args)
    with tempfile.TemporaryDirectory(prefix="exchange-bench-") as workdir:
        result = run(args.goods, args.pictures, Path(workdir), out)
    for goal, met in result["goals"].items():
        print(f"goal {goal}: {'met' if met else 'MISSED'}", file=out)
    if args.json:
        print_json("exchange", [result])


if __name__ == "__main__":
    main()

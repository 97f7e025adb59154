"""Exchange benchmark: a generated CommerceML catalog pushed to a running server the way 1C does.

Generates import.xml and offers.xml for N goods (streamed to disk, ~1 KB per good in all), starts
gunicorn (one worker) on loopback, then runs checkauth, init, the upload in 1 MB chunks and the
import polling loop. Prints MB/s of the upload and of parse+store, goods/s, and the peak RSS of the
server's worker (which writes the store) and of the parser process an import starts (VmHWM, /proc).

    python bench/exchange_bench.py                 # 100,000 goods (~100 MB)
    python bench/exchange_bench.py --goods 20000
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import requests

from emulator.harness import Gunicorn, PeakRss

LOGIN, PASSWORD = "bench", "bench-password"
CHUNK = 1024 * 1024
PRICE_TYPE, STORES = "price-type-retail", ("store-moscow", "store-spb", "store-kazan")
HEADER = '\ufeff<?xml version="1.0" encoding="UTF-8"?>\n<КоммерческаяИнформация xmlns="urn:1C.ru:commerceml_2" ВерсияСхемы="2.07">\n'


def good_id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def write_import(path: Path, goods: int) -> None:
    """Classifier with 100 groups, then every good with the fields 1C UT 11 sends."""
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


def start_server(workdir: Path) -> Gunicorn:
    config = (f"data_dir: data\nlog_level: WARNING\nmoysklad:\n  token: unused\n"
              f"exchange:\n  login: {LOGIN}\n  password: {PASSWORD}\n  zip: false\n  file_limit: {CHUNK}\n")
    return Gunicorn(workdir, config, workers=1, app="app:create_app()").wait_ready()


def call(base: str, cookie: str, mode: str, **kwargs) -> list[str]:
    data = kwargs.pop("data", None)
    response = requests.request("POST" if data is not None else "GET", base + "/exchange/1c",
                                params={"type": "catalog", "mode": mode, **kwargs}, data=data,
                                headers={"Cookie": cookie}, timeout=120)
    return response.text.split("\n")


def run(goods: int, workdir: Path) -> None:
    files = [workdir / "import.xml", workdir / "offers.xml"]
    started = time.monotonic()
    write_import(files[0], goods)
    write_offers(files[1], goods)
    total_mb = sum(f.stat().st_size for f in files) / CHUNK
    print(f"generated {goods} goods: {total_mb:.1f} MB in {time.monotonic() - started:.1f} s")
    gunicorn = start_server(workdir)
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
        print(f"upload:       {upload:6.1f} s  {total_mb / upload:7.1f} MB/s  (1 MB chunks, {int(total_mb) + 2} requests)")
        started, polls, rss = time.monotonic(), 0, PeakRss(server.pid)
        for path in files:
            while (answer := call(base, cookie, "import", filename=path.name))[0] == "progress":
                polls += 1
                rss.sample()
                time.sleep(0.5)
            assert answer == ["success"], answer
        parse = time.monotonic() - started
        print(f"parse+store:  {parse:6.1f} s  {total_mb / parse:7.1f} MB/s  {goods / parse:8.0f} goods/s  ({polls} progress polls)")
        assert call(base, cookie, "complete") == ["success"]
        rss.sample()
        worker, parser = rss.largest("worker"), rss.largest("parser")
        print(f"server peak RSS (VmHWM): worker {worker:.0f} MB + parser {parser:.0f} MB = {worker + parser:.0f} MB")
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--goods", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="exchange-bench-") as workdir:
        run(args.goods, Path(workdir))


if __name__ == "__main__":
    main()

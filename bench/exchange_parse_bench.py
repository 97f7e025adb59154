"""CommerceML import benchmark: a generated import.xml (~110 MB for 100,000 goods) and offers.xml.

The files are written to disk as they are generated (never built in memory), then each is
imported into a fresh store by its own child process, which reports the time and the peak RSS of
both processes an import runs in: the writer (the store) and the parser it starts. Goals: >= 20 MB/s
and peak RSS < 150 MB, counted as the sum of the two.

    python bench/exchange_parse_bench.py                   # 100,000 goods
    python bench/exchange_parse_bench.py --goods 20000
    python bench/exchange_parse_bench.py --json            # the figures as JSON for bench/summary.py
"""

from __future__ import annotations

import random
import tempfile
import uuid
from pathlib import Path

from output import bench_parser, print_json, run_measured, table_output

from emulator.harness import ROOT

NAMESPACE = "urn:1C.ru:commerceml_2"
GROUPS = 200
PROPERTIES = 10
WAREHOUSES = 3

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from exchange.catalog_import import import_file
from store import open_catalog

path = Path(sys.argv[3])
store = open_catalog(sys.argv[2])
started = time.monotonic()
result = import_file(store, path, upload_dir=path.parent, images_dir=path.parent / "images")
seconds = time.monotonic() - started
print(json.dumps({"kind": result.kind, "counts": result.counts, "seconds": seconds, "mb": path.stat().st_size / 1e6,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "parser_rss_mb": result.parser_peak_rss_mb}))
"""


def ids(prefix: str, count: int) -> list[str]:
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{prefix}{n}")) for n in range(count)]


def header(out, section: str) -> None:
    out.write("\ufeff<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
              f"<КоммерческаяИнформация xmlns=\"{NAMESPACE}\" ВерсияСхемы=\"2.07\" ДатаФормирования=\"2024-05-01T10:00:00\">\n")
    out.write(section)


def write_import(path: Path, goods: int, rng: random.Random) -> None:
    groups, properties = ids("group", GROUPS), ids("property", PROPERTIES)
    values = {p: ids(f"value{p}", 20) for p in properties}
    with open(path, "w", encoding="utf-8") as out:
        header(out, "\t<Классификатор>\n\t\t<Ид>bench</Ид>\n\t\t<Наименование>Каталог</Наименование>\n\t\t<Группы>\n")
        for top in range(0, GROUPS, 10):  # 20 groups of 10 subgroups each
            out.write(f"\t\t\t<Группа><Ид>{groups[top]}</Ид><Наименование>Раздел {top}</Наименование><Группы>\n")
            out.writelines(f"\t\t\t\t<Группа><Ид>{groups[g]}</Ид><Наименование>Подраздел {g}</Наименование></Группа>\n"
                           for g in range(top + 1, top + 10))
            out.write("\t\t\t</Группы></Группа>\n")
        out.write("\t\t</Группы>\n\t\t<Свойства>\n")
        for n, prop in enumerate(properties):
            options = "".join(f"<Справочник><ИдЗначения>{v}</ИдЗначения><Значение>Значение {i}</Значение></Справочник>"
                              for i, v in enumerate(values[prop]))
            out.write(f"\t\t\t<Свойство><Ид>{prop}</Ид><Наименование>Свойство {n}</Наименование>"
                      f"<ТипЗначений>Справочник</ТипЗначений><ВариантыЗначений>{options}</ВариантыЗначений></Свойство>\n")
        out.write("\t\t</Свойства>\n\t</Классификатор>\n\t<Каталог СодержитТолькоИзменения=\"false\">\n"
                  "\t\t<Ид>bench</Ид>\n\t\t<Наименование>Каталог</Наименование>\n\t\t<Товары>\n")
        for n, good in enumerate(ids("good", goods)):
            out.write(good_xml(n, good, rng.choice(groups), properties, values, rng))
        out.write("\t\t</Товары>\n\t</Каталог>\n</КоммерческаяИнформация>\n")


def good_xml(n: int, good: str, group: str, properties: list[str], values: dict, rng: random.Random) -> str:
    """One Товар of about 1.1 KB, shaped like a UT 11 export (a barcode, a property value, a requisite)."""
    prop = rng.choice(properties)
    return (f"<Товар><Ид>{good}</Ид><Штрихкод>{4600000000000 + n}</Штрихкод><Артикул>ART-{n:07d}</Артикул>"
            f"<Наименование>Товар {n} &amp; Ко</Наименование>"
            "<БазоваяЕдиница Код=\"796\" НаименованиеПолное=\"Штука\">шт</БазоваяЕдиница>"
            f"<Группы><Ид>{group}</Ид></Группы><ЗначенияСвойств><ЗначенияСвойства><Ид>{prop}</Ид>"
            f"<Значение>{rng.choice(values[prop])}</Значение></ЗначенияСвойства></ЗначенияСвойств>"
            "<СтавкиНалогов><СтавкаНалога><Наименование>НДС</Наименование><Ставка>20</Ставка></СтавкаНалога></СтавкиНалогов>"
            "<ЗначенияРеквизитов><ЗначениеРеквизита><Наименование>Вес</Наименование>"
            f"<Значение>{rng.randint(1, 5000) / 1000}</Значение></ЗначениеРеквизита></ЗначенияРеквизитов></Товар>\n")


def write_offers(path: Path, goods: int, rng: random.Random) -> None:
    warehouses = ids("warehouse", WAREHOUSES)
    with open(path, "w", encoding="utf-8") as out:
        header(out, "\t<ПакетПредложений СодержитТолькоИзменения=\"false\">\n\t\t<Ид>bench#</Ид>\n"
                    "\t\t<Наименование>Пакет предложений</Наименование>\n\t\t<ТипыЦен>\n"
                    "\t\t\t<ТипЦены><Ид>retail</Ид><Наименование>Розничная</Наименование><Валюта>RUB</Валюта></ТипЦены>\n"
                    "\t\t\t<ТипЦены><Ид>wholesale</Ид><Наименование>Оптовая</Наименование><Валюта>RUB</Валюта></ТипЦены>\n"
                    "\t\t</ТипыЦен>\n\t\t<Склады>\n")
        out.writelines(f"\t\t\t<Склад><Ид>{w}</Ид><Наименование>Склад {i}</Наименование></Склад>\n" for i, w in enumerate(warehouses))
        out.write("\t\t</Склады>\n\t\t<Предложения>\n")
        for n, good in enumerate(ids("good", goods)):
            price = rng.randint(100, 100000)
            stock = [rng.randint(0, 50) for _ in warehouses]
            stores = "".join(f"<Склад ИдСклада=\"{w}\" КоличествоНаСкладе=\"{q}\"/>" for w, q in zip(warehouses, stock))
            out.write(f"\t\t\t<Предложение>\n\t\t\t\t<Ид>{good}</Ид>\n\t\t\t\t<Наименование>Товар номер {n} &amp; компания</Наименование>\n"
                      "\t\t\t\t<Цены>"
                      f"<Цена><Представление>{price} RUB за шт</Представление><ИдТипаЦены>retail</ИдТипаЦены><ЦенаЗаЕдиницу>{price},50</ЦенаЗаЕдиницу><Валюта>RUB</Валюта></Цена>"
                      f"<Цена><Представление>{price} RUB за шт</Представление><ИдТипаЦены>wholesale</ИдТипаЦены><ЦенаЗаЕдиницу>{price * 9 // 10}</ЦенаЗаЕдиницу><Валюта>RUB</Валюта></Цена>"
                      f"</Цены>\n\t\t\t\t<Количество>{sum(stock)}</Количество>\n\t\t\t\t{stores}\n\t\t\t</Предложение>\n")
        out.write("\t\t</Предложения>\n\t</ПакетПредложений>\n</КоммерческаяИнформация>\n")


def child(store: Path, path: Path) -> dict:
    return run_measured(CHILD, str(ROOT), str(store), str(path), what=f"import of {path.name}")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--goods", type=int, default=100_000)
    args = parser.parse_args()
    out = table_output(args)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_import(tmp / "import.xml", args.goods, rng)
        write_offers(tmp / "offers.xml", args.goods, rng)
        print(f"CommerceML import benchmark: {args.goods} goods", file=out)
        print(f"{'file':<12} {'kind':<7} {'MB':>7} {'seconds':>8} {'MB/s':>7} {'writer MB':>9} {'parser MB':>9} {'sum MB':>7}  counts",
              file=out)
        results = []
        for name in ("import.xml", "offers.xml"):
            result = child(tmp / "catalog.sqlite", tmp / name)
            results.append({"file": name, **result})
            counts = {k: v for k, v in result["counts"].items() if v and k in ("groups", "goods", "offers", "prices", "stock", "attributes")}
            print(f"{name:<12} {result['kind']:<7} {result['mb']:>7.1f} {result['seconds']:>8.2f} "
                  f"{result['mb'] / result['seconds']:>7.1f} {result['peak_rss_mb']:>9.1f} {result['parser_rss_mb']:>9.1f} "
                  f"{result['peak_rss_mb'] + result['parser_rss_mb']:>7.1f}  {counts}", file=out, flush=True)
    fast = all(r["mb"] / r["seconds"] >= 20 for r in results)
    small = all(r["peak_rss_mb"] + r["parser_rss_mb"] < 150 for r in results)
    print(f"goal >= 20 MB/s: {'met' if fast else 'MISSED'}; goal peak RSS < 150 MB: {'met' if small else 'MISSED'}", file=out)
    if args.json:
        print_json("import", [{**r, "goods": args.goods, "mb_per_s": r["mb"] / r["seconds"],
                               "goals": {">= 20 MB/s": r["mb"] / r["seconds"] >= 20,
                                         "writer + parser RSS < 150 MB": r["peak_rss_mb"] + r["parser_rss_mb"] < 150}}
                              for r in results])

if __name__ == "__main__":
    main()

"""CommerceML import benchmark: generated import.xml and offers.xml, each imported into a fresh store.

Two shapes of goods: ``moysklad`` (what MoySklad's exchange sends, about 2.5 KB a good: a
description with escaped markup, 1-3 pictures in import_files/, property values from the
classifier's reference lists, VAT, four requisites, a barcode and an article, indented) and
``simple`` (about 1.1 KB, a UT 11 export's essentials). The files are written to disk as they are
generated (never built in memory). Each file is imported by its own child process, which reports
the time, the CPU seconds and the peak RSS of both processes an import runs in (the writer and its
parser: an import lasts at least as long as the busier of the two), and read once more by a bare
``lxml.etree.iterparse`` pass (an end event for every element, each good or offer cleared as it
ends: the plainest streaming read of the document in Python): the baseline of what reading the
file costs on this machine, printed beside the import as a ratio. With ``--runs N`` (default 3) both
are measured N times, each import into a fresh store, and the fastest of each compared: on a shared
machine a single bare pass moved between 35 and 69 MB/s, and the ratio with it.
Goals: import >= 70 % of the bare pass's MB/s, writer + parser peak RSS < 120 MB (the highest of the runs).

    python bench/exchange_parse_bench.py                     # 100,000 goods, both shapes
    python bench/exchange_parse_bench.py --goods 20000 --shape moysklad
    python bench/exchange_parse_bench.py --json              # the figures as JSON for bench/summary.py
"""

from __future__ import annotations

import random
import shutil
import tempfile
import uuid
from pathlib import Path

from output import PEAK_RSS_MB, bench_parser, print_json, run_measured, table_output

from emulator.harness import ROOT

NAMESPACE = "urn:1C.ru:commerceml_2"
GROUPS = 200
PROPERTIES = 10
WAREHOUSES = 3

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from core.child_process import ready
from exchange.catalog_import import import_file, prepare_parser
from store import open_catalog

path = Path(sys.argv[3])
store = open_catalog(sys.argv[2])
prepare_parser()  # as the exchange has it by mode=import: started at checkauth
while not ready():
    time.sleep(0.01)
started, before = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
result = import_file(store, path, upload_dir=path.parent, images_dir=Path(sys.argv[4]))
seconds, usage = time.monotonic() - started, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"kind": result.kind, "counts": result.counts, "seconds": seconds, "mb": path.stat().st_size / 1e6,
                  "peak_rss_mb": PEAK_RSS_MB, "parser_rss_mb": result.parser_peak_rss_mb,
                  "writer_cpu_seconds": usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime,
                  "parser_cpu_seconds": result.parser_cpu_seconds}))
""".replace("PEAK_RSS_MB", PEAK_RSS_MB)


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


BARE_PASS = r"""
import json, sys, time
from lxml import etree

path = sys.argv[1]
started = time.monotonic()
records = 0
for _, element in etree.iterparse(path, events=("end",), resolve_entities=False, no_network=True, huge_tree=True):
    if element.tag.endswith(("}Товар", "}Предложение")):
        records += 1
        element.clear(keep_tail=False)
        while element.getprevious() is not None:
            del element.getparent()[0]
print(json.dumps({"seconds": time.monotonic() - started, "records": records}))
"""
TINY_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 200 + b"\xff\xd9"
DESCRIPTION = ("&lt;p&gt;Корпус из нержавеющей стали, &lt;b&gt;{litres} л&lt;/b&gt;, автоотключение.&lt;/p&gt;"
               "&lt;ul&gt;&lt;li&gt;Мощность {watts} Вт&lt;/li&gt;&lt;li&gt;Фильтр от накипи&lt;/li&gt;&lt;/ul&gt;"
               "&lt;p&gt;Гарантия {months} мес.&lt;/p&gt;")


def write_moysklad_import(path: Path, goods: int, rng: random.Random) -> None:
    """import.xml as MoySklad's exchange writes it, and the pictures it names under import_files/."""
    groups, properties = ids("group", GROUPS), ids("property", PROPERTIES)
    values = {p: ids(f"value{p}", 20) for p in properties}
    with open(path, "w", encoding="utf-8") as out:
        header(out, "  <Классификатор>\n    <Ид>bench</Ид>\n    <Наименование>Классификатор (Основной каталог товаров)</Наименование>\n"
                    "    <Группы>\n")
        for top in range(0, GROUPS, 10):
            out.write(f"      <Группа>\n        <Ид>{groups[top]}</Ид>\n        <Наименование>Раздел {top}</Наименование>\n        <Группы>\n")
            out.writelines(f"          <Группа>\n            <Ид>{groups[g]}</Ид>\n            <Наименование>Подраздел {g}</Наименование>\n"
                           "          </Группа>\n" for g in range(top + 1, top + 10))
            out.write("        </Группы>\n      </Группа>\n")
        out.write("    </Группы>\n    <Свойства>\n")
        for n, prop in enumerate(properties):
            options = "".join(f"\n          <Справочник>\n            <ИдЗначения>{v}</ИдЗначения>\n            <Значение>Значение {i}</Значение>\n"
                              "          </Справочник>" for i, v in enumerate(values[prop]))
            out.write(f"      <Свойство>\n        <Ид>{prop}</Ид>\n        <Наименование>Свойство {n}</Наименование>\n"
                      f"        <ТипЗначений>Справочник</ТипЗначений>\n        <ВариантыЗначений>{options}\n        </ВариантыЗначений>\n"
                      "      </Свойство>\n")
        out.write("    </Свойства>\n  </Классификатор>\n  <Каталог СодержитТолькоИзменения=\"false\">\n"
                  "    <Ид>bench</Ид>\n    <ИдКлассификатора>bench</ИдКлассификатора>\n"
                  "    <Наименование>Основной каталог товаров</Наименование>\n    <Товары>\n")
        for n, good in enumerate(ids("good", goods)):
            pictures = [f"import_files/{good[:2]}/{good}_{k}.jpg" for k in range(rng.randint(1, 3))]
            for picture in pictures:
                file = path.parent / picture
                file.parent.mkdir(parents=True, exist_ok=True)
                file.write_bytes(TINY_JPEG)
            out.write(moysklad_good(n, good, rng.choice(groups), pictures, properties, values, rng))
        out.write("    </Товары>\n  </Каталог>\n</КоммерческаяИнформация>\n")


def moysklad_good(n: int, good: str, group: str, pictures: list[str], properties: list[str], values: dict,
                  rng: random.Random) -> str:
    """One Товар of about 2.5 KB in MoySklad's shape."""
    props = "".join(f"\n     <ЗначенияСвойства>\n      <Ид>{p}</Ид>\n      <Значение>{rng.choice(values[p])}</Значение>\n"
                    "     </ЗначенияСвойства>" for p in rng.sample(properties, 2))
    name = f"Чайник электрический «Модель {n}» 1,{n % 9} л &amp; подставка"
    return (f"   <Товар>\n    <Ид>{good}</Ид>\n    <Штрихкод>{2000000000000 + n}</Штрихкод>\n"
            f"    <Артикул>KT-{n:07d}</Артикул>\n    <Наименование>{name}</Наименование>\n"
            "    <БазоваяЕдиница Код=\"796\" НаименованиеПолное=\"Штука\" МеждународноеСокращение=\"PCE\">шт</БазоваяЕдиница>\n"
            f"    <Группы>\n     <Ид>{group}</Ид>\n    </Группы>\n"
            f"    <Описание>{DESCRIPTION.format(litres=1 + n % 3, watts=1500 + n % 900, months=12 + n % 24)}</Описание>\n"
            + "".join(f"    <Картинка>{picture}</Картинка>\n" for picture in pictures)
            + f"    <ЗначенияСвойств>{props}\n    </ЗначенияСвойств>\n"
            "    <СтавкиНалогов>\n     <СтавкаНалога>\n      <Наименование>НДС</Наименование>\n"
            "      <Ставка>20</Ставка>\n     </СтавкаНалога>\n    </СтавкиНалогов>\n"
            "    <ЗначенияРеквизитов>\n"
            "     <ЗначениеРеквизита>\n      <Наименование>ВидНоменклатуры</Наименование>\n      <Значение>Товар</Значение>\n     </ЗначениеРеквизита>\n"
            "     <ЗначениеРеквизита>\n      <Наименование>ТипНоменклатуры</Наименование>\n      <Значение>Товар</Значение>\n     </ЗначениеРеквизита>\n"
            f"     <ЗначениеРеквизита>\n      <Наименование>Полное наименование</Наименование>\n      <Значение>{name}, корпус из нержавеющей стали</Значение>\n     </ЗначениеРеквизита>\n"
            f"     <ЗначениеРеквизита>\n      <Наименование>Вес</Наименование>\n      <Значение>{rng.randint(1, 5000) / 1000}</Значение>\n     </ЗначениеРеквизита>\n"
            "    </ЗначенияРеквизитов>\n   </Товар>\n")


def write_moysklad_offers(path: Path, goods: int, rng: random.Random) -> None:
    """offers.xml as MoySklad writes it: two price types and stock per warehouse, indented."""
    warehouses = ids("warehouse", WAREHOUSES)
    with open(path, "w", encoding="utf-8") as out:
        header(out, "  <ПакетПредложений СодержитТолькоИзменения=\"false\">\n    <Ид>bench#</Ид>\n"
                    "    <Наименование>Пакет предложений</Наименование>\n    <ИдКаталога>bench</ИдКаталога>\n"
                    "    <ИдКлассификатора>bench</ИдКлассификатора>\n    <ТипыЦен>\n"
                    "      <ТипЦены>\n        <Ид>retail</Ид>\n        <Наименование>Цена продажи</Наименование>\n        <Валюта>RUB</Валюта>\n      </ТипЦены>\n"
                    "      <ТипЦены>\n        <Ид>wholesale</Ид>\n        <Наименование>Оптовая цена</Наименование>\n        <Валюта>RUB</Валюта>\n      </ТипЦены>\n"
                    "    </ТипыЦен>\n    <Склады>\n")
        out.writelines(f"      <Склад>\n        <Ид>{w}</Ид>\n        <Наименование>Склад {i}</Наименование>\n      </Склад>\n"
                       for i, w in enumerate(warehouses))
        out.write("    </Склады>\n    <Предложения>\n")
        for n, good in enumerate(ids("good", goods)):
            price = rng.randint(100, 100000)
            stock = [rng.randint(0, 50) for _ in warehouses]
            stores = "".join(f"        <Склад ИдСклада=\"{w}\" КоличествоНаСкладе=\"{q}\"/>\n" for w, q in zip(warehouses, stock))
            prices = "".join(f"          <Цена>\n            <Представление>{value} RUB за шт</Представление>\n"
                             f"            <ИдТипаЦены>{kind}</ИдТипаЦены>\n            <ЦенаЗаЕдиницу>{value}</ЦенаЗаЕдиницу>\n"
                             "            <Валюта>RUB</Валюта>\n            <Единица>шт</Единица>\n            <Коэффициент>1</Коэффициент>\n"
                             "          </Цена>\n" for kind, value in (("retail", f"{price}.50"), ("wholesale", str(price * 9 // 10))))
            out.write(f"      <Предложение>\n        <Ид>{good}</Ид>\n        <Штрихкод>{2000000000000 + n}</Штрихкод>\n"
                      f"        <Артикул>KT-{n:07d}</Артикул>\n        <Наименование>Чайник электрический «Модель {n}»</Наименование>\n"
                      "        <БазоваяЕдиница Код=\"796\" НаименованиеПолное=\"Штука\" МеждународноеСокращение=\"PCE\">шт</БазоваяЕдиница>\n"
                      f"        <Цены>\n{prices}        </Цены>\n        <Количество>{sum(stock)}</Количество>\n{stores}"
                      "      </Предложение>\n")
        out.write("    </Предложения>\n  </ПакетПредложений>\n</КоммерческаяИнформация>\n")


SHAPES = {"moysklad": (write_moysklad_import, write_moysklad_offers), "simple": (write_import, write_offers)}


def child(store: Path, path: Path, images: Path) -> dict:
    return run_measured(CHILD, str(ROOT), str(store), str(path), str(images), what=f"import of {path.name}")


def measure(shape: str, goods: int, workdir: Path, runs: int = 1) -> list[dict]:
    """Generate one shape's files, then ``runs`` times import each into a fresh store and read it bare; the
    figures of both files, each from its fastest import beside the fastest bare pass (peak RSS: the highest)."""
    rng = random.Random(7)
    write_import_file, write_offers_file = SHAPES[shape]
    write_import_file(workdir / "import.xml", goods, rng)
    write_offers_file(workdir / "offers.xml", goods, rng)
    names = ("import.xml", "offers.xml")
    imports, bares = {name: [] for name in names}, {name: [] for name in names}
    for run in range(runs):
        store, images = workdir / f"run-{run}" / "catalog.sqlite", workdir / f"run-{run}" / "images"
        store.parent.mkdir()
        for name in names:  # offers.xml after import.xml: its offers are the goods import.xml stored
            bares[name].append(run_measured(BARE_PASS, str(workdir / name), what=f"bare pass over {name}"))
            imports[name].append(child(store, workdir / name, images))
        shutil.rmtree(store.parent)
    results = []
    for name in names:
        result = dict(min(imports[name], key=lambda figures: figures["seconds"]), runs=runs)
        result["peak_rss_mb"] = max(figures["peak_rss_mb"] for figures in imports[name])
        result["parser_rss_mb"] = max(figures["parser_rss_mb"] for figures in imports[name])
        bare = min(bares[name], key=lambda figures: figures["seconds"])
        mb_per_s, bare_mb_per_s = result["mb"] / result["seconds"], result["mb"] / bare["seconds"]
        result.update(file=name, shape=shape, goods=goods, mb_per_s=mb_per_s, bare_mb_per_s=bare_mb_per_s,
                      ratio=mb_per_s / bare_mb_per_s, rss_sum_mb=result["peak_rss_mb"] + result["parser_rss_mb"])
        result["goals"] = {">= 70 % of a bare iterparse pass": result["ratio"] >= 0.7,
                           "writer + parser RSS < 120 MB": result["rss_sum_mb"] < 120}
        results.append(result)
    return results


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--goods", type=int, default=100_000)
    parser.add_argument("--shape", choices=("moysklad", "simple", "both"), default="both")
    parser.add_argument("--runs", type=int, default=3, help="imports and bare passes of each file; the fastest count")
    args = parser.parse_args()
    out = table_output(args)
    shapes = ("moysklad", "simple") if args.shape == "both" else (args.shape,)
    print(f"CommerceML import benchmark: {args.goods} goods, fastest of {args.runs} runs", file=out)
    print(f"{'shape':<9} {'file':<11} {'MB':>6} {'s':>6} {'MB/s':>6} {'bare MB/s':>9} {'ratio':>6} "
          f"{'writer CPU s':>12} {'parser CPU s':>12} {'writer MB':>9} {'parser MB':>9} {'sum MB':>7}  counts", file=out)
    results = []
    for shape in shapes:
        with tempfile.TemporaryDirectory() as tmp:
            for r in measure(shape, args.goods, Path(tmp), args.runs):
                results.append(r)
                counts = {k: v for k, v in r["counts"].items() if v and k in ("goods", "offers", "prices", "stock", "attributes", "images")}
                print(f"{shape:<9} {r['file']:<11} {r['mb']:>6.1f} {r['seconds']:>6.2f} {r['mb_per_s']:>6.1f} "
                      f"{r['bare_mb_per_s']:>9.1f} {r['ratio']:>6.0%} {r['writer_cpu_seconds']:>12.2f} {r['parser_cpu_seconds']:>12.2f} "
                      f"{r['peak_rss_mb']:>9.1f} {r['parser_rss_mb']:>9.1f} "
                      f"{r['rss_sum_mb']:>7.1f}  {counts}", file=out, flush=True)
    for goal in (">= 70 % of a bare iterparse pass", "writer + parser RSS < 120 MB"):
        print(f"goal {goal}: {'met' if all(r['goals'][goal] for r in results) else 'MISSED'}", file=out)
    if args.json:
        print_json("import", results)


if __name__ == "__main__":
    main()

"""Units of measure by their OKEI code (ОКЕИ), named as 1C writes them in CommerceML's ``БазоваяЕдиница``.

The names are those of real 1C exports (../shared/fixtures/commerceml): the short name is the
element's text, the full name and the international abbreviation (UN/ECE Rec. 20) its attributes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# An OKEI code as CommerceML's ЕдиницаТип takes it: 3 or 4 characters; OKEI's own are digits.
OKEI_CODE = re.compile(r"\d{3,4}")


@dataclass(frozen=True)
class Unit:
    """A unit of measure: its short name always, the rest when known."""

    name: str
    code: str | None = None
    full_name: str | None = None
    international: str | None = None
    retailcrm: str | None = None  # the unit's code in an ICML feed (pcs and meter as retailCRM's own example writes)


PIECE = Unit("шт", "796", "Штука", "PCE", "pcs")
OKEI = {unit.code: unit for unit in (
    PIECE, Unit("кг", "166", "Килограмм", "KGM", "kg"), Unit("г", "163", "Грамм", "GRM", "g"),
    Unit("л", "112", "Литр", "LTR", "l"), Unit("мл", "111", "Миллилитр", "MLT", "ml"),
    Unit("м", "006", "Метр", "MTR", "meter"), Unit("м2", "055", "Квадратный метр", "MTK", "m2"),
    Unit("м3", "113", "Кубический метр", "MTQ", "m3"), Unit("упак", "778", "Упаковка", "NMP", "pack"),
    Unit("компл", "839", "Комплект", "SET", "set"), Unit("пар", "715", "Пара (2 шт.)", "NPR", "pair"),
    Unit("ч", "356", "Час", "HUR"), Unit("рул", "736", "Рулон", "NPL"),
)}


def okei_unit(code: str | None, name: str | None = None, full_name: str | None = None) -> Unit | None:
    """A unit from what a source says of it, the rest filled in from OKEI; None when it names nothing."""
    code = (code or "").strip()
    code = code if OKEI_CODE.fullmatch(code) else None
    known = OKEI.get(code or "")
    name = (name or "").strip() or (known.name if known else None) or (full_name or "").strip() or code
    if not name:
        return None
    return Unit(name, code, (full_name or "").strip() or (known.full_name if known else None),
                known.international if known else None)

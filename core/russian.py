"""Numbers in Russian texts for people: nouns that agree with a count, thousands grouped as Russian writes them."""

from __future__ import annotations


def plural(count: int, one: str, few: str, many: str) -> str:
    """The noun form that goes with ``count``: «1 синхронизация», «2 синхронизации», «5 синхронизаций»
    (one: 1, 21, 101…; few: 2–4, 22–24…; many: 0, 5–20, 25–30…, 111–114)."""
    tens = abs(int(count)) % 100
    if 11 <= tens <= 14:
        return many
    units = tens % 10
    if units == 1:
        return one
    return few if 2 <= units <= 4 else many


def grouped(value) -> str:
    """Thousands separated by a narrow no-break space: «13 414»."""
    return f"{value:,}".replace(",", "\u202f")


def counted(count: int, one: str, few: str, many: str) -> str:
    """A count with its noun: «1 синхронизация», «13 414 картинок»."""
    return f"{grouped(count)} {plural(count, one, few, many)}"

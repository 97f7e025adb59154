"""Reading CommerceML documents: element helpers by local name, and the checks every document passes.

Tags are matched by local name (no namespace, ``urn:1C.ru:commerceml_2``, ``_210``, ``_3``).
Entities are never resolved, nothing is fetched, and a document with a DOCTYPE is refused. Used by
the catalog parser and by the order status documents; messages are in Russian, for the 1C operator.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

ROOT_TAG = "КоммерческаяИнформация"
PROLOG_BYTES = 65536
DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
FIRST_ELEMENT = re.compile(rb"<[^?!]")
SPACES = str.maketrans("", "", " \xa0\u202f\t\r\n")
DOCTYPE_REFUSED = ("объявление DOCTYPE в файле обмена не допускается (в CommerceML его не бывает, а сущности "
                   "в нём могут читать файлы сервера); файл отклонён")


class CommerceMLError(Exception):
    """Message in Russian, shown to the 1C/MoySklad operator as ``failure\\n<message>``."""


class Malformed(ValueError):
    """One group, good or offer cannot be stored; the message is the reason, in Russian."""


def doctype_in_prolog(head: bytes) -> bool:
    """A DOCTYPE before the first element of a file's first PROLOG_BYTES: refused before lxml reads
    it, since its entities could read local files or explode in size."""
    element = FIRST_ELEMENT.search(head)
    return bool(DOCTYPE.search(head, 0, element.start() if element else len(head)))


def document_problem(tree, name: str) -> str | None:
    """Why a parsed tree is no CommerceML document (a DOCTYPE that slipped past the prolog check,
    another root), in the words 1C shows; None when it is one."""
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        return f"Файл {name}: {DOCTYPE_REFUSED}"
    root = local_name(tree.getroot().tag)
    if root != ROOT_TAG:
        return f"Файл {name}: это не документ CommerceML: корневой элемент «{root}», ожидался «{ROOT_TAG}»"
    return None


LOCAL_NAMES: dict = {}  # tag → local name, filled by local_name


LOCAL_NAMES_KEPT = 10_000  # CommerceML has a few hundred tag names; a hostile file must not grow the cache


def local_name(tag) -> str:
    """The tag without its namespace (comments and processing instructions have none); cached per tag."""
    try:
        return LOCAL_NAMES[tag]
    except KeyError:
        name = tag.rpartition("}")[2] if isinstance(tag, str) else ""
        if len(LOCAL_NAMES) < LOCAL_NAMES_KEPT:
            LOCAL_NAMES[tag] = name
        return name


def fields_of(element) -> dict:
    """The first child of each local name: the fields of one record."""
    fields = {}
    names = LOCAL_NAMES
    for child in element:
        tag = child.tag
        name = names.get(tag) or local_name(tag)
        if name not in fields:
            fields[name] = child
    return fields


def all_named(element, name: str) -> list:
    """Every child with this local name (repeated fields: pictures, barcodes, values)."""
    return [] if element is None else list(element.iterchildren(_ANY_NAMESPACE[name]))


class _AnyNamespace(dict):
    """'{*}name' per local name: lxml matches it in C, in any namespace or none, without making tag strings."""

    def __missing__(self, name: str) -> str:
        self[name] = f"{{*}}{name}"
        return self[name]


_ANY_NAMESPACE = _AnyNamespace()


def text_of(element) -> str:
    return (element.text or "").strip() if element is not None else ""


def parent_is(element, *names: str) -> bool:
    """The record sits where CommerceML puts it (an order's Товар is not a catalog good)."""
    node = element
    for name in names:
        node = node.getparent()
        if node is None or local_name(node.tag) != name:
            return False
    return True


def parse_decimal(text: str, what: str) -> Decimal:
    """A number as 1C writes it: '1 234,50', '18', '0.5'."""
    try:
        value = Decimal(text.translate(SPACES).replace(",", "."))
    except InvalidOperation:
        raise Malformed(f"{what} «{text}» не число") from None
    if not value.is_finite():
        raise Malformed(f"{what} «{text}» не число")
    return value


def requisite_pairs(element) -> list[tuple[str, str]]:
    """(name, value) of each ЗначениеРеквизита."""
    pairs = []
    if element is None:
        return pairs
    names = LOCAL_NAMES
    for entry in element.iterchildren(_ANY_NAMESPACE["ЗначениеРеквизита"]):
        name = value = ""
        for child in entry:
            tag = child.tag
            local = names.get(tag) or local_name(tag)
            if local == "Наименование":
                name = (child.text or "").strip()
            elif local == "Значение" and not value:
                value = (child.text or "").strip()
        pairs.append((name, value))
    return pairs

"""What every endpoint shares: MoySklad's error body, the query string (paging, filter, expand), dates."""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import parse_qsl

MORE_INFO = "https://dev.moysklad.ru/doc/api/remap/1.2/#mojsklad-json-api-oshibki"
MAX_LIMIT = 1000
EXPAND_LIMIT = 100  # expand/fields are ignored above this limit
STOCK_INTERVAL = 60.0  # doc (webhookstock): "Уведомления отправляются пользователю каждые 1-5 минут"
# longest operators first, so "!~" is not read as "!" and "~"
FILTER_PATTERN = re.compile(r"^([A-Za-z.]+)(>=|<=|!=|!~|=~|~=|>|<|=|~)(.*)$")


class ApiError(Exception):
    """An error answered as MoySklad's {"errors": [...]} body."""

    def __init__(self, status: int, code: int, message: str, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict:
        more_info = MORE_INFO if self.code == 1056 else f"https://dev.moysklad.ru/doc/api/remap/1.2/#error_{self.code}"
        error = {"error": self.message, "code": self.code, **self.extra, "moreInfo": more_info}
        return {"errors": [error]}


def unknown_filter_key(key: str) -> ApiError:
    """An unknown filter key, refused as live MoySklad refuses it (not as its docs list it)."""
    # text as the live API gave it in wpcraft-ru/wooms#179 ("Ошибка фильтрации: Неизвестное поле фильтрации
    # 'product.id'"); 412 + code 1034 as recorded from production by two integrations (md/_errors.md #1034)
    return ApiError(412, 1034, f"Ошибка фильтрации: Неизвестное поле фильтрации '{key}'", parameter="filter")


def filter_error(text: str) -> ApiError:
    """Any other filter mistake: code 1034 "Ошибка фильтрации: {текст ошибки}" (md/_errors.md #1034)."""
    return ApiError(412, 1034, f"Ошибка фильтрации: {text}", parameter="filter")


def bad_parameter_value(name: str, value: str, allowed: tuple) -> ApiError:
    """md/_errors.md #1084: "Неверное значение '{значение}' параметра запроса '{параметр}', допустимые значения: ..."."""
    return ApiError(400, 1084, f"Неверное значение '{value}' параметра запроса '{name}', допустимые значения: "
                               f"'{', '.join(allowed)}'", parameter=name)


def bad_filter_value(key: str, value: str) -> ApiError:
    """md/_errors.md #1014: "Неверное значение '{значение}' параметра фильтрации '{имя параметра}'"."""
    return ApiError(400, 1014, f"Неверное значение '{value}' параметра фильтрации '{key}'", parameter="filter")


# md/_general.md, «Формат даты и времени»: «ГГГГ-ММ-ДД ЧЧ:мм:сс» with or without milliseconds, and «Без секунд:
# ГГГГ-ММ-ДД ЧЧ:мм — Только для параметров фильтрации»; a date alone is not among them.
MOMENT_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S")
FILTER_MOMENT_FORMATS = (*MOMENT_FORMATS, "%Y-%m-%d %H:%M")


def parse_moment(text: str, parameter: str, in_filter: bool = False) -> datetime:
    for fmt in FILTER_MOMENT_FORMATS if in_filter else MOMENT_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
    raise ApiError(400, 1035, "Ошибка фильтрации: неверный формат даты параметра фильтрации", parameter=parameter)


class Query:
    """Parsed query string: paging, filter conditions, expand/fields."""

    def __init__(self, raw: str):
        self.pairs = parse_qsl(raw, keep_blank_values=True)
        self.params = {}
        for key, value in self.pairs:
            self.params.setdefault(key, value)
        self.filters: list[tuple[str, str, str]] = []
        # several filter= parameters add up, like ";" (md/reports/_report_stock.md, short report filters)
        conditions = ";".join(value for key, value in self.pairs if key == "filter")
        for condition in conditions.split(";"):
            if not condition.strip():
                continue
            match = FILTER_PATTERN.match(condition.strip())
            if not match:
                raise filter_error(f"некорректное условие фильтрации '{condition}'")
            self.filters.append(match.groups())

    def paging(self) -> tuple[int, int]:
        try:
            limit = int(self.params.get("limit", MAX_LIMIT))
            offset = int(self.params.get("offset", 0))
        except ValueError:
            raise ApiError(400, 1040, "Неверно заданы параметры запроса: limit и offset должны быть целыми числами")
        if not 1 <= limit <= MAX_LIMIT:
            raise ApiError(400, 1040, f"Неверно заданы параметры запроса: значение параметра 'limit' должно быть "
                                      f"в диапазоне от 1 до {MAX_LIMIT}", parameter="limit")
        if offset < 0:
            raise ApiError(400, 1040, "Неверно заданы параметры запроса: значение параметра 'offset' должно быть "
                                      "неотрицательным", parameter="offset")
        return limit, offset

    def choice(self, name: str, allowed: tuple, default: str | None = None) -> str | None:
        """A query parameter whose documented values are `allowed` (the spec's enum): absent gives `default`,
        another value is refused."""
        value = self.params.get(name)
        if value is None:
            return default
        if value not in allowed:
            raise bad_parameter_value(name, value, allowed)
        return value

    def expansions(self, listing: bool = True) -> frozenset[str]:
        """The expand paths; none on a list page above limit 100 (md/_general.md §expand: silently ignored)."""
        if listing and self.paging()[0] > EXPAND_LIMIT:
            return frozenset()
        return frozenset(path.strip() for path in self.params.get("expand", "").split(",") if path.strip())

    def check_filter_keys(self, allowed: tuple) -> None:
        for key, _, _ in self.filters:
            if key not in allowed:
                raise unknown_filter_key(key)

    def values(self, key: str, op: str = "=") -> list[str]:
        result = []
        for name, operator, value in self.filters:
            if name == key and operator == op:
                result += [part for part in value.split(",") if part]
        return result

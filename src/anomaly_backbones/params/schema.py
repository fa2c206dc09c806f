"""The params schema: every param's type, range and allowed values, checked before any stage works.

A `Param` describes one value; a group is a mapping of names to Params. `check_group` fills
absent keys with their defaults (older params files, methods built in tests) and returns the
values converted (an int given for a float param becomes a float); anything else is a
UserError of one line naming the param, what it must be, and for an unknown key the closest
known names ("did you mean"). params.yaml lists every param with the same value as its default
here (tests/test_params.py checks the two agree), so the file a user edits shows all of them.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UserError


@dataclass(frozen=True)
class Param:
    """One param. `kind`: int | float | str | bool | list (of `items`). `special`: strings also
    allowed besides the kind (e.g. "auto"). `low`/`high`: inclusive bounds unless `low_open`.
    `choices`: the allowed values. `check(value) -> None | str` adds a rule ("must be ...")."""
    default: Any
    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple | None = None
    special: tuple = ()
    items: type | None = None
    check: Callable[[Any], str | None] | None = None
    help: str = ""
    empty: bool = False          # a list param that may be empty

    def describe(self) -> str:
        if self.choices is not None:
            what = " | ".join(map(str, self.choices))
        elif self.kind is list:
            what = f"a {'' if self.empty else 'non-empty '}list of {_KIND_NAMES[self.items or str]}s"
        else:
            what = _KIND_NAMES[self.kind]
            if self.low is not None and self.high is not None:
                what += f" in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}]"
            elif self.low is not None:
                what += f" {'>' if self.low_open else '>='} {_num(self.low)}"
            elif self.high is not None:
                what += f" <= {_num(self.high)}"
        return " or ".join([*map(str, self.special), what]) if self.special else what


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
               object: "name"}


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_value(name: str, spec: Param, v):
    """`v` converted to the param's kind, or a UserError naming `name`."""
    def bad(extra: str = "") -> UserError:
        return UserError(f"`{name}` must be {spec.describe()}{extra}, not {v!r}")

    if isinstance(v, str) and v in spec.special:
        return v
    if spec.choices is not None:
        if v not in spec.choices:
            raise bad()
        return v
    if spec.kind is bool:
        if not isinstance(v, bool):
            raise bad()
    elif spec.kind is int:
        if not _is_int(v):
            raise bad()
    elif spec.kind is float:
        if not (_is_int(v) or isinstance(v, float)) or v != v or v in (float("inf"), float("-inf")):
            raise bad()
        v = float(v)
    elif spec.kind is str:
        if not isinstance(v, str) or not v.strip():
            raise bad()
    elif spec.kind is list:
        item = spec.items or str
        if not isinstance(v, list) or (not v and not spec.empty) or not all(_is_int(x) if item is int else isinstance(x, item) for x in v):
            raise bad()
        v = list(v)
    if spec.kind in (int, float):
        if spec.low is not None and (v <= spec.low if spec.low_open else v < spec.low):
            raise bad()
        if spec.high is not None and v > spec.high:
            raise bad()
    if spec.check is not None:
        problem = spec.check(v)
        if problem:
            raise UserError(f"`{name}` {problem}, not {v!r}")
    return v


def unknown_key(where: str, key: str, known) -> UserError:
    """One line for a key the schema does not know, with the closest known names."""
    known = sorted(known)
    close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(f'`{c}`' for c in close)}? " if close else ""
    label = f"`{where}.{key}`" if where else f"`{key}`"
    return UserError(f"{label} is not a param{f' of {where}' if where else ''}; {hint}known: {', '.join(known)}")


def check_group(where: str, schema: dict[str, Param], values: dict | None) -> dict:
    """A params group checked against its schema: defaults filled in, values converted."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"`{where}` must be a mapping of params ({', '.join(schema)}), not {values!r}")
    for k in values:
        if k not in schema:
            raise unknown_key(where, k, schema)
    return {k: check_value(f"{where}.{k}", spec, values.get(k, spec.default)) for k, spec in schema.items()}


def defaults(schema: dict[str, Param]) -> dict:
    return {k: spec.default for k, spec in schema.items()}

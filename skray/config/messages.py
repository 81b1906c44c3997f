"""pydantic's validation errors as one line a user can act on: where, what, and the keys a section takes."""

from __future__ import annotations

import difflib
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

_UNION_TAGS = {"bool", "int", "float", "str", "list", "dict"}


def _field_path(loc: tuple) -> str:
    """``train.zero_stage``: the keys a user wrote, without pydantic's union-member tags."""
    return ".".join(str(p) for p in loc if isinstance(p, int) or (p.isidentifier() and p not in _UNION_TAGS))


def _known_keys(where: str, root: type[BaseModel]) -> str:
    """The keys the section of ``where`` (a path from ``root``) takes, the closest first if one is
    close (a typo)."""
    *parents, key = where.split(".")
    model: Any = root
    for part in parents:
        field = model.model_fields.get(part)
        inner = [a for a in get_args(field.annotation) or (field.annotation,) if isinstance(a, type)] if field else []
        model = next((a for a in inner if issubclass(a, BaseModel)), None)
        if model is None:
            return "every key is listed, with what it does, in skray/config/"
    keys = list(model.model_fields)
    close = difflib.get_close_matches(key, keys, n=1)
    section = ".".join(parents) or "the top level"
    hint = f"did you mean {'.'.join([*parents, close[0]])}? " if close else ""
    return f"{hint}{section} takes: {', '.join(keys)}"


def format_error(err: ValidationError, root: type[BaseModel]) -> str:
    """The first problem pydantic found, as one line: where (the keys a user wrote, from ``root``),
    what is wrong, and for an unknown key the keys that section takes."""
    errors = err.errors()
    first = errors[0]
    where = _field_path(first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key; {_known_keys(where, root)}"
    # A union (``0-3`` or ``auto``) fails once per member: say every way the value could be right.
    msgs = dict.fromkeys(
        e["msg"].removeprefix("Value error, ") for e in errors if _field_path(e["loc"]) == _field_path(first["loc"])
    )
    msg = "; or ".join(msgs)
    given = first.get("input")
    shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {given!r})"
    return f"{where}: {msg}{shown}"

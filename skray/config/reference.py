"""docs/CONFIG.md, generated from the config models: every key of ``ExperimentConfig`` with its type,
default, bounds and description. Regenerate after changing a section:
``python -m skray.config.reference > docs/CONFIG.md`` (or ``make docs``); a test fails while it is stale."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from skray.config.experiment import ExperimentConfig

COMMAND = "python -m skray.config.reference > docs/CONFIG.md"
HEADER = f"""# Configuration reference

Every key an experiment YAML may hold, generated from the pydantic models in `skray/config/`.
Do not edit by hand; regenerate with `make docs` (or `{COMMAND}`).

Keys are dotted paths (`train.lr` is `lr:` under `train:`). A key not listed here is refused, as is
a value of the wrong type or out of bounds: one line naming the key, exit code 2, nothing launched.
"required" keys have no default; a section marked optional may be left out (only the command that
reads it needs it). Rules between keys (e.g. `train.offload: params` needs `train.zero_stage: 3`)
are checked too and are not listed here.
"""


def _section(annotation: Any) -> type[BaseModel] | None:
    """The config model behind ``Model`` or ``Model | None``."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _bounds_of(metadata: list[Any], text: bool = False) -> list[str]:
    """Readable bounds from a field's constraints; ``text``: lengths count characters, not items."""
    out = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            out += _bounds_of(item.metadata)
        elif isinstance(item, at.Ge):
            out.append(f">= {item.ge}")
        elif isinstance(item, at.Gt):
            out.append(f"> {item.gt}")
        elif isinstance(item, at.Le):
            out.append(f"<= {item.le}")
        elif isinstance(item, at.Lt):
            out.append(f"< {item.lt}")
        elif isinstance(item, at.MinLen):
            unit = "character" if text else "item"
            out.append(f"at least {item.min_length} {unit}{'s' if item.min_length != 1 else ''}")
        elif isinstance(item, at.MaxLen):
            out.append(f"at most {item.max_length} items")
        elif getattr(item, "pattern", None):
            out.append(f"matches `{item.pattern}`")
    return out


def _inner_bounds(annotation: Any, each: bool = False) -> list[str]:
    """Bounds carried inside the type: ``Annotated[int, Field(ge=0, le=3)] | "auto"``, and a list's
    ``list[Annotated[int, Field(ge=1)]]`` (each item's)."""
    if get_origin(annotation) is Annotated:
        return [f"each {b}" if each else b for b in _bounds_of(list(annotation.__metadata__))]
    each = each or get_origin(annotation) is list
    return [b for arg in get_args(annotation) for b in _inner_bounds(arg, each)]


def _type(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type(args[0])
    if origin is Literal:
        return " | ".join(json.dumps(a) if isinstance(a, str) else str(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join(_type(a) for a in args)
    if origin is list:
        return f"list[{_type(args[0])}]"
    if origin is dict:
        value = _type(args[1])
        return f"mapping {_type(args[0])} -> " + (f"({value})" if " | " in value else value)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    if value is None:
        return "unset"
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, str, str, str]]:
    """(key, type, default, bounds, description) for every key of ``model`` and of its subsections."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        bounds = _bounds_of(field.metadata, field.annotation is str) + _inner_bounds(field.annotation)
        yield key, _type(field.annotation), _default(field), ", ".join(bounds), field.description or ""
        sub = _section(field.annotation)
        if sub is not None:
            yield from _rows(sub, f"{key}.")


def _summary(model: type[BaseModel]) -> str:
    """The first paragraph of a section's docstring."""
    return " ".join((inspect.getdoc(model) or "").split("\n\n")[0].split()).replace("``", "`")


def reference() -> str:
    """docs/CONFIG.md: one table of keys per top-level section, top-level keys first."""
    head = "| key | type | default | bounds | description |\n| --- | --- | --- | --- | --- |\n"
    top = [(n, f) for n, f in ExperimentConfig.model_fields.items() if _section(f.annotation) is None]
    sections = [(n, f) for n, f in ExperimentConfig.model_fields.items() if _section(f.annotation) is not None]
    parts = [HEADER, "## Contents\n", "- [top level](#top-level)"]
    parts += [f"- [{name}](#{name})" for name, _ in sections]
    parts += ["\n## top level\n", _summary(ExperimentConfig) + "\n", head.rstrip("\n")]
    for name, field in top:
        bounds = _bounds_of(field.metadata, field.annotation is str) + _inner_bounds(field.annotation)
        row = (name, _type(field.annotation), _default(field), ", ".join(bounds), field.description or "")
        parts.append("| " + " | ".join(f"`{c}`" if i == 0 else _cell(c) for i, c in enumerate(row)) + " |")
    for name, field in sections:
        model = _section(field.annotation)
        optional = " Optional: this section may be left out." if type(None) in get_args(field.annotation) else ""
        parts += [f"\n## {name}\n", f"{_summary(model)}{optional}\n", head.rstrip("\n")]
        for row in _rows(model, f"{name}."):
            parts.append("| " + " | ".join(f"`{c}`" if i == 0 else _cell(c) for i, c in enumerate(row)) + " |")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(reference(), end="")

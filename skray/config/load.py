"""YAML in, ``--set`` overrides applied, a validated ``ExperimentConfig`` out, or one line saying what is wrong."""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from skray.config.experiment import ExperimentConfig
from skray.config.messages import format_error
from skray.errors import ConfigError


def _parse_value(text: str) -> Any:
    """YAML for numbers, booleans, lists and mappings; text YAML cannot read stays as written."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section class behind ``Section`` or ``Section | None``."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def is_text_key(parts: list[str]) -> bool:
    """Whether ``section.key`` holds a string (str or str | None): such a value is taken as written,
    so a wording with ": " or a "yes" stays text instead of becoming a mapping or True."""
    model: type[BaseModel] | None = ExperimentConfig
    for part in parts[:-1]:
        field = model.model_fields.get(part)
        model = _section_model(field.annotation) if field else None
        if model is None:
            return False
    field = model.model_fields.get(parts[-1])
    if field is None:
        return False
    kinds = get_args(field.annotation) if get_origin(field.annotation) in (Union, UnionType) else (field.annotation,)
    return str in kinds and set(kinds) <= {str, type(None)}


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings: text keys take the value as written, the others are parsed
    as YAML so that numbers stay numbers and lists and mappings can be given."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value if is_text_key(parts) else _parse_value(value)
    return raw


def parse_config(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_error(err, ExperimentConfig)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML file, apply ``--set`` overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return parse_config(apply_overrides(raw, overrides or []))

"""What every config section shares: unknown keys refused (a typo fails loudly instead of silently
training with a default), assignments validated, and the rules several sections use."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from skray.storage import location

MAX_PREFIX_LENGTH = 1024  # method.prefix_length and the range a search samples it from


def refuse_retired(raw: Any, key: str, message: str) -> Any:
    """A key skray no longer reads gets its own one-line explanation, not "unknown key"."""
    if isinstance(raw, dict) and key in raw:
        raise ValueError(message)
    return raw


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def absolute_if_local(name: str, embedded: Collection[str]) -> str:
    """A local path made absolute where the config is read: Ray's workers run in another folder, so
    a relative path would miss there (and a data path would be tried as a hub id). Embedded names,
    hub ids and URIs stay as they are."""
    return location(name) if name not in embedded and Path(name).expanduser().exists() else name

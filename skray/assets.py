"""What ships inside installed packages so that the default run needs no network: the names a config
may use for them, and where an installed package lives. The loaders live with what they load
(``skray.backbones``, ``skray.data.embedded``); config reads only the names, from here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from skray.errors import DataError

EMBEDDED_BACKBONES = ("smollm2-135m", "minilm-l6")
EMBEDDED_DATASETS = ("rotten_tomatoes_critics", "crowdflower_tweets", "trec_questions")


def package_dir(package: str, hint: str) -> Path:
    """Where a package is installed, found without importing it (its imports may not be installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; run: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))

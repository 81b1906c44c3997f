"""The house's rules that a linter cannot see (import-linter checks the layers: `make lint`)."""

from skray import backbones
from skray.assets import EMBEDDED_BACKBONES, EMBEDDED_DATASETS
from skray.data import embedded


def test_the_embedded_names_config_accepts_are_the_ones_that_load():
    """config reads the names from skray.assets (below it); the loaders live with what they load."""
    assert set(backbones.EMBEDDED) == set(EMBEDDED_BACKBONES)
    assert set(embedded.EMBEDDED) == set(EMBEDDED_DATASETS)

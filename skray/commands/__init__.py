"""Command registry: one module per command; add a command by writing it and naming it here.

The CLI imports this registry for ``--help``; what only a running command needs (torch, Optuna, the
plots) is imported inside the commands' methods, for start-up time."""

from __future__ import annotations

from skray.commands.base import Command
from skray.commands.compare import Compare
from skray.commands.scale import Scale
from skray.commands.train import Train
from skray.commands.tune import Tune

COMMANDS: dict[str, Command] = {c.name: c for c in (Train(), Tune(), Compare(), Scale())}

__all__ = ["COMMANDS", "Command"]

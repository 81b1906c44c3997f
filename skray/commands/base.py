"""What a command is: one record of its config section, parameter space, Tune config, trial count,
per-trial config and the table it leaves, so the driver (``skray.search``) runs every command the
same way, and adding one means writing one module and naming it in ``skray.commands``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd

from skray.config import ExperimentConfig
from skray.errors import ConfigError

if TYPE_CHECKING:
    from ray import tune

# Runs a `skray tune` of the experiment given (or reads back one that finished): (run dir, table).
SubSearch = Callable[[ExperimentConfig], tuple[str, pd.DataFrame]]


class Command:
    """The defaults: one trial of the experiment as written, on ``train.num_workers`` workers."""

    name: str = ""
    help: str = ""
    section: str | None = None  # the config section the command reads besides the defaults
    needs: str = ""  # what that section holds, for the error when it is missing
    files: str = "results.csv and results.parquet"
    sequential: bool = False  # one trial at a time, every worker with the same CPUs (a scaling grid)

    def check(self, cfg: ExperimentConfig) -> None:
        """Refuse a config this command cannot run, with one line (before anything starts)."""
        if self.section and getattr(cfg, self.section) is None:
            raise ConfigError(f"{self.section}: missing; `skray {self.name}` needs {self.needs}")

    def workers(self, cfg: ExperimentConfig) -> tuple[int, str]:
        """The most workers one trial takes, and the key that sets it (for resource errors)."""
        return cfg.train.num_workers, "train.num_workers"

    def trials(self, cfg: ExperimentConfig) -> int:
        """How many trials a run that reaches its end has made."""
        return 1

    def param_space(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """Tune's parameter space; what it holds is also each trial's ``params.json`` (table columns)."""
        raise NotImplementedError

    def prepare(self, cfg: ExperimentConfig, run_dir: str, cpus: float, search: SubSearch) -> ExperimentConfig:
        """Work before the first trial of a new run, on the connected Ray (``cpus`` for it); returns
        the experiment the trials then run (a tune screen narrows the wordings; compare.tune runs a
        search per method with ``search``, given by the driver, which sits above the commands)."""
        return cfg

    def tune_config(self, cfg: ExperimentConfig, max_concurrent: int, run_dir: str) -> tune.TuneConfig:
        """How Tune runs the trials (``run_dir``: where a searcher keeps its state)."""
        from ray import tune

        return tune.TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent)

    def trial_config(self, cfg: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
        """The experiment one trial runs, given the parameters Tune chose for it."""
        return cfg

    def packing(self, cfg: ExperimentConfig) -> tuple[str | int, list[str]] | None:
        """For a command whose trials can be packed (``skray.broker``): its pack setting and the method
        kinds its trials train; None: its trials always run alone."""
        return None

    def points(self, cfg: ExperimentConfig) -> list[dict[str, Any]] | None:
        """The trials' parameters, for a packed run's broker to hand out in order; None: Optuna samples them."""
        return None

    def summarize(self, trials: pd.DataFrame, run_dir: str) -> pd.DataFrame:
        """Write what the command leaves beside the trials; return the table to show."""
        return trials

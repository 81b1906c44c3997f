"""One experiment, the YAML file a user writes: every section, and the ``scale`` and ``tracking`` ones."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, ValidationError, model_validator

from skray.config.backbone import BackboneConfig
from skray.config.compare import CompareConfig, compare_labels, entry_lr, method_variant
from skray.config.data import DataConfig
from skray.config.method import MethodConfig
from skray.config.search import LogRange, SearchConfig
from skray.config.section import Section
from skray.config.train import Offload, TrainConfig


class ScaleConfig(Section):
    """What ``skray scale`` measures: each valid point of workers x ZeRO stage x offload x micro
    batch, one short run at a time (``train.max_steps`` steps, ``train.untimed_steps`` not timed)."""

    num_workers: list[Annotated[int, Field(ge=1)]] = Field(
        default=[1, 2], min_length=1, description="Worker counts to measure (train.num_workers at each point)"
    )
    zero_stages: list[Annotated[int, Field(ge=0, le=3)]] = Field(
        default=[0, 1, 2, 3], min_length=1, description="ZeRO stages to measure (train.zero_stage at each point)"
    )
    offloads: list[Offload] = Field(
        default=["none"],
        min_length=1,
        description="Offload settings to measure (train.offload); points whose ZeRO stage cannot offload so are "
        "skipped",
    )
    micro_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default=[8], min_length=1, description="Micro batch sizes to measure (train.micro_batch_size at each point)"
    )


class MlflowConfig(Section):
    """Where Ray's MLflow logger sends each trial's parameters and reports."""

    tracking_uri: str = Field(
        description="The MLflow tracking server or store, e.g. http://mlflow:5000 or sqlite:///abs/path/mlflow.db"
    )
    experiment_name: str | None = Field(default=None, description="The MLflow experiment; unset: the run's name")


class TrackingConfig(Section):
    """Experiment trackers fed through Ray Tune's own logger callbacks, beside skray's tables."""

    tensorboard: bool = Field(
        default=False, description="Write TensorBoard event files in each trial's folder (tensorboard --logdir RUN_DIR)"
    )
    mlflow: MlflowConfig | None = Field(
        default=None, description="Log every trial to MLflow (needs the mlflow package)"
    )


class ExperimentConfig(Section):
    """One experiment: the YAML file a user writes, fully validated."""

    name: str = Field(
        default="skray",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The run's name: its directory is <storage_path>/<name>-<command>-<time>/, and a rerun of the "
        "same name, command and config resumes it",
    )
    storage_path: str = Field(
        default="runs",
        description="Where run directories go: a local folder, or on a cluster an absolute shared path or an "
        "s3:// / gs:// URI",
    )
    max_concurrent_trials: int | None = Field(
        default=None,
        ge=1,
        description="Most trials running at once (skray tune and compare); unset: as many as the cluster fits",
    )
    backbone: BackboneConfig = Field(default=BackboneConfig(), description="The frozen model to tune")
    data: DataConfig = Field(default=DataConfig(), description="The labelled data and how a row becomes model input")
    method: MethodConfig = Field(
        default=MethodConfig(), description="The method, its semantic prompt and the size of what trains"
    )
    train: TrainConfig = Field(default=TrainConfig(), description="How each run trains: workers, DeepSpeed, steps")
    tracking: TrackingConfig = Field(default=TrackingConfig(), description="Experiment trackers (TensorBoard, MLflow)")
    search: SearchConfig | None = Field(default=None, description="What skray tune searches; only skray tune reads it")
    compare: CompareConfig | None = Field(
        default=None, description="The methods x seeds skray compare runs; only skray compare reads it"
    )
    scale: ScaleConfig | None = Field(
        default=None, description="The grid skray scale measures; only skray scale reads it"
    )

    @model_validator(mode="after")
    def _task_fits_method(self) -> ExperimentConfig:
        if self.data.task == "token_classification" and self.method.head in ("verbalizer", "word_linear"):
            raise ValueError(
                "method.head: token classification scores every word with a linear head; set method.head: linear"
            )
        if self.compare:
            for entry in self.compare.methods:
                method_variant(self.method, entry)  # every entry must make a valid method section
                lr = entry_lr(entry, self.train.lr)
                if self.compare.tune is not None and isinstance(entry, dict) and "lr" in entry:
                    if not isinstance(lr, dict):
                        raise ValueError(
                            f"compare.methods entry {entry!r}: compare.tune searches each method's lr; give the "
                            "range to search, lr: {low: ..., high: ...}, or leave lr out for the kind's own"
                        )
                    try:
                        LogRange.model_validate(lr)
                    except ValidationError:
                        raise ValueError(
                            f"compare.methods entry {entry!r}: lr must be a range {{low, high}}, 0 < low < high <= 1"
                        ) from None
                elif not isinstance(lr, (int, float)) or not 0 < lr <= 1:
                    raise ValueError(
                        f"compare.methods entry {entry!r}: lr must be a number in (0, 1] (a range needs compare.tune)"
                    )
            compare_labels(self.compare.methods, self.train.lr)  # every entry must be told apart
        return self

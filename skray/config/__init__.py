"""The typed experiment config: YAML in, validated objects out, one-line errors for mistakes.

One module per section (as PEFT keeps one config per tuner), ``load`` for reading YAML and ``--set``
overrides, ``messages`` for turning pydantic's errors into one line. Every section forbids unknown
keys, so a typo (``lerning_rate``) fails loudly instead of silently training with a default.
"""

from skray.config.backbone import BackboneConfig
from skray.config.compare import (
    CompareConfig,
    CompareTuneConfig,
    compare_labels,
    entry_lr,
    method_run_name,
    method_variant,
)
from skray.config.data import DataConfig, selection_metric
from skray.config.experiment import ExperimentConfig, MlflowConfig, ScaleConfig, TrackingConfig
from skray.config.load import apply_overrides, is_text_key, load_config, parse_config
from skray.config.method import LR_RANGES, MethodConfig, MethodKind
from skray.config.search import IntRange, LogRange, ScreenConfig, SearchConfig
from skray.config.section import MAX_PREFIX_LENGTH
from skray.config.train import (
    NVME_NEEDS_GPU,
    NVME_NEEDS_ZERO3,
    Offload,
    TrainConfig,
    offloads_optimizer,
    offloads_params,
    resolve_device,
)

__all__ = [
    "LR_RANGES",
    "MAX_PREFIX_LENGTH",
    "NVME_NEEDS_GPU",
    "NVME_NEEDS_ZERO3",
    "BackboneConfig",
    "CompareConfig",
    "CompareTuneConfig",
    "DataConfig",
    "ExperimentConfig",
    "IntRange",
    "LogRange",
    "MethodConfig",
    "MethodKind",
    "MlflowConfig",
    "Offload",
    "ScaleConfig",
    "ScreenConfig",
    "SearchConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "compare_labels",
    "entry_lr",
    "is_text_key",
    "load_config",
    "method_run_name",
    "method_variant",
    "offloads_optimizer",
    "offloads_params",
    "parse_config",
    "resolve_device",
    "selection_metric",
]

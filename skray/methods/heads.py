"""Task heads on the frozen model's output: masked pooling + linear, a verbalizer, a linear head that
starts as the verbalizer, or the authors' mean."""

from __future__ import annotations

import torch
from torch import nn

from skray.partitioned import gathered


def pool(hidden: torch.Tensor, mask: torch.Tensor, last_token: bool) -> torch.Tensor:
    """Last real token (decoders) or mean of real tokens (encoders), in fp32; padding never counts.

    Positions are counted on the integer mask: bf16 holds every integer only up to 256 (fp16 to
    2048), so a count in the hidden states' dtype points past a longer row's end or one token early."""
    if last_token:
        last = mask.long().sum(1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last].float()
    weights = mask.unsqueeze(-1).float()
    return (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1)


class LinearHead(nn.Module):
    """A trainable linear classifier; random at step 0, so zero-shot is chance level."""

    def __init__(self, dim: int, num_labels: int):
        super().__init__()
        self.proj = nn.Linear(dim, num_labels)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled.to(self.proj.weight.dtype))


class MeanLinearHead(LinearHead):
    """The authors' head: the linear layer at every position, its logits averaged over all positions,
    padding included (kept as they wrote it, so a compare can show what masking changes)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, positions, dim) -> (batch, labels); the mean of a linear map is the map of the mean."""
        return self.proj(hidden.float().mean(1).to(self.proj.weight.dtype))


class VerbalizerHead(nn.Module):
    """Scores one label word per class with the frozen LM head: no trainable parameters.

    The label words' rows of the output embedding are copied into a buffer at build time (that
    weight gathered for the copy if ZeRO-3 partitioned it), so the head never touches a weight
    that ZeRO-3 has partitioned away.
    """

    def __init__(self, output_embeddings: nn.Module, token_ids: list[int]):
        super().__init__()
        ids = torch.tensor(token_ids)
        bias = getattr(output_embeddings, "bias", None)
        with gathered([p for p in (output_embeddings.weight, bias) if p is not None]):
            self.register_buffer("rows", output_embeddings.weight.detach()[ids].clone())
            self.register_buffer("bias", bias.detach()[ids].clone() if bias is not None else torch.zeros(len(ids)))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Label scores in fp32: rounded to bf16, the scores of near labels tie and argmax takes the first."""
        return pooled.float() @ self.rows.float().T + self.bias.float()


class FP32Linear(nn.Linear):
    """A linear layer that scores in fp32 whatever its weights' dtype (as the verbalizer does). Its own
    forward reads the weights, so ZeRO 3's hooks gather them (they hook the module that owns them)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return nn.functional.linear(x.float(), self.weight.float(), bias)


class WordLinearHead(nn.Module):
    """A trainable linear head that starts as the verbalizer: its weights are the label words' rows of
    the LM head (and their bias, or zeros), copied (gathered first if ZeRO 3 partitioned them), so at
    step 0 it scores exactly as ``VerbalizerHead`` does; training moves it like any linear head. The
    copy never touches the LM head (tied embeddings stay as they are). Its bias is where contextual
    calibration goes (``TaskModel.calibrate``). Building it draws no random numbers, so a run's other
    trainable weights start as they would with the verbalizer."""

    def __init__(self, output_embeddings: nn.Module, token_ids: list[int]):
        super().__init__()
        ids = torch.tensor(token_ids)
        weight, bias = output_embeddings.weight, getattr(output_embeddings, "bias", None)
        with gathered([p for p in (weight, bias) if p is not None]), torch.no_grad():
            rows = weight.detach()[ids]
            self.proj = nn.utils.skip_init(FP32Linear, rows.shape[1], len(ids), dtype=rows.dtype, device=rows.device)
            self.proj.weight.copy_(rows)
            self.proj.bias.copy_(bias.detach()[ids] if bias is not None else torch.zeros(len(ids)))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled)

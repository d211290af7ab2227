"""Attention implementations to compare jrag's against, on the same weights.

``eager_with_bias`` is what the published JinaBERT remote code does: materialize the full
[N, H, L, L] ALiBi bias plus a padding mask, add it to the scores, softmax, multiply.
``sdpa_without_bias`` drops ALiBi altogether: wrong outputs, but the speed and memory floor of
fused attention on this machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from jrag.attention import AlibiBias


def eager_with_bias(q, k, v, lengths: Sequence[int], bias: AlibiBias | None) -> torch.Tensor:
    batch, _heads, length, head_dim = q.shape
    positions = torch.arange(length, device=q.device)
    distance = (positions[None, :] - positions[:, None]).abs()
    slopes = -bias.slopes.to(q.dtype) if bias is not None else None
    full_bias = (slopes[:, None, None] * distance[None]).unsqueeze(0).expand(batch, -1, -1, -1) \
        if slopes is not None else torch.zeros(batch, 1, length, length, dtype=q.dtype)  # fmt: skip
    padding = torch.tensor([[j >= n for j in range(length)] for n in lengths], device=q.device)
    mask = full_bias.masked_fill(padding[:, None, None, :], torch.finfo(q.dtype).min)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + mask
    return torch.softmax(scores, dim=-1) @ v


def one_sequence_at_a_time(q, k, v, lengths: Sequence[int], bias: AlibiBias | None):
    """Plain BERT attention as jrag ran it before packing: one SDPA call per sequence."""
    if bias is not None:
        raise ValueError("one_sequence_at_a_time is for models without ALiBi")
    output = q.new_zeros(q.shape)
    for row, n in enumerate(lengths):
        output[row, :, :n] = F.scaled_dot_product_attention(
            q[row : row + 1, :, :n], k[row : row + 1, :, :n], v[row : row + 1, :, :n]
        )[0]
    return output


def sdpa_without_bias(q, k, v, lengths: Sequence[int], bias: AlibiBias | None) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


# None: jrag's own attention; "jrag-no-skip" also turns off the skipping of negligible far keys.
VARIANTS = {
    "jrag": None,
    "jrag-no-skip": None,
    "eager+bias": eager_with_bias,
    "sdpa-no-bias": sdpa_without_bias,
}

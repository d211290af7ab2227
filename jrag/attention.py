"""Attention kernels: ALiBi slopes and an ALiBi attention that never builds an [H, L, L] bias.

JinaBERT adds ``-slope_h * |i - j|`` to every attention score. The published remote code
materializes that bias as an [H, L, L] tensor: 2–3 GB at 8,192 tokens. Here it costs a few
hundred kilobytes.

The bias depends only on ``j - i``. Reverse the order of a block of queries, and it depends on
``j + i'`` instead: a Hankel matrix, which is a read-only ``as_strided`` view of one small 1-D
array per head, with stride 1 along both queries and keys. That view goes straight into
``torch.nn.functional.scaled_dot_product_attention``, whose fused CPU kernel reads the mask tile
by tile, so neither the bias nor the scores are ever materialized.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Queries per SDPA call. Any size gives the same result; this one measured fastest on CPU.
QUERY_BLOCK = 2048


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi slopes (Press et al.): geometric, interleaved when heads aren't a power of two."""

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = power_of_two_slopes(num_heads)
    else:
        closest = 2 ** math.floor(math.log2(num_heads))
        slopes = power_of_two_slopes(closest)
        slopes += power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class AlibiBias:
    """The ALiBi bias of any query block, as a view of ``base[h, t] = -slope_h * |t - center|``.

    For the queries ``start .. start+rows`` taken in *reverse* order (row r is query
    ``start + rows - 1 - r``), the bias against key j is ``base[h, j + r + offset]``.
    """

    def __init__(self, slopes: torch.Tensor, length: int, *, dtype: torch.dtype, device):
        self.slopes = slopes
        self.block = min(length, QUERY_BLOCK)
        self.center = length + self.block
        positions = torch.arange(2 * self.center, device=device, dtype=torch.float32)
        distance = (positions - self.center).abs()
        self.base = (-slopes.to(device)[:, None] * distance[None]).to(dtype).contiguous()
        # CUDA kernels want an aligned mask with no overlapping strides: copy each block there.
        self.contiguous = torch.device(device).type != "cpu"

    def reversed_block_bias(self, start: int, rows: int, keys: int) -> torch.Tensor:
        """Bias [1, H, rows, keys] for queries ``start+rows-1 … start`` (reversed) against keys."""
        heads, width = self.base.shape
        offset = self.center - start - rows + 1
        view = self.base.as_strided((1, heads, rows, keys), (0, width, 1, 1), offset)
        return view.contiguous() if self.contiguous else view


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lengths: Sequence[int],
    bias: AlibiBias | None,
) -> torch.Tensor:
    """Multi-head attention over right-padded sequences, one sequence at a time.

    ``query/key/value`` are [N, H, L, d]; ``lengths`` gives each sequence's real token count.
    Each sequence attends over its own real keys only, so no padding mask is needed and a text's
    output cannot depend on what else is in the batch. Padded query rows come back as zeros.
    """
    padded_length = query.shape[2]
    if bias is None and all(n == padded_length for n in lengths):
        return F.scaled_dot_product_attention(query, key, value)
    output = query.new_zeros(query.shape)
    for row, n in enumerate(lengths):
        keys, values = key[row : row + 1, :, :n], value[row : row + 1, :, :n]
        if bias is None:
            output[row, :, :n] = F.scaled_dot_product_attention(
                query[row : row + 1, :, :n], keys, values
            )[0]
            continue
        for start in range(0, n, bias.block):
            rows = min(bias.block, n - start)
            reversed_queries = query[row : row + 1, :, start : start + rows].flip(2)
            context = F.scaled_dot_product_attention(
                reversed_queries, keys, values, attn_mask=bias.reversed_block_bias(start, rows, n)
            )
            output[row, :, start : start + rows] = context[0].flip(1)
    return output

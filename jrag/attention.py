"""Attention kernels: ALiBi slopes and an ALiBi attention that never builds an [H, L, L] bias.

JinaBERT adds ``-slope_h * |i - j|`` to every attention score. The published remote code
materializes that bias as an [H, L, L] tensor: 2–3 GB at 8,192 tokens. Here it costs a few
hundred kilobytes.

The bias depends only on ``j - i``. Reverse the order of a block of queries, and it depends on
``j + i'`` instead: a Hankel matrix, which is a read-only ``as_strided`` view of one small 1-D
array per head, with stride 1 along both queries and keys. That view goes straight into
``torch.nn.functional.scaled_dot_product_attention``, whose fused CPU kernel reads the mask tile
by tile, so neither the bias nor the scores are ever materialized.

ALiBi also makes far keys irrelevant, and that can be proven per input: a score q·k/√d lies
within ±B, where B = max|q|·max|k|/√d (Cauchy–Schwarz), so a key at distance D weighs at most
``exp(2B - slope·D)`` relative to the query's own key. Keys farther than
``(2B + 30) / slope`` weigh less than e^-30 of it and are skipped: exact in float32, and on
steep-slope heads most of the sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Queries per SDPA call. Any size gives the same result; this one measured fastest on CPU.
QUERY_BLOCK = 2048
# Keys whose bias falls this far below any possible score gain are skipped (weight < e^-30).
NEGLIGIBLE_LOGIT = 30.0
# Off: every key is computed (for benchmarks that isolate the effect of skipping).
SKIP_FAR_KEYS = True


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
        self.slopes = slopes.float()
        self.block = min(length, QUERY_BLOCK)
        self.center = length + self.block
        positions = torch.arange(2 * self.center, device=device, dtype=torch.float32)
        distance = (positions - self.center).abs()
        self.base = (-slopes.to(device)[:, None] * distance[None]).to(dtype).contiguous()
        # CUDA kernels want an aligned mask with no overlapping strides: copy each block there.
        self.contiguous = torch.device(device).type != "cpu"

    def reach(self, query: torch.Tensor, key: torch.Tensor) -> list[int]:
        """Per head, the farthest query–key distance whose softmax weight can matter.

        ``query``/``key`` are one sequence's [1, H, n, d]. See the module docstring for the bound.
        """
        if not SKIP_FAR_KEYS:
            return [key.shape[2]] * key.shape[1]
        scale = query.shape[-1] ** -0.5
        q_max = query[0].float().norm(dim=-1).amax(dim=-1)
        k_max = key[0].float().norm(dim=-1).amax(dim=-1)
        spread = 2 * q_max.cpu() * k_max.cpu() * scale
        return ((spread + NEGLIGIBLE_LOGIT) / self.slopes.cpu()).ceil().int().tolist()

    def reversed_block_bias(self, heads: slice, start: int, rows: int, keys: slice) -> torch.Tensor:
        """Bias [1, h, rows, k] for queries ``start+rows-1 … start`` (reversed) against ``keys``."""
        width = self.base.shape[1]
        offset = heads.start * width + self.center - start - rows + 1 + keys.start
        shape = (1, heads.stop - heads.start, rows, keys.stop - keys.start)
        view = self.base.as_strided(shape, (0, width, 1, 1), offset)
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
    _, num_heads, padded_length, _ = query.shape
    if bias is None and all(n == padded_length for n in lengths):
        return F.scaled_dot_product_attention(query, key, value)
    output = query.new_zeros(query.shape)
    for row, n in enumerate(lengths):
        q, k, v = (t[row : row + 1, :, :n] for t in (query, key, value))
        if bias is None:
            output[row, :, :n] = F.scaled_dot_product_attention(q, k, v)[0]
            continue
        reach = bias.reach(q, k)
        if min(reach) >= n - 1:  # every key matters to every head: one call per query block
            head_groups = [(slice(0, num_heads), n)]
        else:
            head_groups = [(slice(h, h + 1), reach[h]) for h in range(num_heads)]
        for heads, head_reach in head_groups:
            for start in range(0, n, bias.block):
                rows = min(bias.block, n - start)
                keys = slice(max(0, start - head_reach), min(n, start + rows + head_reach))
                context = F.scaled_dot_product_attention(
                    q[:, heads, start : start + rows].flip(2),
                    k[:, heads, keys],
                    v[:, heads, keys],
                    attn_mask=bias.reversed_block_bias(heads, start, rows, keys),
                )
                output[row, heads, start : start + rows] = context[0].flip(1)
    return output

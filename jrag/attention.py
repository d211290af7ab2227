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

Short sequences (``PACKED_MAX_LENGTH`` tokens or fewer) skip the per-sequence loop: they run in
one SDPA call with a dense [rows, H, L, L] ALiBi-plus-padding mask, small at these lengths. Padded
keys get -inf, so their weight is exactly zero and a text's output does not depend on its
neighbours. Which path a text takes depends on its own length only.

On CUDA, ``flex_attention`` computes the bias inside the kernel from a ``score_mod`` and masks
padding with a block mask: no bias tensor, no host sync. The same code runs (uncompiled, slowly)
on CPU when a model's kernel is set to "flex", which is how the tests exercise it. In float32 on
CUDA the compiled flex kernel measured 10x slower than SDPA (see :func:`choose_kernel`).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Queries per SDPA call. Any size gives the same result; this one measured fastest on CPU.
QUERY_BLOCK = 2048
# Keys whose bias falls this far below any possible score gain are skipped (weight < e^-30).
NEGLIGIBLE_LOGIT = 30.0
# Sequences up to this length share one SDPA call with a dense ALiBi + padding mask.
PACKED_MAX_LENGTH = 512
# Mask elements per packed SDPA call (float32: 16 MiB): bounds the dense mask's memory.
PACKED_MASK_ELEMENTS = 1 << 22
KERNELS = ("sdpa", "flex")


@dataclass(frozen=True)
class Kernel:
    """How one model computes attention: chosen when it is built (:func:`choose_kernel`), kept
    on the model (``model.kernel``), replaced there by tests and benchmarks."""

    name: str = "sdpa"  # "sdpa" (the bias as a strided float mask) or "flex"
    skip_far_keys: bool = True  # off: every key is computed (benchmarks isolating the skip)

    def __post_init__(self) -> None:
        if self.name not in KERNELS:
            raise ValueError(f"unknown attention kernel {self.name!r}; use one of {KERNELS}")


def choose_kernel(device_type: str, dtype: torch.dtype) -> str:
    """The attention kernel for a model on ``device_type`` in ``dtype``.

    flex_attention (compiled) on CUDA in 16 bits: ~10x faster than eager attention. In float32
    the flex kernel is slow (v2-base, 8,192 tokens, one H200: flex 2.85 s, SDPA with the ALiBi
    bias as a float mask 0.16 s, eager 0.30 s), so SDPA runs there, and on CPU. (With TF32
    matmuls allowed, flex in float32 took 0.04 s; TF32 is off by default and costs precision.)
    """
    if device_type == "cuda" and dtype in (torch.bfloat16, torch.float16) and _flex_available():
        return "flex"
    return "sdpa"


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

    def __init__(
        self,
        slopes: torch.Tensor,
        length: int,
        *,
        dtype: torch.dtype,
        device,
        lengths: Sequence[int] | None = None,
        kernel: Kernel | None = None,
    ):
        device = torch.device(device)
        self.kernel = kernel or Kernel(choose_kernel(device.type, dtype))
        self.slopes = slopes.float()
        self.lengths = list(lengths) if lengths is not None else [length]
        self.block = min(length, QUERY_BLOCK)
        self.center = length + self.block
        self.flex_mask = None  # built by the first layer, shared by the others
        if self.kernel.name == "flex":
            return
        if device.type == "cpu":  # 16-bit weights still attend in float32 (see ``attention``)
            dtype = torch.float32
        positions = torch.arange(2 * self.center, device=device, dtype=torch.float32)
        distance = (positions - self.center).abs()
        self.base = (-slopes.to(device)[:, None] * distance[None]).to(dtype).contiguous()
        # CUDA kernels want an aligned mask with no overlapping strides: copy each block there
        # (SDPA on CUDA: float32, or no flex_attention).
        self.contiguous = device.type != "cpu"

    def reach(self, query: torch.Tensor, key: torch.Tensor) -> list[int]:
        """Per head, the farthest query–key distance whose softmax weight can matter.

        ``query``/``key`` are one sequence's [1, H, n, d]. See the module docstring for the bound.
        """
        if not self.kernel.skip_far_keys or key.device.type != "cpu":  # off CPU: a host sync
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
    """Multi-head attention over right-padded sequences; padded query rows come back as zeros.

    ``query/key/value`` are [N, H, L, d]; ``lengths`` gives each sequence's real token count.
    Each sequence attends over its own real keys only, so a text's output cannot depend on what
    else is in the batch.
    """
    if query.device.type == "cpu" and query.dtype != torch.float32:
        # SDPA gains nothing from 16-bit on CPU, and a float32 bias keeps far-key logits exact
        # (bfloat16 would round -slope·distance by up to 0.125 at 8k tokens).
        context = attention(query.float(), key.float(), value.float(), lengths, bias)
        return context.to(query.dtype)
    padded_length = query.shape[2]
    if bias is None and all(n == padded_length for n in lengths):
        return F.scaled_dot_product_attention(query, key, value)
    if bias is not None and bias.kernel.name == "flex":
        return flex_alibi_attention(query, key, value, lengths, bias)
    packed = [r for r, n in enumerate(lengths) if bias is None or n <= PACKED_MAX_LENGTH]
    groups = _mask_groups(packed, lengths, query.shape[1], bias is not None)
    if len(groups) == 1 and len(packed) == len(lengths):
        # Many short texts: one SDPA call whose output is the whole batch's, with no copy.
        return _packed_attention(query, key, value, lengths, bias, groups[0])
    output = query.new_zeros(query.shape)
    for rows in groups:
        _packed_attention(query, key, value, lengths, bias, rows, output)
    for row, n in enumerate(lengths):
        if bias is not None and n > PACKED_MAX_LENGTH:
            _long_attention(query, key, value, row, n, bias, output)
    return output


def _mask_groups(
    rows: list[int], lengths: Sequence[int], num_heads: int, alibi: bool
) -> list[list[int]]:
    """Split rows into groups whose dense mask stays within ``PACKED_MASK_ELEMENTS``."""
    groups: list[list[int]] = []
    for row in sorted(rows, key=lambda r: -lengths[r]):  # a group's first row is its longest
        n = lengths[groups[-1][0]] if groups else lengths[row]
        per_row = num_heads * n * n if alibi else n
        if groups and (len(groups[-1]) + 1) * per_row <= PACKED_MASK_ELEMENTS:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _packed_attention(query, key, value, lengths, bias, rows, output=None) -> torch.Tensor:
    """Several rows in one SDPA call, with ALiBi (when ``bias``) and padding in a dense mask.

    The context goes into ``output``'s rows; without ``output`` (``rows`` being every row) it is
    returned as the batch's whole output.
    """
    device = query.device
    length = max(lengths[r] for r in rows)
    if output is None:
        rows = sorted(rows)
        length = query.shape[2]
    whole_batch = rows == sorted(rows) and len(rows) == query.shape[0]
    if whole_batch:  # no gather and scatter: slice the batch as it is
        index = slice(None)
        q, k, v = (t[:, :, :length] for t in (query, key, value))
    else:
        index = torch.tensor(rows, device=device)
        q, k, v = (t.index_select(0, index)[:, :, :length] for t in (query, key, value))
    real = (
        torch.arange(length, device=device)[None]
        < torch.tensor([lengths[r] for r in rows], device=device)[:, None]
    )  # [rows, L]
    mask = torch.zeros(real.shape, device=device).masked_fill_(~real, float("-inf"))
    mask = mask[:, None, None, :]  # [rows, 1, 1, L]
    if bias is not None:
        positions = torch.arange(length, device=device, dtype=torch.float32)
        distance = (positions[:, None] - positions[None]).abs()
        mask = mask + (-bias.slopes.to(device)[:, None, None] * distance)[None]  # [rows, H, L, L]
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(query.dtype))
    context.masked_fill_(~real[:, None, :, None], 0)
    if output is None:
        return context
    if whole_batch and length == query.shape[2]:
        output.copy_(context)
    else:
        output[index, :, :length] = context
    return output


def _long_attention(query, key, value, row: int, n: int, bias: AlibiBias, output) -> None:
    """One long sequence by query blocks against a bias view, skipping negligible far keys."""
    num_heads = query.shape[1]
    q, k, v = (t[row : row + 1, :, :n] for t in (query, key, value))
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


def flex_alibi_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lengths: Sequence[int],
    bias: AlibiBias,
) -> torch.Tensor:
    """ALiBi attention with the bias computed inside ``flex_attention``: no bias tensor.

    Padding keys are masked by a block mask built once per forward pass from the host-side
    ``lengths``, so nothing is read back from the device.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    batch, _, length, _ = query.shape
    device = query.device
    neg_slopes = -bias.slopes.to(device)
    real_lengths = torch.tensor(list(lengths), device=device)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + neg_slopes[h] * (q_idx - kv_idx).abs()

    if bias.flex_mask is None:

        def key_is_real(b, h, q_idx, kv_idx):
            return kv_idx < real_lengths[b]

        bias.flex_mask = create_block_mask(key_is_real, batch, None, length, length, device=device)
    context = _flex_kernel(device.type)(
        query, key, value, score_mod=score_mod, block_mask=bias.flex_mask
    )
    real_queries = torch.arange(length, device=device)[None] < real_lengths[:, None]
    return context.masked_fill(~real_queries[:, None, :, None], 0)


@functools.cache
def _flex_kernel(device_type: str) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    if device_type == "cuda":  # compiled: the fused kernel (eager flex materializes the scores)
        return torch.compile(flex_attention, dynamic=True)

    def eager(*args, **kwargs):
        with warnings.catch_warnings():  # "called without torch.compile()": known, and fine here
            warnings.simplefilter("ignore", UserWarning)
            return flex_attention(*args, **kwargs)

    return eager


@functools.cache
def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True

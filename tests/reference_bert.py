"""An independent, naive float64 BERT/JinaBERT forward pass, written from the spec for parity tests.

It shares no code with ``jrag.modeling``: it reads the safetensors file directly, materializes the
full [H, L, L] ALiBi bias and computes everything in float64, one sequence at a time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


def spec_slopes(num_heads: int) -> list[float]:
    def geometric(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** math.floor(math.log2(num_heads))
    return geometric(p) + geometric(2 * p)[0::2][: num_heads - p]


def _layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def reference_hidden_states(model_dir: str | Path, input_ids: list[int]) -> np.ndarray:
    """Last hidden states [L, hidden] in float64 for one sequence of token ids."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    w = {
        k.removeprefix("bert."): v.double()
        for k, v in load_file(model_dir / "model.safetensors").items()
    }
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    hidden_size = config["hidden_size"]
    head_dim = hidden_size // heads
    inter = config["intermediate_size"]
    length = len(input_ids)
    ids = torch.tensor(input_ids)

    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    alibi = config.get("position_embedding_type") == "alibi"
    if not alibi:
        x = x + w["embeddings.position_embeddings.weight"][:length]
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)

    positions = torch.arange(length, dtype=torch.float64)
    distance = (positions[:, None] - positions[None, :]).abs()
    bias = -torch.tensor(spec_slopes(heads), dtype=torch.float64)[:, None, None] * distance

    def linear(t: torch.Tensor, name: str) -> torch.Tensor:
        out = t @ w[f"{name}.weight"].T
        return out + w[f"{name}.bias"] if f"{name}.bias" in w else out

    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        q, k, v = (
            linear(x, p + f"attention.self.{part}").view(length, heads, head_dim).transpose(0, 1)
            for part in ("query", "key", "value")
        )
        scores = q @ k.transpose(1, 2) / math.sqrt(head_dim)
        if alibi:
            scores = scores + bias
        context = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(length, hidden_size)
        h = _layer_norm(
            x + linear(context, p + "attention.output.dense"),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            eps,
        )  # fmt: skip
        kind = config.get("feed_forward_type", "original")
        if kind in ("geglu", "reglu"):
            g = h @ w[p + "mlp.gated_layers.weight"].T
            act = (
                torch.relu
                if kind == "reglu"
                else (lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2))))
            )
            u = act(g[:, :inter]) * g[:, inter:]
            x = _layer_norm(h + linear(u, p + "mlp.wo"), w[p + "mlp.layernorm.weight"],
                            w[p + "mlp.layernorm.bias"], eps)  # fmt: skip
        else:
            u = linear(h, p + "intermediate.dense")
            u = 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))
            x = _layer_norm(h + linear(u, p + "output.dense"), w[p + "output.LayerNorm.weight"],
                            w[p + "output.LayerNorm.bias"], eps)  # fmt: skip
    return x.numpy()


def reference_embedding(model_dir: str | Path, input_ids: list[int]) -> np.ndarray:
    """Mean-pooled, L2-normalized float64 embedding."""
    pooled = reference_hidden_states(model_dir, input_ids).mean(axis=0)
    return pooled / np.linalg.norm(pooled)

"""An independent, naive float64 BERT/JinaBERT forward pass, written from the spec for parity tests.

It shares no code with ``jrag.modeling``: it reads the safetensors file directly, builds each
head's full [L, L] ALiBi bias and computes everything in float64, one sequence at a time.

The qk-post-norm layer follows the public ``jinaai/jina-bert-v2-qk-post-norm`` remote code
(``JinaBertSelfAttention``, ``JinaBertGLUMLP``, ``JinaBertLayer``); the cross-encoder head follows
``BertForSequenceClassification`` (pooler tanh over the first token, then the classifier).
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


def _uses_qk_post_norm(config: dict) -> bool:
    """The remote code named by the config, as the published checkpoints name it."""
    names = str(config.get("_name_or_path", "")) + str(config.get("auto_map", {}).get("AutoConfig"))
    return "jina-bert-v2-qk-post-norm" in names


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return {
        k.removeprefix("bert."): v.double()
        for k, v in load_file(model_dir / "model.safetensors").items()
    }


def reference_score(
    model_dir: str | Path, input_ids: list[int], token_type_ids: list[int]
) -> float:
    """A cross-encoder's raw logit for one (query, passage) pair, in float64."""
    model_dir = Path(model_dir)
    w = _weights(model_dir)
    first = torch.from_numpy(reference_hidden_states(model_dir, input_ids, token_type_ids)[0])
    pooled = torch.tanh(first @ w["pooler.dense.weight"].T + w["pooler.dense.bias"])
    return float(pooled @ w["classifier.weight"][0] + w["classifier.bias"][0])


def reference_hidden_states(
    model_dir: str | Path, input_ids: list[int], token_type_ids: list[int] | None = None
) -> np.ndarray:
    """Last hidden states [L, hidden] in float64 for one sequence of token ids."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    w = _weights(model_dir)
    qk_post_norm = _uses_qk_post_norm(config)
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    hidden_size = config["hidden_size"]
    head_dim = hidden_size // heads
    inter = config["intermediate_size"]
    length = len(input_ids)
    ids = torch.tensor(input_ids)

    types = torch.tensor(token_type_ids if token_type_ids is not None else [0] * length)
    x = w["embeddings.word_embeddings.weight"][ids]
    x = x + w["embeddings.token_type_embeddings.weight"][types]
    alibi = config.get("position_embedding_type") == "alibi"
    if not alibi:
        x = x + w["embeddings.position_embeddings.weight"][:length]
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)

    positions = torch.arange(length, dtype=torch.float64)
    distance = (positions[:, None] - positions[None, :]).abs()
    slopes = spec_slopes(heads)

    def linear(t: torch.Tensor, name: str) -> torch.Tensor:
        out = t @ w[f"{name}.weight"].T
        return out + w[f"{name}.bias"] if f"{name}.bias" in w else out

    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        q, k, v = (linear(x, p + f"attention.self.{part}") for part in ("query", "key", "value"))
        if qk_post_norm:  # LayerNorm over the whole projection, before splitting into heads
            q = _layer_norm(q, w[p + "attention.self.layer_norm_q.weight"],
                            w[p + "attention.self.layer_norm_q.bias"], eps)  # fmt: skip
            k = _layer_norm(k, w[p + "attention.self.layer_norm_k.weight"],
                            w[p + "attention.self.layer_norm_k.bias"], eps)  # fmt: skip
        q, k, v = (t.view(length, heads, head_dim).transpose(0, 1) for t in (q, k, v))
        context = torch.empty_like(q)
        for head in range(heads):  # one [L, L] score matrix at a time: bounded memory at 8k
            scores = q[head] @ k[head].T / math.sqrt(head_dim)
            if alibi:
                scores = scores - slopes[head] * distance
            context[head] = torch.softmax(scores, dim=-1) @ v[head]
        context = context.transpose(0, 1).reshape(length, hidden_size)
        h = _layer_norm(
            x + linear(context, p + "attention.output.dense"),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            eps,
        )  # fmt: skip
        kind = config.get("feed_forward_type", "original")
        gelu = lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))  # noqa: E731
        if qk_post_norm:
            # JinaBertLayer: norm_1(x + attention(x)), then norm_2(r + down(up * act(gate))).
            r = _layer_norm(x + h, w[p + "layer_norm_1.weight"], w[p + "layer_norm_1.bias"], eps)
            g = r @ w[p + "mlp.up_gated_layer.weight"].T
            act = torch.relu if kind == "reglu" else gelu
            u = g[:, :inter] * act(g[:, inter:])
            x = _layer_norm(r + linear(u, p + "mlp.down_layer"), w[p + "layer_norm_2.weight"],
                            w[p + "layer_norm_2.bias"], eps)  # fmt: skip
        elif kind in ("geglu", "reglu"):
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

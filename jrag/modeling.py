"""BERT and JinaBERT in plain PyTorch, for inference.

The module tree mirrors the Hugging Face checkpoint's key names (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ``encoder.layer.N.mlp.gated_layers`` …), so a
``model.safetensors`` loads with ``load_state_dict`` and at most a ``bert.`` prefix strip.

JinaBERT differs from BERT in two places, both switched by the config:
- ``position_embedding_type="alibi"``: no position embeddings; attention scores get
  ``-slope_h * |i - j|`` (see ``jrag.attention``).
- ``feed_forward_type`` "geglu"/"reglu": ``gated_layers`` [2I, H] without bias; the activation
  applies to the first half and gates with the second.
Both are post-norm, like the original BERT.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from jrag.attention import AlibiBias, alibi_slopes, attention
from jrag.config import BertConfig

# Feed-forward activations run over at most this many token rows at once, which bounds the
# [rows, 2I] intermediate of a long document.
_FFN_ROWS = 2048

AttentionFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, Sequence[int], "AlibiBias | None"], torch.Tensor
]


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "relu":
        return nn.functional.relu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: nn.functional.gelu(x, approximate="tanh")
    return nn.functional.gelu  # exact (erf) GELU, as BERT and JinaBERT's geglu use


class Embeddings(nn.Module):
    """Token (+ absolute position, for plain BERT) + token-type embeddings, then LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        if not config.uses_alibi:
            self.position_embeddings = nn.Embedding(
                config.max_position_embeddings, config.hidden_size
            )
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Single-segment inputs: token type 0 everywhere.
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        if hasattr(self, "position_embeddings"):
            embeddings = embeddings + self.position_embeddings.weight[: input_ids.shape[1]]
        return self.LayerNorm(embeddings)


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden: torch.Tensor,
        lengths: Sequence[int],
        bias: AlibiBias | None,
        attention_fn: AttentionFn,
    ) -> torch.Tensor:
        query, key, value = (
            self._heads(proj(hidden)) for proj in (self.query, self.key, self.value)
        )
        context = attention_fn(query, key, value, lengths, bias)
        return context.transpose(1, 2).reshape(hidden.shape)


class SelfOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(context))


class Attention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = SelfAttention(config)
        self.output = SelfOutput(config)

    def forward(self, hidden, lengths, bias, attention_fn) -> torch.Tensor:
        return self.output(self.self(hidden, lengths, bias, attention_fn), hidden)


class GatedMLP(nn.Module):
    """JinaBERT's GEGLU/ReGLU feed-forward: ``LN(h + wo(act(g[:, :I]) * g[:, I:]))``."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.act = nn.functional.relu if config.feed_forward_type == "reglu" else nn.functional.gelu
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gated = self.gated_layers(hidden)
        activated = (
            self.act(gated[..., : self.intermediate_size]) * gated[..., self.intermediate_size :]
        )
        return self.layernorm(hidden + self.wo(activated))


class Intermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _activation(config.hidden_act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(hidden))


class Output(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, intermediate: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(intermediate))


class Layer(nn.Module):
    """Attention, then the feed-forward: gated (``mlp``) for JinaBERT, BERT's otherwise."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = Attention(config)
        if config.feed_forward_type == "original":
            self.intermediate = Intermediate(config)
            self.output = Output(config)
        else:
            self.mlp = GatedMLP(config)

    def feed_forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "mlp"):
            return self.mlp(hidden)
        return self.output(self.intermediate(hidden), hidden)

    def forward(self, hidden, lengths, bias, attention_fn) -> torch.Tensor:
        hidden = self.attention(hidden, lengths, bias, attention_fn)
        rows = hidden.reshape(-1, hidden.shape[-1])
        if rows.shape[0] <= _FFN_ROWS:
            return self.feed_forward(hidden)
        out = torch.empty_like(rows)
        for start in range(0, rows.shape[0], _FFN_ROWS):
            out[start : start + _FFN_ROWS] = self.feed_forward(rows[start : start + _FFN_ROWS])
        return out.view(hidden.shape)


class BertEncoder(nn.Module):
    """The stack of layers (checkpoint keys ``encoder.layer.N``)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))


class BertModel(nn.Module):
    """The encoder stack. ``forward`` returns the last hidden states [N, L, hidden_size]."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = BertEncoder(config)
        self.register_buffer(
            "alibi_slopes", alibi_slopes(config.num_attention_heads), persistent=False
        )
        self.attention_fn: AttentionFn = attention

    def forward(self, input_ids: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """``input_ids`` [N, L] right-padded; ``lengths`` the real length of each row."""
        hidden = self.embeddings(input_ids)
        bias = None
        if self.config.uses_alibi:
            bias = AlibiBias(
                self.alibi_slopes, input_ids.shape[1], dtype=hidden.dtype, device=hidden.device,
                lengths=lengths,
            )  # fmt: skip
        for layer in self.encoder.layer:
            hidden = layer(hidden, lengths, bias, self.attention_fn)
        return hidden

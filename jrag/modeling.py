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

The qk-post-norm JinaBERT (``config.qk_layer_norm``, jina-embeddings-v2-base-code) changes the
layer in three places: LayerNorms on the query and key projections (``layer_norm_q``/``_k``); the
attention block's output goes through a second LayerNorm with the layer input
(``layer_norm_1``); and the feed-forward is ``mlp.up_gated_layer``/``mlp.down_layer`` with the
activation on the *second* half, followed by ``layer_norm_2``.

``BertForSequenceClassification`` adds BERT's pooler (tanh of a dense layer over the first token)
and a linear ``classifier``: the cross-encoder layout of ms-marco rerankers and jina-reranker-v1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from jrag.attention import AlibiBias, Kernel, alibi_slopes, attention
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

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        # Single-segment inputs (embedding): token type 0 everywhere, without a lookup.
        if token_type_ids is None:
            types = self.token_type_embeddings.weight[0]
        else:
            types = self.token_type_embeddings(token_type_ids)
        embeddings = self.word_embeddings(input_ids) + types
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
        self.attend: AttentionFn = attention  # replaced by BertModel.use_attention
        if config.qk_layer_norm:
            self.layer_norm_q = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.layer_norm_k = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, hidden: torch.Tensor, lengths: Sequence[int], bias: AlibiBias | None
    ) -> torch.Tensor:
        query, key = self.query(hidden), self.key(hidden)
        if hasattr(self, "layer_norm_q"):
            query, key = self.layer_norm_q(query), self.layer_norm_k(key)
        query, key, value = self._heads(query), self._heads(key), self._heads(self.value(hidden))
        context = self.attend(query, key, value, lengths, bias)
        return context.transpose(1, 2).reshape(hidden.shape)


class Attention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = SelfAttention(config)
        self.output = Output(config, config.hidden_size)

    def forward(self, hidden, lengths, bias) -> torch.Tensor:
        return self.output(self.self(hidden, lengths, bias), hidden)


class GatedMLP(nn.Module):
    """JinaBERT's GEGLU/ReGLU feed-forward: one [2I, H] projection, half activated, half gating.

    jina-bert-implementation: ``LN(h + wo(act(g[:, :I]) * g[:, I:]))`` (keys ``gated_layers``,
    ``wo``, ``layernorm``). qk-post-norm: ``down_layer(g[:, :I] * act(g[:, I:]))`` (keys
    ``up_gated_layer``, ``down_layer``); its LayerNorm is the layer's ``layer_norm_2``.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.act_on_first_half = not config.qk_layer_norm
        self.act = nn.functional.relu if config.feed_forward_type == "reglu" else nn.functional.gelu
        width = (config.hidden_size, 2 * config.intermediate_size)
        if config.qk_layer_norm:
            self.up_gated_layer = nn.Linear(*width, bias=False)
            self.down_layer = nn.Linear(config.intermediate_size, config.hidden_size)
        else:
            self.gated_layers = nn.Linear(*width, bias=False)
            self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
            self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.act_on_first_half:
            first, second = self.gated_layers(hidden).split(self.intermediate_size, dim=-1)
            return self.layernorm(hidden + self.wo(self.act(first) * second))
        first, second = self.up_gated_layer(hidden).split(self.intermediate_size, dim=-1)
        return self.down_layer(first * self.act(second))


class Intermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _activation(config.hidden_act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(hidden))


class Output(nn.Module):
    """``LayerNorm(residual + dense(x))``: how BERT closes its attention block (``x`` the
    attention's context) and its feed-forward (``x`` the intermediate activations)."""

    def __init__(self, config: BertConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(x))


class Layer(nn.Module):
    """Attention, then the feed-forward: gated (``mlp``) for JinaBERT, BERT's otherwise."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = Attention(config)
        if config.feed_forward_type == "original":
            self.intermediate = Intermediate(config)
            self.output = Output(config, config.intermediate_size)
        else:
            self.mlp = GatedMLP(config)
        if config.qk_layer_norm:
            self.layer_norm_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.layer_norm_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def feed_forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "layer_norm_2"):
            return self.layer_norm_2(hidden + self.mlp(hidden))
        if hasattr(self, "mlp"):
            return self.mlp(hidden)
        return self.output(self.intermediate(hidden), hidden)

    def forward(self, hidden, lengths, bias) -> torch.Tensor:
        layer_input = hidden
        hidden = self.attention(hidden, lengths, bias)
        if hasattr(self, "layer_norm_1"):
            # qk-post-norm adds the layer input a second time, after the attention's own norm.
            hidden = self.layer_norm_1(layer_input + hidden)
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
        # Chosen for the device and dtype the model runs on (Encoder); None: chosen per input.
        self.kernel: Kernel | None = None

    def forward(
        self,
        input_ids: torch.Tensor,
        lengths: Sequence[int],
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``input_ids`` [N, L] right-padded; ``lengths`` the real length of each row.

        ``token_type_ids`` [N, L] for pair inputs (a cross-encoder's query and passage); None
        means one segment.
        """
        hidden = self.embeddings(input_ids, token_type_ids)
        bias = None
        if self.config.uses_alibi:
            bias = AlibiBias(
                self.alibi_slopes, input_ids.shape[1], dtype=hidden.dtype, device=hidden.device,
                lengths=lengths, kernel=self.kernel,
            )  # fmt: skip
        for layer in self.encoder.layer:
            hidden = layer(hidden, lengths, bias)
        return hidden

    def use_attention(self, attend: AttentionFn) -> None:
        """Compute attention with ``attend`` in every layer (benchmarks comparing
        implementations; the model's own is :func:`jrag.attention.attention`)."""
        for layer in self.encoder.layer:
            layer.attention.self.attend = attend


class Pooler(nn.Module):
    """BERT's pooler: tanh of a dense layer over the first token's state."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class BertForSequenceClassification(BertModel):
    """A cross-encoder: the encoder stack, the pooler and a one-label linear head.

    Checkpoint keys are ``bert.*`` (stripped on load), ``bert.pooler.dense.*`` and
    ``classifier.*``, for BERT and JinaBERT alike. ``forward`` returns the raw logits [N].
    """

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.pooler = Pooler(config)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(
        self,
        input_ids: torch.Tensor,
        lengths: Sequence[int],
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = super().forward(input_ids, lengths, token_type_ids)
        return self.classifier(self.pooler(hidden)).squeeze(-1)

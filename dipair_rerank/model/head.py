"""The head: the small transformer that reads a query block beside a document block and scores the pair, plus the
channels' weighted z-scores added to its score.

Apart from the towers because it is what runs per candidate at query time (in torch here, on ONNX Runtime through
``onnx_head.py``), so its inference shortcuts — only position 0 of the last layer, a one-layer head's query share
computed once per query — live next to the layers they must match. ``DiPairModel`` inherits these methods
(``HeadMixin``); the head's modules are the model's own attributes, so their state-dict keys (``position.weight``,
``head.layers.0...``, ``score_out.weight``, ...) are those of every saved model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dipair_rerank.model.channels import COSINE, FIRST_STAGE, LEXICAL, channel_inputs
from dipair_rerank.model.config import DiPairConfig

if TYPE_CHECKING:
    from dipair_rerank.model.modeling import Prefix


class HeadMixin:
    """Scoring for ``DiPairModel`` (which provides ``config``, ``hidden_size`` and ``residual_rows``)."""

    def _build_head(self, config: DiPairConfig) -> None:
        """Create the head's modules, in the order (and so from the random numbers) every fresh model used."""
        slots = config.query_slots + config.doc_slots
        self.position = nn.Embedding(slots, config.proj_dim)
        self.segment = nn.Embedding(2, config.proj_dim)
        nn.init.normal_(self.position.weight, std=0.02)
        nn.init.normal_(self.segment.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            config.proj_dim,
            config.head_heads,
            config.head_ffn,
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.head = nn.TransformerEncoder(layer, config.head_layers, enable_nested_tensor=False)
        self.head_norm = nn.LayerNorm(config.proj_dim)
        self.score_out = nn.Linear(config.proj_dim, 1)
        nn.init.zeros_(self.score_out.weight)
        nn.init.zeros_(self.score_out.bias)
        self.similarity_scale = nn.Parameter(torch.tensor(1.0))
        self.channel_weights = nn.Parameter(torch.zeros(len(config.channels))) if config.channels else None

    def score_prefixes(
        self,
        q_vectors: torch.Tensor,
        q_mask: torch.Tensor,
        d_vectors: torch.Tensor,
        d_mask: torch.Tensor,
        query_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores [B] for query blocks against document blocks [B, n', d_p].

        ``q_vectors`` [Q, m', d_p] holds B aligned blocks (Q = B), one block shared by every document (Q = 1),
        or Q distinct queries with ``query_index`` [B] naming each document's query: re-ranking passes each
        query once, so what depends on the query alone is computed once, not once per candidate.
        """
        batch = d_vectors.shape[0]
        if query_index is None:
            query_index = torch.zeros(batch, dtype=torch.long) if q_vectors.shape[0] == 1 else torch.arange(batch)
        q_slots, d_slots = self.config.query_slots, self.config.doc_slots
        if self.residual_rows:  # the full-width pooled vectors ride in the blocks' last rows
            q_pooled = q_vectors[:, q_slots:].flatten(1)[:, : self.hidden_size][query_index]
            d_pooled = d_vectors[:, d_slots:].flatten(1)[:, : self.hidden_size].to(q_pooled.dtype)
            q_vectors, q_mask, d_vectors, d_mask = (q_vectors[:, :q_slots], q_mask[:, :q_slots],
                                                     d_vectors[:, :d_slots], d_mask[:, :d_slots])
        else:  # the projected pooled slots
            q_pooled = q_vectors[:, q_slots - 1][query_index]
            d_pooled = d_vectors[:, d_slots - 1].to(q_pooled.dtype)
        # position and segment embeddings summed first: one addition over the blocks, not two
        q_tokens = q_vectors + (self.position.weight[:q_slots] + self.segment.weight[0])
        d_tokens = d_vectors.to(q_vectors.dtype) + (self.position.weight[q_slots:] + self.segment.weight[1])
        if not self.training and len(self.head.layers) == 1:
            first = self._one_layer_head_first_token(q_tokens, ~q_mask, d_tokens, ~d_mask, query_index)
        else:
            tokens = torch.cat([q_tokens[query_index], d_tokens], dim=1)
            padding = ~torch.cat([q_mask[query_index], d_mask], dim=1)
            if self.training:
                first = self.head(tokens, src_key_padding_mask=padding)[:, 0]
            else:
                first = self._head_first_token(tokens, padding)
        scores = self.score_out(self.head_norm(first)).squeeze(-1)
        if self.config.similarity_residual:
            scores = scores + self.similarity_scale * F.cosine_similarity(q_pooled, d_pooled, dim=-1)
        return scores

    def channel_scores(self, z: torch.Tensor) -> torch.Tensor:
        """What the channels add to the head's scores: ``z`` [..., channels] per-query z-scores (0 where a
        channel is missing) weighted by the trained ``channel_weights``."""
        if self.channel_weights is None:
            return z.new_zeros(z.shape[:-1])
        return (z * self.channel_weights.to(z.dtype)).sum(-1)

    def pooled_cosines(self, q_pooled: torch.Tensor, owner: np.ndarray, d_vectors: torch.Tensor) -> np.ndarray:
        """Cosines [k] of the queries' full-width pooled vectors [Q, hidden] with the pooled vectors riding in
        document blocks [k, slots, d_p] (``owner``: each block's query): the cosine channel's raw values. In numpy
        on the calling thread: torch would hand an operation this size to its OpenMP pool, which spin-waits."""
        blocks = d_vectors.numpy() if isinstance(d_vectors, torch.Tensor) else d_vectors
        d_pooled = blocks[:, self.config.doc_slots:].reshape(len(blocks), -1)[:, : self.hidden_size]
        return np.einsum("kh,kh->k", d_pooled.astype(np.float32), q_pooled.numpy().astype(np.float32)[owner])

    def channel_z(self, counts: Sequence[int], queries: Prefix, d_vectors: torch.Tensor, *,
                  first_stage: np.ndarray | None = None, lexical: np.ndarray | None = None) -> np.ndarray | None:
        """The channels' per-query z-scores [k, channels] for k candidates grouped by query (``counts``): the
        first-stage scores and lexical dot products as given (None: missing), the cosine from the blocks."""
        channels = self.config.channels
        if not channels:
            return None
        cosine = None
        if COSINE in channels:
            cosine = self.pooled_cosines(queries.pooled, np.repeat(np.arange(len(counts)), counts), d_vectors)
        return channel_inputs(channels, counts, {FIRST_STAGE: first_stage, LEXICAL: lexical, COSINE: cosine})

    def _head_first_token(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """The head's output at position 0, computing only what position 0 needs in the last layer.

        Only position 0 is scored, so the last layer needs keys and values for every token but the query,
        attention output and feed-forward for position 0 alone: the same numbers as the full layer for about
        a sixth of its arithmetic (inference only; training runs the plain layers, with dropout).
        """
        layers = self.head.layers
        for layer in layers[:-1]:
            tokens = layer(tokens, src_key_padding_mask=padding)
        last = layers[-1]
        attention = last.self_attn
        batch, length, width = tokens.shape
        heads = attention.num_heads
        normed = last.norm1(tokens)
        weight, bias = attention.in_proj_weight, attention.in_proj_bias
        query = F.linear(normed[:, :1], weight[:width], bias[:width]).view(batch, 1, heads, -1).transpose(1, 2)
        keys, values = F.linear(normed, weight[width:], bias[width:]).view(batch, length, 2, heads, -1).unbind(2)
        attended = F.scaled_dot_product_attention(
            query, keys.transpose(1, 2), values.transpose(1, 2), attn_mask=~padding[:, None, None, :]
        )
        return self._finish_first_token(last, tokens[:, 0], attended.reshape(batch, width))

    def _one_layer_head_first_token(
        self, q_tokens: torch.Tensor, q_padding: torch.Tensor, d_tokens: torch.Tensor, d_padding: torch.Tensor,
        query_index: torch.Tensor,
    ) -> torch.Tensor:
        """``_head_first_token`` for a one-layer head, with the query's share computed once per query.

        In a single layer the query tokens see nothing of the document before attention, so position 0's
        attention query is fixed per query and can be folded into the key projection: a document token's logit
        is its normalised vector dotted with ``W_k^T q`` (one vector per head), and its value projection is
        applied after the attention-weighted sum of its tokens, not to each token. The query tokens' share of
        the softmax is summed once per query too (exponentials taken from the query's own largest logit, rescaled
        per candidate to the pair's largest), so per candidate only its own tokens are weighted. What is left per
        candidate is a few batched matrix products (``matmul``, which ONNX Runtime runs far faster than the
        equivalent ``einsum``), the output projection and the feed-forward at position 0, with the same numbers.
        """
        layer = self.head.layers[0]
        attention = layer.self_attn
        width, heads = q_tokens.shape[-1], attention.num_heads
        w_query, w_key, w_value = attention.in_proj_weight.view(3, heads, width // heads, width).unbind(0)
        b_query, b_key, b_value = attention.in_proj_bias.view(3, heads, width // heads).unbind(0)
        # once per query: position 0's folded key [Q, H, width], its logits over the query's own tokens, and the
        # value mix of those tokens, weighted by exponentials relative to the query's largest logit
        q_normed = layer.norm1(q_tokens)
        query = (torch.einsum("qw,hcw->qhc", q_normed[:, 0], w_query) + b_query) * (width // heads) ** -0.5
        folded_key = torch.einsum("qhc,hcw->qhw", query, w_key)
        key_bias = (query * b_key).sum(-1)  # [Q, H]
        q_logits = torch.matmul(folded_key, q_normed.transpose(1, 2)) + key_bias[:, :, None]  # [Q, H, m]
        q_logits = q_logits.masked_fill(q_padding[:, None, :], float("-inf"))
        q_top = q_logits.amax(-1)  # [Q, H]: position 0 is never padding, so finite
        q_exp = torch.exp(q_logits - q_top[..., None])
        q_values = torch.einsum("qmw,hcw->qhmc", q_normed, w_value) + b_value[:, None, :]  # [Q, H, m, c]
        q_mix, q_total = torch.matmul(q_exp.unsqueeze(-2), q_values).squeeze(-2), q_exp.sum(-1)  # [Q, H, c], [Q, H]
        # per candidate: its tokens' logits, the pair's largest logit, and the rescaled query share
        d_normed = layer.norm1(d_tokens)
        d_logits = torch.matmul(folded_key[query_index], d_normed.transpose(1, 2)) + key_bias[query_index, :, None]
        d_logits = d_logits.masked_fill(d_padding[:, None, :], float("-inf"))  # [B, H, n]
        pair_q_top = q_top[query_index]
        top = torch.maximum(pair_q_top, d_logits.amax(-1))  # [B, H]
        q_scale = torch.exp(pair_q_top - top)
        d_exp = torch.exp(d_logits - top[..., None])
        d_total = d_exp.sum(-1)
        d_values = torch.matmul(torch.matmul(d_exp, d_normed).transpose(0, 1), w_value.transpose(1, 2)).transpose(0, 1)
        mixed = q_mix[query_index] * q_scale[..., None] + d_values + d_total[..., None] * b_value
        attended = mixed / (q_total[query_index] * q_scale + d_total)[..., None]  # [B, H, c]
        return self._finish_first_token(layer, q_tokens[query_index, 0], attended.flatten(1))

    @staticmethod
    def _finish_first_token(layer: nn.TransformerEncoderLayer, first: torch.Tensor, attended: torch.Tensor
                            ) -> torch.Tensor:
        """Residual, output projection and feed-forward of a pre-norm layer at position 0."""
        first = first + layer.self_attn.out_proj(attended)
        return first + layer.linear2(layer.activation(layer.linear1(layer.norm2(first))))


__all__ = ["HeadMixin"]

"""DiPairModel: two encoder towers, kept prefixes projected to d_p, and a small transformer head.

The document branch (``encode_documents``) does not see the query, so its output is what the index caches.
Its vectors are rounded to fp16 inside the model (straight-through in training), which makes the fp16 cache
lossless: re-ranking from the cache gives the scores of re-ranking from raw text.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dipair_rerank.errors import DiPairError
from dipair_rerank.model.channels import COSINE, FIRST_STAGE, LEXICAL, channel_inputs, check_channels
from dipair_rerank.model.config import DEFAULT_ENCODER, DiPairConfig, resolve_encoder_path
from dipair_rerank.model.lexical import LexicalQueries, SpladeEncoder

if TYPE_CHECKING:
    from dipair_rerank.texts import RankedText

logger = logging.getLogger(__name__)

CONFIG_NAME = "dipair_config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
ENCODER_PREFIX = "encoders."
DOC_LAYER_PREFIX = "doc_top_layer."


_OPTIONAL_FIELDS = ("doc_tuned_layer", "full_width_residual", "query_skipped_layers", "channels")
"""Config fields left out of the fingerprint while off (false or empty): a model that does not use them keeps the
fingerprint, and so the caches, it had before they existed."""
LEXICAL_DIR = "lexical"


class Prefix(NamedTuple):
    """Kept, projected vectors of a batch of texts: ``vectors`` [B, slots, d_p], ``mask`` [B, slots] (True=real)."""

    vectors: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor  # [B, hidden] L2-normalised mean of all encoder outputs (the bi-encoder embedding)
    lexical: LexicalQueries | None = None  # the lexical channel's queries (models with that channel)


def _fp16_round(x: torch.Tensor) -> torch.Tensor:
    """Round to fp16 precision; gradients pass straight through."""
    return x + (x.to(torch.float16).to(x.dtype) - x).detach()


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def top_layer_at_prefix(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Outputs [B, min(keep, L), H] of a BERT layer at its first ``keep`` positions, from its input [B, L, H].

    Equal to the layer's full output sliced to those positions: keys and values come from every token, the
    attention query, output projection and feed-forward run at the kept positions only (a trained document top
    layer costs almost nothing at index time, and training never back-propagates through the other tokens).
    """
    attention = layer.attention.self
    batch, _, width = hidden.shape
    heads, size = attention.num_attention_heads, attention.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, heads, size).transpose(1, 2)

    kept = hidden[:, :keep]
    attended = F.scaled_dot_product_attention(
        split(attention.query(kept)), split(attention.key(hidden)), split(attention.value(hidden)),
        attn_mask=mask[:, None, None, :].bool(), dropout_p=attention.dropout.p if layer.training else 0.0)
    attended = layer.attention.output(attended.transpose(1, 2).reshape(batch, -1, width), kept)
    return layer.output(layer.intermediate(attended), attended)


def _build_encoder(config: DiPairConfig, *, pretrained: bool, stored_config: Path | None = None) -> nn.Module:
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading a 6-layer encoder is instant; the bar is noise
    if stored_config is not None:  # weights follow from a checkpoint
        return AutoModel.from_config(AutoConfig.from_pretrained(stored_config))
    if config.encoder_config is not None:
        values = dict(config.encoder_config)
        hf_config = AutoConfig.for_model(values.pop("model_type"), **values)
        return AutoModel.from_config(hf_config)
    path = resolve_encoder_path(config.encoder)
    try:
        if pretrained:
            return AutoModel.from_pretrained(path)
        return AutoModel.from_config(AutoConfig.from_pretrained(path))
    except (OSError, ValueError) as exc:
        raise DiPairError(f"cannot load encoder {config.encoder!r}: {str(exc).splitlines()[0]}") from exc


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise DiPairError(f"cannot load tokenizer from {path!r}: {str(exc).splitlines()[0]}") from exc


class DiPairModel(nn.Module):
    """Score (query, document) pairs from the first few encoder outputs of each.

    Args:
        config: the model's shape; see DiPairConfig.
        pretrained_encoder: load the encoder's pretrained weights (False when weights come from a checkpoint).
        tokenizer_path: where the tokenizer lives (default: the encoder's, or the packaged MiniLM's for
            encoders built from a config).
        stored_encoders: folder holding ``encoder_<i>/config.json`` to build the towers from (checkpoints).
        model_dir: the saved model's folder, where a relative ``lexical_model`` lives.
    """

    def __init__(
        self,
        config: DiPairConfig,
        *,
        pretrained_encoder: bool = True,
        tokenizer_path: str | None = None,
        stored_encoders: Path | None = None,
        model_dir: Path | None = None,
    ):
        super().__init__()
        check_channels(config.channels)
        if LEXICAL in config.channels and not config.lexical_model:
            raise DiPairError("the lexical channel needs lexical_model (a SPLADE model folder or HF id)")
        if COSINE in config.channels and not config.full_width_residual:
            raise DiPairError("the cosine channel reads the full-width pooled vectors: set full_width_residual")
        self.config = config
        if tokenizer_path is None:
            tokenizer_path = resolve_encoder_path(
                DEFAULT_ENCODER if config.encoder_config is not None else config.encoder
            )
        self.tokenizer = _load_tokenizer(tokenizer_path)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)  # random parts (head; encoders built from a config) are reproducible
        try:
            towers = config.towers
            self.encoders = nn.ModuleList(
                _build_encoder(
                    config,
                    pretrained=pretrained_encoder,
                    stored_config=None if stored_encoders is None else stored_encoders / f"encoder_{index}",
                )
                for index in range(towers)
            )
            if config.query_skipped_layers and stored_encoders is None:  # stored towers are saved already shallow
                self._skip_query_layers(config.query_skipped_layers)
            hidden = self.encoders[0].config.hidden_size
            self.hidden_size = hidden
            # rows of d_p after the head's rows that carry the normalised full-width pooled vector
            self.residual_rows = -(-hidden // config.proj_dim) if config.full_width_residual else 0
            # a copy of the frozen top layer, trained to make the kept document prefix (see top_layer_at_prefix)
            self.doc_top_layer = copy.deepcopy(self.doc_encoder.encoder.layer[-1]) if config.doc_tuned_layer else None
            self.query_projection = nn.Linear(hidden, config.proj_dim)
            self.doc_projection = nn.Linear(hidden, config.proj_dim)
            self._init_projections()
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
        finally:
            torch.random.set_rng_state(generator_state)
        self.lexical: SpladeEncoder | None = None  # not a submodule: its weights are not the head's to train
        if LEXICAL in config.channels:
            lexical = Path(config.lexical_model)
            if model_dir is not None and not lexical.is_absolute() and (model_dir / lexical).is_dir():
                lexical = model_dir / lexical
            self.lexical = SpladeEncoder(lexical if lexical.exists() else config.lexical_model,
                                         max_length=config.doc_max_length)
        self._fingerprint: str | None = None
        self.eval()

    def _skip_query_layers(self, skipped: Sequence[int]) -> None:
        layers = self.query_encoder.encoder.layer
        frozen = len(layers) - self.config.query_tuned_layers
        if self.config.towers < 2 or any(not 0 <= i < frozen for i in skipped):
            raise DiPairError(f"query_skipped_layers={list(skipped)} must name frozen layers (0..{frozen - 1}) of a "
                              "query tower with tuned top layers (query_tuned_layers > 0)")
        self.query_encoder.encoder.layer = nn.ModuleList(layer for i, layer in enumerate(layers) if i not in skipped)
        self.query_encoder.config.num_hidden_layers = len(self.query_encoder.encoder.layer)

    def _init_projections(self) -> None:
        """Both projections start as the same semi-orthogonal map, so cosines of pooled vectors survive it."""
        weight = torch.empty(self.config.proj_dim, self.hidden_size)
        nn.init.orthogonal_(weight)
        with torch.no_grad():
            for projection in (self.query_projection, self.doc_projection):
                projection.weight.copy_(weight)
                projection.bias.zero_()

    # ----- towers ---------------------------------------------------------------------------------------------
    @property
    def query_encoder(self) -> nn.Module:
        return self.encoders[0]

    @property
    def doc_encoder(self) -> nn.Module:
        return self.encoders[-1]

    def tokenize(self, texts: Sequence[str], *, max_length: int) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )

    def _encode(
        self, encoder: nn.Module, projection: nn.Linear, batch: dict[str, torch.Tensor], keep: int,
        top_layer: nn.Module | None = None,
    ) -> Prefix:
        attention = batch["attention_mask"]
        outputs = encoder(input_ids=batch["input_ids"], attention_mask=attention,
                          output_hidden_states=top_layer is not None)
        hidden = outputs.last_hidden_state
        if top_layer is None:
            prefix = hidden[:, :keep]
        else:  # the trained top layer reads the frozen top layer's input
            prefix = top_layer_at_prefix(top_layer, outputs.hidden_states[-2], attention, keep)
        mask = attention[:, :keep].bool()
        if prefix.shape[1] < keep:  # every text shorter than the prefix: pad to a fixed width
            pad = keep - prefix.shape[1]
            prefix = F.pad(prefix, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad), value=False)
        pooled = _masked_mean(hidden, attention)
        if self.config.pooled_slot:
            prefix = torch.cat([prefix, pooled.unsqueeze(1)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        normalised = F.normalize(pooled.float(), dim=-1)
        return Prefix(*self.with_residual_rows(projection(prefix.float()), mask, normalised), normalised)

    def with_residual_rows(self, vectors: torch.Tensor, mask: torch.Tensor, normalised_pooled: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks [B, slots, d_p] with the full-width pooled vectors appended as ``residual_rows`` more rows
        (``full_width_residual``; unchanged otherwise)."""
        if not self.residual_rows:
            return vectors, mask
        width = self.residual_rows * self.config.proj_dim
        rows = F.pad(normalised_pooled.to(vectors.dtype), (0, width - normalised_pooled.shape[-1]))
        rows = rows.view(-1, self.residual_rows, self.config.proj_dim)
        return torch.cat([vectors, rows], dim=1), torch.cat([mask, mask.new_ones(mask.shape[0], self.residual_rows)], 1)

    @property
    def query_block_slots(self) -> int:
        """Rows of one query block: the head's, plus the full-width pooled vector's."""
        return self.config.query_slots + self.residual_rows

    @property
    def doc_block_slots(self) -> int:
        """Rows of one cached document block: the head's, plus the full-width pooled vector's."""
        return self.config.doc_slots + self.residual_rows

    def encode_queries(self, batch: dict[str, torch.Tensor]) -> Prefix:
        return self._encode(self.query_encoder, self.query_projection, batch, self.config.query_prefix)

    def encode_documents(self, batch: dict[str, torch.Tensor]) -> Prefix:
        prefix = self._encode(self.doc_encoder, self.doc_projection, batch, self.config.doc_prefix, self.doc_top_layer)
        vectors = _fp16_round(prefix.vectors) * prefix.mask.unsqueeze(-1)
        return Prefix(vectors, prefix.mask, prefix.pooled)

    def document_blocks(self, vectors: np.ndarray, lengths: np.ndarray, *, widen: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Head inputs from stored document rows (a cache gather, or ``encode_documents`` for plain texts):
        float32 vectors [k, slots, d_p] (a copy: the cache reuses its buffer) and the mask of real slots (the
        first ``lengths`` prefix slots, plus the pooled slot and any residual rows). Without ``widen``, fp16
        rows stay fp16 and uncopied, for a head that widens them itself in the same call (``OnnxHead``)."""
        slots = np.arange(self.doc_block_slots)
        mask = (slots < lengths[:, None]) | (slots >= self.config.doc_prefix)
        if not widen and vectors.dtype == np.float16:
            return torch.from_numpy(vectors), torch.from_numpy(mask)
        # numpy converts on this thread: torch would fan a conversion this size out to its OpenMP workers, which
        # stall when another process holds a core (the gather took 5x longer with one core busy)
        return torch.from_numpy(vectors.astype(np.float32)), torch.from_numpy(mask)

    # ----- head -----------------------------------------------------------------------------------------------
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

    def encode_query_lexical(self, queries: Sequence[str]) -> LexicalQueries | None:
        """The lexical channel's queries, or None without that channel."""
        return None if self.lexical is None else self.lexical.query_states(queries)

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

    def forward(self, queries: Sequence[str], documents: Sequence[str]) -> torch.Tensor:
        """Scores [B] for aligned (query, document) pairs from raw text: the uncached reference path."""
        q = self.encode_queries(self.tokenize(queries, max_length=self.config.query_max_length))
        d = self.encode_documents(self.tokenize(documents, max_length=self.config.doc_max_length))
        return self.score_prefixes(q.vectors, q.mask, d.vectors, d.mask)

    def rank(self, query: str, texts: Sequence[str], k: int | None = None, *, batch_size: int = 32
             ) -> list[RankedText]:
        """Rank plain ``texts`` for ``query`` without an index, best first: the document branch runs here, in
        length-sorted batches, exactly as the indexer runs it (so scores equal an fp16 cache's)."""
        from dipair_rerank.texts import check_texts, lexical_dots, rank_texts, text_inputs

        texts = check_texts(texts)
        with torch.inference_mode():
            q = self.encode_queries(self.tokenize([query], max_length=self.config.query_max_length))
            d_vectors, d_mask, terms = text_inputs(self, texts, batch_size=batch_size)
            scores = self.score_prefixes(q.vectors, q.mask, d_vectors, d_mask)
            lexical = None if terms is None else lexical_dots(self.encode_query_lexical([query]), [len(texts)], terms)
            z = self.channel_z([len(texts)], q, d_vectors, lexical=lexical)
            if z is not None:
                scores = scores + self.channel_scores(torch.from_numpy(z))
        return rank_texts(texts, scores.tolist(), k)

    # ----- identity and storage -------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 of the config and every weight: the cache records it and refuses other models."""
        if self._fingerprint is None:
            # the lexical model enters by its weights' identity (below), not by where it was read from
            values = {k: v for k, v in self.config.to_dict().items()
                      if k != "lexical_model" and (k not in _OPTIONAL_FIELDS or v)}
            digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode())
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
            if self.lexical is not None:  # the documents' stored terms are its output
                digest.update(self.lexical.identity.encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def train(self, mode: bool = True) -> "DiPairModel":
        self._fingerprint = None  # weights may change
        return super().train(mode)

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything but the encoder layers: what stage 1 of training updates."""
        return [p for name, p in self.named_parameters() if not name.startswith((ENCODER_PREFIX, DOC_LAYER_PREFIX))]

    def tuned_layer_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the separately trained encoder layers: the query tower's top
        ``query_tuned_layers`` and the document's ``doc_top_layer``."""
        count = self.config.query_tuned_layers
        total = len(self.query_encoder.encoder.layer)
        if count > total:
            raise DiPairError(f"query_tuned_layers={count} but the encoder has {total} layers")
        prefixes = tuple(f"{ENCODER_PREFIX}0.encoder.layer.{i}." for i in range(total - max(count, 0), total))
        return prefixes + ((DOC_LAYER_PREFIX,) if self.doc_top_layer is not None else ())

    def tuned_encoder_parameters(self) -> list[nn.Parameter]:
        """The tuned encoder layers, trained beside the head at the encoder learning rate and saved as a delta.
        The document top layer's key and value projections stay frozen: they read every token of every
        candidate, so training them would back-propagate through all of them (most of a step's cost)."""
        prefixes = self.tuned_layer_prefixes()
        frozen = (f"{DOC_LAYER_PREFIX}attention.self.key.", f"{DOC_LAYER_PREFIX}attention.self.value.")
        return [p for name, p in self.named_parameters()
                if prefixes and name.startswith(prefixes) and not name.startswith(frozen)]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What training changes (head, projections, tuned layers): what checkpoints and a shipped model hold."""
        prefixes = self.tuned_layer_prefixes()
        return {name: tensor.detach().clone() for name, tensor in self.state_dict().items()
                if not name.startswith(ENCODER_PREFIX) or (prefixes and name.startswith(prefixes))}

    def save_pretrained(self, path: str | Path, *, save_encoder: bool = True) -> Path:
        """Write config JSON, tokenizer and safetensors weights. ``save_encoder=False`` stores only the head,
        projections and tuned layers (the rest of the encoder is re-read from ``config.encoder``): small
        enough to ship. The tuned layers are stored in fp16 (half the delta) and the model is rounded to match,
        so the saved and the in-memory model are the same model."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.lexical is not None:  # stored inside the model, in fp16; reloaded so saved = in memory
            self.lexical.save_pretrained(path / LEXICAL_DIR)
            self.lexical = SpladeEncoder(path / LEXICAL_DIR, max_length=self.lexical.max_length)
            self.config.lexical_model = LEXICAL_DIR
            self._fingerprint = None
        self.config.save(path / CONFIG_NAME)
        self.tokenizer.save_pretrained(path / TOKENIZER_DIR)
        if save_encoder:
            state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        else:
            delta = self.tuned_layer_prefixes()
            with torch.no_grad():
                for name, param in self.named_parameters():
                    if delta and name.startswith(delta):
                        param.copy_(param.to(torch.float16).to(param.dtype))
            self._fingerprint = None
            state = {name: (tensor.to(torch.float16) if delta and name.startswith(delta) else tensor).contiguous()
                     for name, tensor in self.trainable_state().items()}
        if save_encoder:
            for index, encoder in enumerate(self.encoders):
                encoder.config.save_pretrained(path / f"encoder_{index}")
        save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt", "fingerprint": self.fingerprint()})
        return path

    @classmethod
    def from_pretrained(cls, name: str | Path | None = None) -> "DiPairModel":
        """A model by the names ``--model`` takes: None or "default" (the shipped model), a folder written by
        ``save_pretrained``, or a Hugging Face encoder id/path (a fresh, seeded head on it).

            DiPairModel.from_pretrained().rank("what is a qubit", texts)   # [RankedText(index, score, text)]
        """
        from dipair_rerank.model.default import load_model

        return load_model(name)

    @classmethod
    def from_folder(cls, path: str | Path) -> "DiPairModel":
        """Load a folder written by ``save_pretrained`` (never unpickles: JSON + safetensors only)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise DiPairError(f"{path} is not a DiPair model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        config = DiPairConfig.load(path / CONFIG_NAME)
        with safe_open(str(path / WEIGHTS_NAME), framework="pt") as handle:
            has_encoder = any(key.startswith(ENCODER_PREFIX) and ".embeddings." in key for key in handle.keys())
        tokenizer = path / TOKENIZER_DIR
        model = cls(
            config,
            pretrained_encoder=not has_encoder,
            tokenizer_path=str(tokenizer) if tokenizer.is_dir() else None,
            stored_encoders=path if has_encoder else None,
            model_dir=path,
        )
        state = load_file(str(path / WEIGHTS_NAME))  # fp16 tuned layers are cast by load_state_dict
        missing, unexpected = model.load_state_dict(state, strict=False)
        delta = model.tuned_layer_prefixes()
        missing = [name for name in missing
                   if has_encoder or not name.startswith(ENCODER_PREFIX) or (delta and name.startswith(delta))]
        if missing or unexpected:
            raise DiPairError(f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        model.eval()
        return model

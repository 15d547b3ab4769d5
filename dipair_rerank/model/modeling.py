"""DiPairModel: two encoder towers, kept prefixes projected to d_p, and a small transformer head.

The document branch (``encode_documents``) does not see the query, so its output is what the index caches.
Its vectors are rounded to fp16 inside the model (straight-through in training), which makes the fp16 cache
lossless: re-ranking from the cache gives the scores of re-ranking from raw text.

This module holds the towers and the blocks they make; the head's scoring is ``head.py`` and the fingerprint,
saving and loading are ``persistence.py`` (both inherited by ``DiPairModel``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dipair_rerank.errors import DiPairError
from dipair_rerank.model.channels import COSINE, LEXICAL, check_channels
from dipair_rerank.model.config import DEFAULT_ENCODER, DiPairConfig, resolve_encoder_path
from dipair_rerank.model.head import HeadMixin
from dipair_rerank.model.lexical import LexicalQueries, SpladeEncoder, lexical_dots
from dipair_rerank.model.persistence import (  # noqa: F401  (re-exported: callers import these names from here)
    _OPTIONAL_FIELDS,
    CONFIG_NAME,
    DOC_LAYER_PREFIX,
    ENCODER_PREFIX,
    LEXICAL_DIR,
    TOKENIZER_DIR,
    WEIGHTS_NAME,
    PersistenceMixin,
)
from dipair_rerank.texts import RankedText, check_texts, rank_texts, text_inputs

logger = logging.getLogger(__name__)


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


class DiPairModel(HeadMixin, PersistenceMixin, nn.Module):
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
            self._build_head(config)  # position, segment, head, head_norm, score_out, similarity_scale, channels
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

    def encode_query_lexical(self, queries: Sequence[str]) -> LexicalQueries | None:
        """The lexical channel's queries, or None without that channel."""
        return None if self.lexical is None else self.lexical.query_states(queries)

    def forward(self, queries: Sequence[str], documents: Sequence[str]) -> torch.Tensor:
        """Scores [B] for aligned (query, document) pairs from raw text: the uncached reference path."""
        q = self.encode_queries(self.tokenize(queries, max_length=self.config.query_max_length))
        d = self.encode_documents(self.tokenize(documents, max_length=self.config.doc_max_length))
        return self.score_prefixes(q.vectors, q.mask, d.vectors, d.mask)

    def rank(self, query: str, texts: Sequence[str], k: int | None = None, *, batch_size: int = 32
             ) -> list[RankedText]:
        """Rank plain ``texts`` for ``query`` without an index, best first: the document branch runs here, in
        length-sorted batches, exactly as the indexer runs it (so scores equal an fp16 cache's)."""
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

    # ----- what training updates ------------------------------------------------------------------------------
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

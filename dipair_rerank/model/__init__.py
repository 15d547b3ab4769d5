"""The DiPair model: config, encoders + projections + head, save/load, and the default model."""

from dipair_rerank.model.config import DEFAULT_ENCODER, DiPairConfig, tiny_encoder_config
from dipair_rerank.model.default import DEFAULT_MODEL, load_model
from dipair_rerank.model.modeling import DiPairModel, Prefix

__all__ = ["DEFAULT_ENCODER", "DEFAULT_MODEL", "DiPairConfig", "DiPairModel", "Prefix", "load_model", "tiny_encoder_config"]

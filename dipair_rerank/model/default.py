"""Resolve a ``--model`` argument: the shipped default, a saved DiPair folder, or an HF encoder id/path."""

from __future__ import annotations

from pathlib import Path

from dipair_rerank.errors import DiPairError
from dipair_rerank.model.config import DiPairConfig
from dipair_rerank.model.modeling import CONFIG_NAME, DiPairModel

DEFAULT_MODEL = "default"
SHIPPED_DIR = Path(__file__).parent / "shipped"
"""Where a trained default model (head + projections, encoder read from the packaged MiniLM) is shipped."""


def load_model(name: str | Path | None = None) -> DiPairModel:
    """``None``/"default": the shipped model if present, else a fresh DiPair head (seeded) on the packaged
    MiniLM; a folder with ``dipair_config.json``: that model; anything else: a fresh head on that HF encoder."""
    if name is None or str(name) == DEFAULT_MODEL:
        if (SHIPPED_DIR / CONFIG_NAME).is_file():
            return DiPairModel.from_pretrained(SHIPPED_DIR)
        return DiPairModel(DiPairConfig())
    path = Path(name)
    if (path / CONFIG_NAME).is_file():
        return DiPairModel.from_pretrained(path)
    if path.exists() and not (path / "config.json").is_file():
        raise DiPairError(f"{path} is neither a DiPair model folder nor a Hugging Face model folder")
    return DiPairModel(DiPairConfig(encoder=str(name)))

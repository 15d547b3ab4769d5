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
            return _load_saved(SHIPPED_DIR)
        return DiPairModel(DiPairConfig())
    path = Path(name)
    if (path / CONFIG_NAME).is_file():
        return _load_saved(path)
    if path.exists() and not (path / "config.json").is_file():
        raise DiPairError(f"{path} is neither a DiPair model folder nor a Hugging Face model folder")
    if not path.exists() and _looks_like_path(str(name)):
        raise DiPairError(f"model folder not found: {name}")
    try:
        return DiPairModel(DiPairConfig(encoder=str(name)))
    except DiPairError as exc:
        if path.exists():
            raise
        raise DiPairError(f"model {str(name)!r} is not a folder here, nor a Hugging Face model that can be loaded "
                          f"({exc})") from exc


def _looks_like_path(name: str) -> bool:
    """Hugging Face ids are ``name`` or ``org/name``; anything else that does not exist is a mistyped folder."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") >= 2 or "\\" in name


def _load_saved(path: Path) -> DiPairModel:
    """A saved DiPair folder; a damaged one (bad JSON, truncated safetensors, mismatched shapes) fails in one line."""
    try:
        return DiPairModel.from_folder(path)
    except DiPairError:
        raise
    except Exception as exc:  # json, safetensors and torch each raise their own types
        first = (str(exc).splitlines() or [""])[0][:200]
        raise DiPairError(f"{path}: damaged DiPair model folder ({type(exc).__name__}: {first})") from exc

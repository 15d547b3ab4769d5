"""``load_model``: the model a ``--model`` argument names, as a plain function (the CLI's and the API's entry point).

The resolution itself (shipped default, saved folder, Hugging Face encoder) is ``DiPairModel.from_pretrained``
(``persistence.py``), so that the class method and this function cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

from dipair_rerank.model.modeling import DiPairModel
from dipair_rerank.model.persistence import DEFAULT_MODEL, SHIPPED_DIR


def load_model(name: str | Path | None = None) -> DiPairModel:
    """``None``/"default": the shipped model if present, else a fresh DiPair head (seeded) on the packaged
    MiniLM; a folder with ``dipair_config.json``: that model; anything else: a fresh head on that HF encoder."""
    return DiPairModel.from_pretrained(name)


__all__ = ["DEFAULT_MODEL", "SHIPPED_DIR", "load_model"]

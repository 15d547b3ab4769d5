"""A DiPair model's identity and storage: its fingerprint, the saved folder, and loading by the names ``--model`` takes.

Apart from the network so that the on-disk contract (file names, state-dict prefixes, which config fields enter the
fingerprint) sits in one place: every index records the fingerprint and refuses another model, so a change here
invalidates caches, and a change to the network's code must not change it by accident. ``DiPairModel`` inherits
these methods (``PersistenceMixin``); the state dict's keys are the model's own attribute names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Self

import torch

from dipair_rerank.errors import DiPairError
from dipair_rerank.model.config import DiPairConfig
from dipair_rerank.model.lexical import SpladeEncoder

CONFIG_NAME = "dipair_config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
LEXICAL_DIR = "lexical"
ENCODER_PREFIX = "encoders."
"""State-dict prefix of the encoder towers (the frozen part: re-read from ``config.encoder`` unless saved)."""
DOC_LAYER_PREFIX = "doc_top_layer."
"""State-dict prefix of the trained copy of the document tower's top layer (``doc_tuned_layer``)."""

_OPTIONAL_FIELDS = ("doc_tuned_layer", "full_width_residual", "query_skipped_layers", "channels")
"""Config fields left out of the fingerprint while off (false or empty): a model that does not use them keeps the
fingerprint, and so the caches, it had before they existed."""

DEFAULT_MODEL = "default"
SHIPPED_DIR = Path(__file__).parent / "shipped"
"""Where a trained default model (head + projections, encoder read from the packaged MiniLM) is shipped."""


class PersistenceMixin:
    """Fingerprint, ``save_pretrained`` and the loaders of ``DiPairModel`` (which provides ``config``,
    ``tokenizer``, ``lexical``, ``encoders``, ``tuned_layer_prefixes`` and ``trainable_state``)."""

    _fingerprint: str | None

    def fingerprint(self) -> str:
        """sha256 of the config and every weight: the cache records it and refuses other models."""
        if self._fingerprint is None:
            # the lexical model enters by its weights' identity (below), not by where it was read from
            values = {k: v for k, v in self.config.to_dict().items()
                      if k != "lexical_model" and (k not in _OPTIONAL_FIELDS or v)}
            digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode())
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().contiguous().cpu().numpy())  # its buffer: no copy
            if self.lexical is not None:  # the documents' stored terms are its output
                digest.update(self.lexical.identity.encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def train(self, mode: bool = True) -> Self:
        if mode or self.training:  # weights may change in training; eval() of an eval model keeps the hash
            self._fingerprint = None
        return super().train(mode)

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
    def from_pretrained(cls, name: str | Path | None = None) -> Self:
        """A model by the names ``--model`` takes: None or "default" (the shipped model if present, else a fresh,
        seeded head on the packaged MiniLM), a folder written by ``save_pretrained``, or a Hugging Face encoder
        id/path (a fresh, seeded head on it).

            DiPairModel.from_pretrained().rank("what is a qubit", texts)   # [RankedText(index, score, text)]
        """
        if name is None or str(name) == DEFAULT_MODEL:
            if (SHIPPED_DIR / CONFIG_NAME).is_file():
                return cls._load_saved(SHIPPED_DIR)
            return cls(DiPairConfig())
        path = Path(name)
        if (path / CONFIG_NAME).is_file():
            return cls._load_saved(path)
        if path.exists() and not (path / "config.json").is_file():
            raise DiPairError(f"{path} is neither a DiPair model folder nor a Hugging Face model folder")
        if not path.exists() and _looks_like_path(str(name)):
            raise DiPairError(f"model folder not found: {name}")
        try:
            return cls(DiPairConfig(encoder=str(name)))
        except DiPairError as exc:
            if path.exists():
                raise
            raise DiPairError(f"model {str(name)!r} is not a folder here, nor a Hugging Face model that can be loaded "
                              f"({exc})") from exc

    @classmethod
    def _load_saved(cls, path: Path) -> Self:
        """A saved DiPair folder; a damaged one (bad JSON, truncated safetensors, mismatched shapes) fails in one
        line."""
        try:
            return cls.from_folder(path)
        except DiPairError:
            raise
        except Exception as exc:  # json, safetensors and torch each raise their own types
            first = (str(exc).splitlines() or [""])[0][:200]
            raise DiPairError(f"{path}: damaged DiPair model folder ({type(exc).__name__}: {first})") from exc

    @classmethod
    def from_folder(cls, path: str | Path) -> Self:
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


def _looks_like_path(name: str) -> bool:
    """Hugging Face ids are ``name`` or ``org/name``; anything else that does not exist is a mistyped folder."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") >= 2 or "\\" in name


__all__ = ["CONFIG_NAME", "DEFAULT_MODEL", "DOC_LAYER_PREFIX", "ENCODER_PREFIX", "LEXICAL_DIR", "SHIPPED_DIR",
           "TOKENIZER_DIR", "WEIGHTS_NAME", "PersistenceMixin"]

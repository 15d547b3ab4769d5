"""The lexical channel's query side on ONNX Runtime: a query's token states before the vocabulary projection.

Why: SPLADE-tiny's encoder is two 128-wide layers, microseconds of arithmetic for a ~10-token query, which eager
PyTorch wraps in a millisecond of per-op dispatch; the traced graph runs on one ONNX Runtime thread. The
vocabulary projection is left to ``LexicalQueries``, for the candidates' terms only. Exported once per lexical
model (keyed by its weights' identity) into ``$DIPAIR_CACHE``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dipair_rerank.model.lexical import LexicalQueries, SpladeEncoder
from dipair_rerank.model.onnx_query import _eager_attention, cache_dir, export_graph, inference_session
from dipair_rerank.model.tokens import padded_batch, query_token_ids


class _QueryStates(torch.nn.Module):
    """The MLM head's input transform over the encoder's outputs: [batch, tokens, hidden]."""

    def __init__(self, encoder: SpladeEncoder):
        super().__init__()
        self.encoder = encoder.model.base_model
        self.transform = encoder.model.cls.predictions.transform

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.transform(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state)


class _Projection(torch.nn.Module):
    """``numpy_projection`` as a graph: the vocabulary projection of the asked terms, max over real tokens."""

    def __init__(self, encoder: SpladeEncoder):
        super().__init__()
        weight, bias = encoder.vocabulary_projection
        self.register_buffer("weight", torch.from_numpy(weight))
        self.register_buffer("bias", torch.from_numpy(bias))

    def forward(self, states: torch.Tensor, mask: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
        logits = torch.matmul(states, self.weight[terms].t()) + self.bias[terms]
        logits = logits.masked_fill(mask.unsqueeze(-1) == 0, -1e4)
        return torch.log1p(torch.relu(logits.amax(1)))


def _graph(name: str, module: torch.nn.Module, example: tuple[torch.Tensor, ...], inputs: list[str],
           dynamic_axes: dict[str, dict[int, str]]):
    path = cache_dir() / name
    if not path.is_file():
        export_graph(module, example, path, inputs=inputs, outputs=["out"], dynamic_axes=dynamic_axes)
    return path


class OnnxLexicalQuery:
    """``encoder.query_states`` on one ONNX Runtime thread, and their projection likewise (equal to 1e-5)."""

    def __init__(self, encoder: SpladeEncoder, *, threads: int = 1):
        self.encoder = encoder
        tokens = {0: "batch", 1: "length"}
        example = (torch.ones(2, 6, dtype=torch.long), torch.ones(2, 6, dtype=torch.long))
        with _eager_attention(encoder.model):
            states = _graph(f"lexical-states-{encoder.identity}.onnx", _QueryStates(encoder), example,
                            ["input_ids", "attention_mask"], {"input_ids": tokens, "attention_mask": tokens,
                                                              "out": tokens})
        hidden = encoder.model.config.hidden_size
        example = (torch.zeros(2, 6, hidden), torch.ones(2, 6, dtype=torch.long), torch.arange(5))
        projection = _graph(f"lexical-projection-{encoder.identity}.onnx", _Projection(encoder), example,
                            ["states", "mask", "terms"], {"states": tokens, "mask": tokens, "terms": {0: "terms"},
                                                          "out": {0: "batch", 1: "terms"}})
        self.states = inference_session(states, threads)
        self.projection = inference_session(projection, threads)
        self._token_ids = query_token_ids(encoder.tokenizer, encoder.max_length)
        self._pad_id = encoder.tokenizer.pad_token_id or 0

    def _project(self, states: np.ndarray, mask: np.ndarray, terms: np.ndarray) -> np.ndarray:
        return self.projection.run(None, {"states": states, "mask": mask.astype(np.int64), "terms": terms})[0]

    def __call__(self, queries: Sequence[str]) -> LexicalQueries:
        batch = padded_batch(self._token_ids(list(queries)), self._pad_id)
        feed = {name: tensor.numpy() for name, tensor in batch.items()}
        return LexicalQueries(self.states.run(None, feed)[0], feed["attention_mask"], self._project)


__all__ = ["OnnxLexicalQuery"]

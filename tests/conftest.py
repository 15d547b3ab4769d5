"""Shared fixtures: tiny random DiPair models, a tiny corpus and index, and the shared data folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DIPAIR_CACHE", tempfile.mkdtemp(prefix="dipair-cache-"))

import pytest

from dipair_rerank.data.paths import shared_data_dir

TINY_DOCS = [
    ("d1", "The cat sat on the mat while the dog slept."),
    ("d2", "Quantum computers use qubits that can be in superposition."),
    ("d3", "Cats and dogs are the most common household pets."),
    ("d4", "The stock market fell sharply after the interest rate decision."),
    ("d5", "Photosynthesis converts light energy into chemical energy in plants."),
    ("d6", "A qubit is the basic unit of quantum information."),
    ("d7", "Central banks raise interest rates to fight inflation."),
    ("d8", "Plants need sunlight, water and carbon dioxide to grow."),
    ("d9", "Dogs were domesticated from wolves thousands of years ago."),
    ("d10", "Inflation measures how fast prices rise across the economy."),
    ("d11", "Entanglement links the states of two quantum particles."),
    ("d12", "Chlorophyll gives leaves their green colour."),
]
TINY_TOPICS = {"q1": "quantum qubits", "q2": "pet cats and dogs", "q3": "interest rates inflation", "q4": "plants light"}
TINY_QRELS = {"q1": {"d2": 1, "d6": 2}, "q2": {"d1": 1, "d3": 2}, "q3": {"d7": 2, "d10": 1}, "q4": {"d5": 2, "d8": 1}}


def tiny_config(**overrides):
    from dipair_rerank.model import DiPairConfig, tiny_encoder_config

    values = dict(encoder_config=tiny_encoder_config(), query_prefix=4, doc_prefix=6, proj_dim=16, head_ffn=32,
                  head_heads=2, query_max_length=16, doc_max_length=32)
    values.update(overrides)
    return DiPairConfig(**values)


@pytest.fixture(scope="session")
def tiny_model():
    from dipair_rerank.model import DiPairModel

    return DiPairModel(tiny_config())


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tmp_path_factory) -> Path:
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("models") / "tiny")


def write_jsonl(path: Path, docs) -> Path:
    path.write_text("".join(json.dumps({"id": d, "contents": t}) + "\n" for d, t in docs))
    return path


def write_topics(path: Path, topics: dict[str, str]) -> Path:
    path.write_text("".join(f"{qid}\t{text}\n" for qid, text in topics.items()))
    return path


def write_qrels(path: Path, qrels: dict[str, dict[str, int]]) -> Path:
    path.write_text("".join(f"{q} 0 {d} {r}\n" for q, docs in qrels.items() for d, r in docs.items()))
    return path


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "corpus": write_jsonl(root / "corpus.jsonl", TINY_DOCS),
        "topics": write_topics(root / "topics.tsv", TINY_TOPICS),
        "qrels": write_qrels(root / "qrels.txt", TINY_QRELS),
    }


@pytest.fixture(scope="session")
def tiny_splade(tmp_path_factory) -> Path:
    """A random 2-layer BERT MLM over the packaged MiniLM vocabulary, saved as a model folder (a SPLADE stand-in)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from dipair_rerank.model.config import DEFAULT_ENCODER, resolve_encoder_path

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("splade") / "tiny"
    BertForMaskedLM(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_encoder_path(DEFAULT_ENCODER)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_index(tiny_model, tiny_model_dir, tiny_files, tmp_path_factory) -> Path:
    """A complete index (Lucene + FAISS + cache in 3 shards) of the tiny corpus with the tiny model."""
    from dipair_rerank.indexer import IndexOptions, build_index

    index_dir = tmp_path_factory.mktemp("indexes") / "tiny"
    build_index(tiny_files["corpus"], index_dir, model=tiny_model_dir,
                options=IndexOptions(dense=True, shard_rows=5, batch_size=4, threads=1, progress=False))
    return index_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir().resolve()
    if not (root / "cranfield" / "corpus.jsonl").is_file():
        pytest.skip(f"shared data not found at {root} (set DIPAIR_DATA to its folder)")
    return root


def pyserini_index(corpus_dir: Path, target: Path, *flags: str) -> Path:
    """A Lucene index built the way a Pyserini user builds one (``python -m pyserini.index.lucene``), in-process."""
    from dipair_rerank._java import run_module

    run_module("pyserini.index.lucene", ["--collection", "JsonCollection", "--input", str(corpus_dir.resolve()),
                                         "--index", str(target.resolve()), "--threads", "1", *flags])
    return target


@pytest.fixture(scope="session")
def tiny_lucene(tmp_path_factory) -> Path:
    """The tiny corpus indexed by Pyserini itself with ``--storeRaw`` (for ``index --from-lucene``)."""
    root = tmp_path_factory.mktemp("lucene")
    (root / "input").mkdir()
    write_jsonl(root / "input" / "corpus.jsonl", TINY_DOCS)
    return pyserini_index(root / "input", root / "tiny", "--storeRaw")

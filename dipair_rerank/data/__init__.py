"""Corpora, topics, qrels and runs: local files or ``irds:<id>`` ir_datasets ids; document sources for indexing."""

from dipair_rerank.data.corpus import Document, corpus_fingerprint, read_corpus
from dipair_rerank.data.lucene import LuceneSource
from dipair_rerank.data.paths import shared_data_dir
from dipair_rerank.data.runs import Run, read_run, write_run
from dipair_rerank.data.sources import CorpusSource, DocumentSource
from dipair_rerank.data.topics import read_qrels, read_topics

__all__ = [
    "CorpusSource",
    "Document",
    "DocumentSource",
    "LuceneSource",
    "Run",
    "corpus_fingerprint",
    "read_corpus",
    "read_qrels",
    "read_run",
    "read_topics",
    "shared_data_dir",
    "write_run",
]

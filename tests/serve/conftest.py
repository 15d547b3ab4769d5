"""A service over the tiny index (tiny random model), with small limits so that bad requests are cheap to make."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="serve tests need the [serve] extra (pip install -e '.[serve]')")

MAX_DOCUMENTS = 8
MAX_DOCUMENT_CHARS = 500
MAX_BODY_BYTES = 64 * 1024


@pytest.fixture(scope="session")
def service(tiny_index):
    from dipair_rerank.serve.service import RerankService, ServeOptions

    return RerankService.from_options(ServeOptions(
        index=str(tiny_index), threads=1, max_documents=MAX_DOCUMENTS, max_document_chars=MAX_DOCUMENT_CHARS,
        max_body_bytes=MAX_BODY_BYTES))


@pytest.fixture()
def client(service):
    from fastapi.testclient import TestClient

    from dipair_rerank.serve.app import create_app

    with TestClient(create_app(service)) as test_client:  # runs the lifespan: the batch worker starts and stops
        yield test_client


# ----- a second build over the same docids, for reloads -------------------------------------------------------------
TINY_INDEX_OPTIONS = {"shard_rows": 5, "batch_size": 4, "threads": 1, "progress": False}


def rotated_docs():
    """The tiny corpus's docids, each holding another document's text: same ids, other scores (and BM25 hits)."""
    from tests.conftest import TINY_DOCS

    return [(docid, TINY_DOCS[(i + 5) % len(TINY_DOCS)][1]) for i, (docid, _) in enumerate(TINY_DOCS)]


@pytest.fixture(scope="session")
def rotated_corpus(tmp_path_factory):
    from tests.conftest import write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("rotated") / "corpus.jsonl", rotated_docs())


@pytest.fixture(scope="session")
def index_b(tiny_model_dir, rotated_corpus, tmp_path_factory):
    """Build B: the rotated corpus with the tiny model (no dense index)."""
    from dipair_rerank.indexer import IndexOptions, build_index

    folder = tmp_path_factory.mktemp("indexes-b") / "b"
    build_index(rotated_corpus, folder, model=tiny_model_dir, options=IndexOptions(**TINY_INDEX_OPTIONS))
    return folder


@pytest.fixture()
def served_index(tiny_index, tmp_path):
    """A copy of the tiny index (build A) that a test may publish other builds into."""
    import shutil

    target = tmp_path / "indexes" / "served"
    shutil.copytree(tiny_index, target, symlinks=True)
    return target


def publish(corpus, index_dir, model_dir):
    """``dipair-rerank index``'s own build and publish (rename) into ``index_dir``."""
    from dipair_rerank.indexer import IndexOptions, build_index

    build_index(corpus, index_dir, model=model_dir, options=IndexOptions(**TINY_INDEX_OPTIONS))


def flip_a_byte(index_dir):
    """Damage the cache the way a bad disk or copy would: one byte of a shard's vectors, its size unchanged."""
    path = index_dir / "dipair" / "shard-00000.vectors.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


# ----- requests whose answers tell builds apart ---------------------------------------------------------------------
RERANKS = [
    {"query": "quantum qubits", "docids": ["d2", "d6", "d11", "d1"]},
    {"query": "pet cats and dogs", "docids": ["d1", "d3", "d9", "d5", "d12"]},
    {"query": "interest rates inflation", "docids": ["d7", "d10", "d4"]},
    {"query": "plants light", "docids": ["d5", "d8", "d12", "d2", "d3", "d4"]},
]
SEARCHES = [
    {"query": "quantum qubits plants", "k": 12, "depth": 12},
    {"query": "cats dogs interest", "k": 12, "depth": 12},
]
REQUESTS = [("/rerank", body) for body in RERANKS] + [("/search", body) for body in SEARCHES]
TOLERANCE = 1e-4  # in-process and served scores of one build agree to ~1e-6 (thread counts, batch shapes)


def answer_scores(path, answer):
    """What a build decides in an answer: the scores in candidate order (/rerank), docid -> score (/search)."""
    if path == "/rerank":
        return [result["relevance_score"] for result in sorted(answer["results"], key=lambda r: r["index"])]
    return {hit["docid"]: hit["relevance_score"] for hit in answer["results"]}


def same_scores(a, b, tolerance=TOLERANCE) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and same_scores([a[k] for k in sorted(a)], [b[k] for k in sorted(a)], tolerance)
    return len(a) == len(b) and all(abs(x - y) <= tolerance * (1 + abs(y)) for x, y in zip(a, b))


def answers_from(client, requests=REQUESTS):
    """Each of ``requests`` answered by ``client`` (a TestClient or a live one), as ``answer_scores``."""
    answers = []
    for path, body in requests:
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        answers.append(answer_scores(path, response.json()))
    return answers


def expected_answers(service, requests=REQUESTS):
    """Each of ``requests`` answered in-process by ``service`` (its own app; the service is left running)."""
    from fastapi.testclient import TestClient

    from dipair_rerank.serve.app import create_app

    with TestClient(create_app(service)) as client:
        return answers_from(client, requests)


@pytest.fixture(scope="session")
def answers_a(tiny_index):
    from dipair_rerank.serve.service import RerankService, ServeOptions

    return expected_answers(RerankService.from_options(ServeOptions(index=str(tiny_index), threads=1)))


@pytest.fixture(scope="session")
def answers_b(index_b, answers_a):
    from dipair_rerank.serve.service import RerankService, ServeOptions

    answers = expected_answers(RerankService.from_options(ServeOptions(index=str(index_b), threads=1)))
    for a, b in zip(answers_a, answers):  # every request tells the builds apart
        assert not same_scores(a, b, 1e-2)
    return answers

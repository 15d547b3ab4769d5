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

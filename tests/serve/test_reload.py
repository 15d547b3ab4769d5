"""Reloading the index in place (in-process: the app under FastAPI's TestClient): a build published into the folder
is not served until a reload; a reload swaps whole builds; a damaged, missing or half-published build is refused and
the loaded one kept."""

from __future__ import annotations

import logging
import os

import pytest

from tests.conftest import TINY_DOCS, write_jsonl
from tests.serve.conftest import answers_from, flip_a_byte, publish, same_scores


def _all_same(answers, expected) -> bool:
    return all(same_scores(a, e) for a, e in zip(answers, expected))


def test_identity_names_the_build_and_changes_when_one_is_published(served_index, rotated_corpus, tiny_model_dir):
    from dipair_rerank.errors import DiPairError
    from dipair_rerank.index_layout import IndexLayout

    layout = IndexLayout(served_index)
    before = layout.identity()
    assert before == layout.identity() and len(before.build) == 16 and before.published.endswith("+00:00")
    publish(rotated_corpus, served_index, tiny_model_dir)
    after = layout.identity()
    assert after.build != before.build and after.folder != before.folder
    with pytest.raises(DiPairError, match="no index at"):
        IndexLayout(served_index.parent / "nothing-here").identity()


def test_a_published_build_is_served_only_after_a_reload_and_a_damaged_one_never(
        served_index, rotated_corpus, tiny_model_dir, tiny_files, answers_a, answers_b, caplog):
    from fastapi.testclient import TestClient

    from dipair_rerank.index_layout import IndexLayout
    from dipair_rerank.serve.app import create_app
    from dipair_rerank.serve.service import RerankService, ServeOptions

    caplog.set_level(logging.INFO, logger="dipair_rerank.serve.events")
    first = RerankService.from_options(ServeOptions(index=str(served_index), threads=1))
    build_a = IndexLayout(served_index).identity().build
    with TestClient(create_app(first)) as client:
        health = client.get("/health").json()
        assert health["index_build"] == build_a and health["index_published"]
        assert _all_same(answers_from(client), answers_a)
        unchanged = client.post("/admin/reload")
        assert unchanged.status_code == 200 and unchanged.json()["status"] == "unchanged"

        # B published into the folder (renamed in, the old folder deleted): the service still answers from A,
        # Lucene included (/search), from the files it holds open
        publish(rotated_corpus, served_index, tiny_model_dir)
        build_b = IndexLayout(served_index).identity().build
        assert not (served_index.parent / f".{served_index.name}.old").exists()
        assert _all_same(answers_from(client), answers_a)

        reloaded = client.post("/admin/reload")
        assert reloaded.status_code == 200, reloaded.text
        body = reloaded.json()
        assert body["status"] == "reloaded" and body["index_build"] == build_b and body["pid"] == os.getpid()
        assert f"build {build_a} -> {build_b}" in body["message"]
        assert _all_same(answers_from(client), answers_b)
        assert client.get("/health").json()["index_build"] == build_b
        assert not first.batcher.running  # the old service was stopped and closed

        # a damaged build (one byte of a shard): refused, B kept
        corpus_a = write_jsonl(served_index.parent / "corpus-a.jsonl", TINY_DOCS)
        publish(corpus_a, served_index, tiny_model_dir)
        flip_a_byte(served_index)
        refused = client.post("/admin/reload")
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert f"still serving build {build_b}" in error and "checksum mismatch" in error and "\n" not in error
        assert _all_same(answers_from(client), answers_b)

        # no index in the folder (between the two renames of a publish): refused, B kept
        moved = served_index.with_name("moved")
        os.rename(served_index, moved)
        refused = client.post("/admin/reload")
        assert refused.status_code == 409 and "no index at" in refused.json()["error"]
        assert _all_same(answers_from(client), answers_b)
        assert client.get("/health").json()["index_build"] == build_b

    lines = [record.getMessage() for record in caplog.records if record.name == "dipair_rerank.serve.events"]
    assert sum("failed, still serving build" in line for line in lines) == 2, lines
    assert sum(f"build {build_a} -> {build_b}" in line for line in lines) == 1


def test_a_build_published_while_loading_is_loaded_again_whole(served_index, rotated_corpus, tiny_model_dir,
                                                                 monkeypatch, caplog):
    """The folder's identity before and after opening differs: the half-and-half service is closed and the new
    build loaded."""
    from dipair_rerank.index_layout import IndexLayout
    from dipair_rerank.serve.service import RerankService, ServeOptions

    opened = []
    real_open = RerankService._open.__func__

    def open_then_publish(cls, layout, options, identity, verify):
        service = real_open(cls, layout, options, identity, verify)
        opened.append(service)
        if len(opened) == 1:
            publish(rotated_corpus, served_index, tiny_model_dir)
        return service

    monkeypatch.setattr(RerankService, "_open", classmethod(open_then_publish))
    caplog.set_level(logging.WARNING, logger="dipair_rerank.serve.service")
    service = RerankService.from_options(ServeOptions(index=str(served_index), threads=1), verify=True)
    assert len(opened) == 2 and service is opened[1]
    assert service.identity == IndexLayout(served_index).identity() and service.cache.num_docs == 12
    assert any("replaced while it loaded" in record.getMessage() for record in caplog.records)

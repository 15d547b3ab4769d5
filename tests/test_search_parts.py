"""A search in resumable parts (``search_parts``), searched here in-process: the same run as ``search``, resumed
from its finished parts after an interruption, refused when the inputs changed."""

import json
import random

import pytest

from dipair_rerank.cli import main
from dipair_rerank.errors import DiPairError
from dipair_rerank.search_parts import PartSearcher, SearchOptions, search_in_parts, split_parts
from tests.conftest import TINY_TOPICS


class Interrupted(Exception):
    pass


def in_process(options, searched=None):
    """An engine searching every part here, recording which parts it was handed."""
    searcher = PartSearcher(options)

    def engine(tasks):
        for task in tasks:
            if searched is not None:
                searched.append(task.part)
            yield searcher.search(task)
    return engine


def local_run(tiny_index, topics, run, *extra):
    assert main(["search", "--index", str(tiny_index), "--topics", str(topics), "--run", str(run), "--depth", "5",
                 "--hits", "7", "--threads", "1", *extra]) == 0
    return run.read_text()


def test_split_parts_keeps_topic_order():
    assert split_parts(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert SearchOptions(index="x", part_size=5, batch_size=4).queries_per_part == 8


def test_parts_equal_the_local_run_and_resume(tiny_index, tiny_files, tmp_path):
    expected = local_run(tiny_index, tiny_files["topics"], tmp_path / "local.trec")
    options = SearchOptions(index=str(tiny_index), depth=5, hits=7, threads=1, part_size=1)
    run = tmp_path / "parts.trec"

    def stop_after_first(part):
        raise Interrupted(part)

    with pytest.raises(Interrupted):
        search_in_parts(TINY_TOPICS, run, options, in_process(options), progress=False, on_part=stop_after_first)
    parts = tmp_path / "parts.trec.parts"
    assert not run.exists() and (parts / "part-00000.trec").is_file() and not (parts / "part-00001.trec").exists()
    assert json.loads((parts / "manifest.json").read_text())["depth"] == 5

    with pytest.raises(DiPairError, match=r"other inputs \(depth, index_manifest_sha256\) differ|other inputs"):
        other = SearchOptions(index=str(tiny_index), depth=4, hits=7, threads=1, part_size=1)
        search_in_parts(TINY_TOPICS, run, other, in_process(other), progress=False)

    searched = []
    report = search_in_parts(TINY_TOPICS, run, options, in_process(options, searched), progress=False)
    assert searched == [1, 2, 3] and report.resumed_parts == 1 and report.parts == 4
    assert run.read_text() == expected and not parts.exists()
    latency = json.loads((tmp_path / "parts.trec.latency.json").read_text())
    assert len(latency["stages"]["head"]) == len(TINY_TOPICS)  # the resumed part's timings included


def test_changed_inputs_are_refused_in_one_line(tiny_index, tiny_files, tmp_path, capsys):
    options = SearchOptions(index=str(tiny_index), depth=5, hits=7, threads=1, part_size=2)
    with pytest.raises(Interrupted):
        search_in_parts(TINY_TOPICS, tmp_path / "r.trec", options, in_process(options), progress=False,
                        on_part=lambda part: (_ for _ in ()).throw(Interrupted()))
    topics = dict(TINY_TOPICS, q4="plants and light")
    with pytest.raises(DiPairError) as refused:
        search_in_parts(topics, tmp_path / "r.trec", options, in_process(options), progress=False)
    message = str(refused.value)
    assert "\n" not in message and "(topics_sha256 differ)" in message and "delete the folder" in message


def test_candidates_are_read_part_by_part(tiny_index, tiny_files, tmp_path):
    lines = [f"{q} Q0 d{(i * 5 + n) % 12 + 1} {i} {10 - i}.0 bm25\n" for n, q in enumerate(TINY_TOPICS)
             for i in range(1, 7)]
    random.Random(1).shuffle(lines)  # not grouped by query
    cands = tmp_path / "c.trec"
    cands.write_text("".join(lines))
    expected = local_run(tiny_index, tiny_files["topics"], tmp_path / "local.trec", "--candidates", str(cands))
    options = SearchOptions(index=str(tiny_index), depth=5, hits=7, threads=1, part_size=3, candidates=str(cands))
    report = search_in_parts(TINY_TOPICS, tmp_path / "parts.trec", options, in_process(options), progress=False)
    assert report.parts == 2 and (tmp_path / "parts.trec").read_text() == expected

    unrelated = tmp_path / "u.trec"
    unrelated.write_text("x1 Q0 d1 1 1.0 bm25\n")
    with pytest.raises(DiPairError, match="none of the 4 topics got any candidates"):
        search_in_parts(TINY_TOPICS, tmp_path / "u.out", SearchOptions(index=str(tiny_index), candidates=str(unrelated)),
                        lambda tasks: iter(()), progress=False)

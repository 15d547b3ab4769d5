from dipair_rerank.first_stage import RunFileFirstStage


def test_run_file_truncates_to_k():
    stage = RunFileFirstStage({"q": [("a", 3.0), ("b", 2.0), ("c", 1.0)]})
    assert [c.docid for c in stage.retrieve(["q", "x"], ["", ""], 2)[0]] == ["a", "b"]
    assert stage.retrieve(["x"], [""], 2) == [[]]

from dipair_rerank.evaluate.report import format_rounds


def test_format_rounds_gives_each_arm_its_median_and_every_round():
    runs = {"before": [{"head": 1.5, "gather": 0.4}, {"head": 1.3, "gather": 0.6}, {"head": 1.4, "gather": 0.5}],
            "after": [{"head": 1.1, "gather": 0.3}]}
    table = format_rounds("revision", runs, ["head", "gather"]).splitlines()
    assert table[0] == "| revision | head | gather |" and table[1] == "|---|---:|---:|"
    assert table[2] == "| before | 1.400 (1.50, 1.30, 1.40) | 0.500 (0.40, 0.60, 0.50) |"
    assert table[3] == "| after | 1.100 (1.10) | 0.300 (0.30) |"

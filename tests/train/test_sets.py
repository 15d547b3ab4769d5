"""``dipair-rerank train`` end to end on the tiny collection: teacher run -> two stages -> a usable model."""

import json

from dipair_rerank.cli import main
from dipair_rerank.model import DiPairModel
from tests.conftest import TINY_TOPICS


def test_train_command_mixes_sets_and_resumes(tiny_model_dir, tiny_files, tmp_path, capsys):
    cands = tmp_path / "cands.trec"
    cands.write_text("".join(f"{q} Q0 d{i} {i} {20 - i}.0 bm25\n" for q in TINY_TOPICS for i in range(1, 9)))
    argv = ["train", "--topics", str(tiny_files["topics"]), str(tiny_files["topics"]),
            "--candidates", str(cands), str(cands), "--corpus", str(tiny_files["corpus"]), str(tiny_files["corpus"]),
            "--teacher", f"run:{cands}", "--output", str(tmp_path / "out"), "--model", str(tiny_model_dir),
            "--depth", "4", "--stage1-epochs", "1", "--stage2-epochs", "1", "--threads", "1"]
    assert main(argv) == 0
    model = DiPairModel.from_pretrained(tmp_path / "out" / "model")
    assert model.fingerprint() != DiPairModel.from_pretrained(tiny_model_dir).fingerprint()
    state = json.loads((tmp_path / "out" / "train_state.json").read_text())
    assert main(argv) == 0  # finished: resuming does not train again
    assert json.loads((tmp_path / "out" / "train_state.json").read_text())["history"] == state["history"]
    assert "model saved to" in capsys.readouterr().out


def test_one_value_per_set(tiny_files, tmp_path, capsys):
    assert main(["train", "--topics", str(tiny_files["topics"]), "--candidates", "a", "b", "--corpus", "c",
                 "--teacher", "run:x", "--output", str(tmp_path / "o")]) == 2
    assert "--candidates needs one value per --topics" in capsys.readouterr().err

"""``train-teacher``: pairs from graded qrels + hard negatives; CrossEncoderTrainer on a tiny model; resume."""

import pytest

from dipair_rerank.cli import main
from dipair_rerank.errors import DiPairError
from dipair_rerank.train.teachers.cross_encoder import build_pairs
from tests.conftest import TINY_DOCS, TINY_QRELS, TINY_TOPICS


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from dipair_rerank.model import tiny_encoder_config
    from dipair_rerank.model.config import DEFAULT_ENCODER, resolve_encoder_path

    values = {k: v for k, v in tiny_encoder_config().items() if k != "model_type"}
    folder = tmp_path_factory.mktemp("ce") / "tiny-ce"
    BertForSequenceClassification(BertConfig(num_labels=1, **values)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_encoder_path(DEFAULT_ENCODER)).save_pretrained(folder)
    return folder


def test_build_pairs_graded_and_hard_negatives():
    run = {q: [(d, 1.0) for d, _ in TINY_DOCS] for q in TINY_TOPICS}
    pairs = build_pairs(TINY_TOPICS, TINY_QRELS, run, dict(TINY_DOCS), negatives=3, negative_depth=12)
    assert len(pairs["query"]) == 4 * (2 + 3)
    assert sorted(set(pairs["label"])) == [0.0, 0.5, 1.0]  # grades 1 and 2 scaled by the top grade
    with pytest.raises(DiPairError):
        build_pairs(TINY_TOPICS, {}, run, dict(TINY_DOCS), negatives=3, negative_depth=12)


def test_train_teacher_cli_trains_and_resumes(tiny_cross_encoder, tiny_files, tmp_path, capsys):
    cands = tmp_path / "cands.trec"
    cands.write_text("".join(f"{q} Q0 d{i} {i} {20 - i}.0 bm25\n" for q in TINY_TOPICS for i in range(1, 13)))
    argv = ["train-teacher", "--topics", str(tiny_files["topics"]), "--qrels", str(tiny_files["qrels"]),
            "--candidates", str(cands), "--corpus", str(tiny_files["corpus"]), "--model", str(tiny_cross_encoder),
            "--output", str(tmp_path / "teacher"), "--epochs", "2", "--batch-size", "4", "--save-steps", "3",
            "--max-length", "32", "--threads", "1"]
    assert main(argv) == 0
    final = tmp_path / "teacher" / "model"
    assert (final / "config.json").is_file()
    checkpoints = sorted((tmp_path / "teacher" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints
    assert main(argv) == 0  # resumes from the last checkpoint: nothing left to do, still writes the model
    out = capsys.readouterr().out
    assert "teacher saved to" in out
    # the fine-tuned teacher scores pairs through the fusion teacher's cross-encoder path
    assert main(["teacher-scores", "--topics", str(tiny_files["topics"]), "--candidates", str(cands),
                 "--corpus", str(tiny_files["corpus"]), "--scorers", f"ce:{final}=1,first_stage=1",
                 "--output", str(tmp_path / "t.trec"), "--cache-dir", str(tmp_path / "c"), "--threads", "1"]) == 0

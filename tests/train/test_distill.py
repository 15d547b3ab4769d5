"""Two-stage distillation: stage 1 trains the head only, stage 2 the encoders; checkpoints, resume, determinism."""

import json

import pytest
import torch

from dipair_rerank.errors import DiPairError
from dipair_rerank.model import DiPairConfig, DiPairModel, tiny_encoder_config
from dipair_rerank.train import TrainConfig, read_train_state, train_dipair
from dipair_rerank.train.distill import OPTIMIZER_NAME, build_examples, student_scores

DOCS = {
    "d1": "The cat sat on the mat while the dog slept.",
    "d2": "Quantum computers use qubits that can be in superposition.",
    "d3": "Cats and dogs are the most common household pets.",
    "d4": "The stock market fell sharply after the interest rate decision.",
    "d5": "Photosynthesis converts light energy into chemical energy in plants.",
    "d6": "A qubit is the basic unit of quantum information.",
    "d7": "Central banks raise interest rates to fight inflation.",
    "d8": "Plants need sunlight, water and carbon dioxide to grow.",
}
TOPICS = {
    "q1": "quantum qubits information",
    "q2": "cats and dogs pets",
    "q3": "interest rates inflation",
    "q4": "plants light energy",
}
ORDER = {  # 6 candidates per query, in a first-stage-like order
    "q1": ["d2", "d6", "d1", "d4", "d5", "d7"],
    "q2": ["d3", "d1", "d2", "d8", "d6", "d4"],
    "q3": ["d7", "d4", "d5", "d1", "d3", "d8"],
    "q4": ["d5", "d8", "d2", "d6", "d7", "d3"],
}
CANDIDATES = {qid: [(docid, float(6 - rank)) for rank, docid in enumerate(docids)] for qid, docids in ORDER.items()}


def _overlap(query: str, doc: str) -> float:
    words = lambda text: {w.strip(".,").lower() for w in text.split()}  # noqa: E731
    return float(len(words(query) & words(doc)))


TEACHER = {qid: [(d, _overlap(TOPICS[qid], DOCS[d])) for d in docids] for qid, docids in ORDER.items()}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(**overrides) -> DiPairModel:
    values = dict(
        encoder_config=tiny_encoder_config(), query_prefix=4, doc_prefix=6, proj_dim=16, head_ffn=32, head_heads=2,
        query_max_length=16, doc_max_length=32,
    )
    values.update(overrides)
    torch.manual_seed(0)  # the random tiny encoder draws from the global generator
    return DiPairModel(DiPairConfig(**values))


def train(model, output, **overrides):
    values = dict(output=output, depth=6, queries_per_step=2, stage1_epochs=1, stage2_epochs=0, progress=False)
    values.update(overrides)
    return train_dipair(model, TOPICS, CANDIDATES, DOCS, TEACHER, TrainConfig(**values))


def _encoder_state(model):
    return {k: v.clone() for k, v in model.encoders.state_dict().items()}


def _head_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoders.")}


def test_student_scores_match_pairwise_forward():
    """The batched step path (each query encoded once, one head call) equals scoring each pair separately."""
    model = make_model()
    examples = build_examples(TOPICS, CANDIDATES, TEACHER, DOCS, depth=4)
    with torch.inference_mode():
        scores, mask = student_scores(model, examples[:2], DOCS, torch.device("cpu"))
        for row, example in enumerate(examples[:2]):
            direct = model([example.query] * len(example.docids), [DOCS[d] for d in example.docids])
            assert torch.allclose(scores[row, : len(direct)], direct, atol=1e-5)
    assert mask.all() and scores.shape == (2, 4)


def test_stage1_freezes_encoders_and_trains_head(tmp_path):
    model = make_model()
    encoders, head = _encoder_state(model), _head_state(model)
    train(model, tmp_path / "run", stage1_lr=1e-2)
    after = model.state_dict()
    assert all(torch.equal(after[f"encoders.{k}"], v) for k, v in encoders.items())
    changed = [k for k, v in head.items() if not torch.equal(after[k], v)]
    assert {"score_out.weight", "query_projection.weight", "doc_projection.weight"} <= set(changed)
    assert len(changed) == len(head)
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_stage2_changes_encoder_weights(tmp_path):
    model = make_model()
    encoders = _encoder_state(model)
    train(model, tmp_path / "run", stage1_epochs=0, stage2_epochs=1, stage2_lr=1e-3)
    after = model.state_dict()
    changed = [k for k, v in encoders.items() if not torch.equal(after[f"encoders.{k}"], v)]
    assert any("embeddings.word_embeddings" in k for k in changed)
    assert any("encoder.layer.1." in k for k in changed)


def test_checkpoints_state_and_final_model(tmp_path):
    output = tmp_path / "run"
    model = train(make_model(), output, stage1_epochs=2, stage2_epochs=1)
    state = read_train_state(output)
    assert (state["stage"], state["epoch"]) == (2, 1)
    assert state["checkpoint"] == "checkpoints/stage2-epoch1"
    assert [(h["stage"], h["epoch"]) for h in state["history"]] == [(1, 1), (1, 2), (2, 1)]
    for name in ("stage1-epoch1", "stage1-epoch2", "stage2-epoch1"):
        checkpoint = output / "checkpoints" / name
        assert DiPairModel.from_pretrained(checkpoint).config == model.config
        optimizer_state = torch.load(checkpoint / OPTIMIZER_NAME, weights_only=True)
        assert optimizer_state["state"]
    assert not list(output.rglob("*.tmp"))
    reloaded = DiPairModel.from_pretrained(output / "model")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reloaded.state_dict().items())


def test_resume_after_stage1_matches_uninterrupted_run(tmp_path):
    straight = train(make_model(), tmp_path / "straight", stage1_epochs=1, stage2_epochs=1)

    output = tmp_path / "resumed"
    train(make_model(), output, stage1_epochs=1, stage2_epochs=0)
    assert (read_train_state(output)["stage"], read_train_state(output)["epoch"]) == (1, 1)
    resumed = train(make_model(seed=123), output, stage1_epochs=1, stage2_epochs=1)  # fresh weights: must load
    history = read_train_state(output)["history"]
    assert [(h["stage"], h["epoch"]) for h in history] == [(1, 1), (2, 1)]  # stage 1 not redone
    expected = straight.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in resumed.state_dict().items())


def test_resume_inside_stage_restores_optimizer(tmp_path):
    straight = train(make_model(), tmp_path / "straight", stage1_epochs=2)
    output = tmp_path / "resumed"
    train(make_model(), output, stage1_epochs=1)
    resumed = train(make_model(), output, stage1_epochs=2)
    assert [(h["stage"], h["epoch"]) for h in read_train_state(output)["history"]] == [(1, 1), (1, 2)]
    expected = straight.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in resumed.state_dict().items())


def test_finished_run_is_not_retrained(tmp_path):
    output = tmp_path / "run"
    trained = train(make_model(), output)
    state = (output / "train_state.json").read_text()
    again = train(make_model(), output)
    assert (output / "train_state.json").read_text() == state
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in again.state_dict().items())


def test_resume_with_other_model_config_is_an_error(tmp_path):
    output = tmp_path / "run"
    train(make_model(), output)
    with pytest.raises(DiPairError, match="different model config"):
        train(make_model(proj_dim=8), output, stage2_epochs=1)


def test_deterministic_with_seed(tmp_path):
    a = train(make_model(), tmp_path / "a", stage1_epochs=1, stage2_epochs=1)
    b = train(make_model(), tmp_path / "b", stage1_epochs=1, stage2_epochs=1)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("loss", ["mse", "kl", "mse+kl"])
def test_training_reduces_loss(tmp_path, loss):
    output = tmp_path / "run"
    train(make_model(dropout=0.0), output, stage1_epochs=8, stage1_lr=1e-2, loss=loss)
    losses = [h["mean_loss"] for h in read_train_state(output)["history"]]
    assert losses[-1] < losses[0]


def test_label_loss_and_bf16_run(tmp_path):
    qrels = {"q1": {"d2": 1, "d6": 2}, "q2": {"d3": 2}, "q3": {"d7": 2}, "q4": {"d5": 2, "d8": 1}}
    config = TrainConfig(
        output=tmp_path / "run", depth=6, queries_per_step=2, stage1_epochs=1, stage2_epochs=1, loss="kl",
        label_weight=0.5, bf16=True, micro_batch_queries=1, progress=False,
    )
    train_dipair(make_model(), TOPICS, CANDIDATES, DOCS, TEACHER, config, qrels=qrels)
    assert all(h["mean_loss"] > 0 for h in read_train_state(tmp_path / "run")["history"])
    with pytest.raises(DiPairError, match="needs qrels"):
        train_dipair(make_model(), TOPICS, CANDIDATES, DOCS, TEACHER, config)


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(DiPairError, match="no teacher score"):
        train_dipair(make_model(), TOPICS, CANDIDATES, DOCS, {"q1": TEACHER["q1"][:2]}, TrainConfig(tmp_path, depth=3))
    with pytest.raises(DiPairError, match="has no text"):
        train_dipair(make_model(), TOPICS, {"q1": [("nope", 1.0)]}, DOCS, TEACHER, TrainConfig(tmp_path))
    with pytest.raises(DiPairError, match="unknown loss"):
        TrainConfig(tmp_path, loss="hinge")
    with pytest.raises(DiPairError, match="share no query"):
        train_dipair(make_model(), {"zz": "x"}, CANDIDATES, DOCS, TEACHER, TrainConfig(tmp_path))


def test_state_file_is_json_with_config(tmp_path):
    output = tmp_path / "run"
    train(make_model(), output)
    state = json.loads((output / "train_state.json").read_text())
    assert state["config"]["output"] == str(output) and state["config"]["loss"] == "mse"

"""Cached stage 1: stored features reproduce the model's encoders, training improves the head only, resumes."""

import json

import numpy as np
import torch

from dipair_rerank.cli import main
from dipair_rerank.model import DiPairModel
from dipair_rerank.train.cached import CachedStage1Config, split_validation, train_stage1_cached
from dipair_rerank.train.distill import build_examples
from dipair_rerank.train.features import extract_features, project_features
from tests.conftest import TINY_DOCS, TINY_QRELS, TINY_TOPICS, tiny_config


def test_features_reproduce_the_encoder_path(tmp_path):
    model = DiPairModel(tiny_config())
    texts = [t for _, t in TINY_DOCS]
    store = extract_features(model, texts, tmp_path / "doc", side="doc", keep=8, batch_size=5, chunk_size=4,
                             progress=False)
    again = extract_features(model, texts + ["a new text"], tmp_path / "doc", side="doc", keep=8, progress=False)
    assert len(store) == len(texts) and len(again) == len(texts) + 1  # resumes: only the new text encoded
    rows = store.rows(texts)
    with torch.no_grad():
        vec, mask = project_features(model, "doc", torch.from_numpy(store.prefix[rows]), torch.from_numpy(
            store.mask[rows]), torch.from_numpy(store.pooled[rows]), model.config.doc_prefix)
        ref = model.encode_documents(model.tokenize(texts, max_length=model.config.doc_max_length))
    assert torch.equal(mask, ref.mask)
    assert torch.allclose(vec, ref.vectors, atol=2e-2)  # fp16-stored encoder outputs


def _examples():
    teacher = {q: [(d, float(len(set(t.split()) & set(TINY_TOPICS[q].split())))) for d, t in TINY_DOCS]
               for q in TINY_TOPICS}
    cands = {q: [(d, 0.0) for d, _ in TINY_DOCS] for q in TINY_TOPICS}
    return build_examples(TINY_TOPICS, cands, teacher, dict(TINY_DOCS), depth=12, qrels=TINY_QRELS)


def test_cached_stage1_trains_head_only_and_resumes(tmp_path):
    model = DiPairModel(tiny_config())
    encoder_before = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    head_before = model.score_out.weight.clone()
    examples = _examples()
    train, val = split_validation(examples, 0.25, 0)
    assert len(val) == 1 and {e.qid for e in train}.isdisjoint({e.qid for e in val})
    queries = extract_features(model, [e.query for e in examples], tmp_path / "q", side="query", keep=4,
                               progress=False)
    docs = extract_features(model, [t for _, t in TINY_DOCS], tmp_path / "d", side="doc", keep=6, progress=False)
    config = CachedStage1Config(epochs=2, lr=1e-2, queries_per_step=2, sample_candidates=5, patience=5,
                                warmup_steps=1, label_weight=0.5, progress=False)
    summary = train_stage1_cached(model, train, val, queries, docs, dict(TINY_DOCS), config, tmp_path / "out")
    assert [r["epoch"] for r in summary["history"]] == [0, 1, 2]
    assert all(torch.equal(v, model.encoders.state_dict()[k]) for k, v in encoder_before.items())
    last = torch.load(tmp_path / "out" / "stage1-cached.pt", weights_only=True)["model"]
    assert not torch.equal(head_before, last["score_out.weight"])  # trained (the best epoch may still be 0)
    history = json.loads((tmp_path / "out" / "stage1-history.json").read_text())
    assert len(history["history"]) == 3
    longer = CachedStage1Config(**{**config.__dict__, "epochs": 3})
    resumed = train_stage1_cached(DiPairModel(tiny_config()), train, val, queries, docs, dict(TINY_DOCS), longer,
                                  tmp_path / "out")
    assert [r["epoch"] for r in resumed["history"]] == [0, 1, 2, 3]  # epochs 1-2 not repeated


def test_interrupted_cached_stage1_resumed_equals_an_uninterrupted_run(tmp_path, killed_after):
    examples = _examples()
    train, val = split_validation(examples, 0.25, 0)
    torch.manual_seed(0)
    model = DiPairModel(tiny_config())
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    queries = extract_features(model, [e.query for e in examples], tmp_path / "q", side="query", keep=4,
                               progress=False)
    docs = extract_features(model, [t for _, t in TINY_DOCS], tmp_path / "d", side="doc", keep=6, progress=False)
    config = CachedStage1Config(epochs=3, lr=1e-2, queries_per_step=1, sample_candidates=5, patience=5,
                                warmup_steps=1, progress=False)

    def run(output):
        model.load_state_dict(initial)
        return train_stage1_cached(model, train, val, queries, docs, dict(TINY_DOCS), config, output)

    straight = run(tmp_path / "straight")
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with killed_after(len(train) + 1):  # during epoch 2
        run(tmp_path / "resumed")
    assert torch.load(tmp_path / "resumed" / "stage1-cached.pt", weights_only=True)["epoch"] == 1
    resumed = run(tmp_path / "resumed")

    def without_time(history):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    assert without_time(resumed["history"]) == without_time(straight["history"])
    assert resumed["best_epoch"] == straight["best_epoch"]
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    last = [torch.load(tmp_path / name / "stage1-cached.pt", weights_only=True)["model"]
            for name in ("straight", "resumed")]
    assert all(torch.equal(v, last[0][k]) for k, v in last[1].items())


def test_train_command_cached_stage1(tiny_files, tmp_path, capsys):
    cands = tmp_path / "cands.trec"
    cands.write_text("".join(f"{q} Q0 d{i} {i} {20 - i}.0 bm25\n" for q in TINY_TOPICS for i in range(1, 9)))
    argv = ["train", "--topics", str(tiny_files["topics"]), str(tiny_files["topics"]),
            "--candidates", str(cands), str(cands), "--corpus", str(tiny_files["corpus"]), str(tiny_files["corpus"]),
            "--qrels", str(tiny_files["qrels"]), str(tiny_files["qrels"]),
            "--teacher", f"run:{cands}", f"run:{cands}", "--output", str(tmp_path / "out"), "--fresh",
            "--set", "encoder_config=", "--depth", "6", "--stage1-epochs", "2", "--stage2-epochs", "0",
            "--cached-stage1", "--val-fraction", "0.25", "--threads", "1"]
    # encoder_config cannot be given on the command line: use the tiny model through --model instead
    argv = [a for a in argv if a not in ("--fresh", "--set", "encoder_config=")]
    from tests.conftest import tiny_config as cfg
    model_dir = DiPairModel(cfg()).save_pretrained(tmp_path / "tiny")
    assert main(argv + ["--model", str(model_dir)]) == 0
    model = DiPairModel.from_pretrained(tmp_path / "out" / "model")
    summary = json.loads((tmp_path / "out" / "stage1-summary.json").read_text())
    assert summary["best_epoch"] in (0, 1, 2)
    assert np.isfinite(summary["best_val_ndcg10"])
    assert model.config.doc_prefix == cfg().doc_prefix
    assert "model saved to" in capsys.readouterr().out


def test_scale_calibration_lowers_the_initial_kl(tmp_path):
    from dipair_rerank.train.cached import cached_scores, calibrate_similarity_scale, pack
    from dipair_rerank.train.losses import listwise_kl

    model = DiPairModel(tiny_config())
    examples = _examples()
    queries = extract_features(model, [e.query for e in examples], tmp_path / "q", side="query", keep=4,
                               progress=False)
    docs = extract_features(model, [t for _, t in TINY_DOCS], tmp_path / "d", side="doc", keep=6, progress=False)
    packed = pack(examples, queries, docs, dict(TINY_DOCS))
    device = torch.device("cpu")

    def kl() -> float:
        with torch.no_grad():
            scores = cached_scores(model, queries, docs, packed.q_rows, packed.d_rows, device)
        return float(listwise_kl(scores, torch.from_numpy(packed.teacher), torch.from_numpy(packed.mask)))

    before = kl()
    scale = calibrate_similarity_scale(model, packed, queries, docs, device)
    assert scale is not None and abs(float(model.similarity_scale.detach()) - scale) < 1e-4 and kl() <= before + 1e-6
    with torch.no_grad():
        model.score_out.weight.fill_(0.1)  # a trained head is left alone
    assert calibrate_similarity_scale(model, packed, queries, docs, device) is None


def test_validation_fraction_per_set():
    examples = _examples()
    group = {e.qid: ("0" if e.qid in ("q1", "q2") else "1") for e in examples}
    train, val = split_validation(examples, {"0": 0.0, "1": 1.0}, 0, group)  # set 1 held out whole
    assert {e.qid for e in val} == {"q3", "q4"} and {e.qid for e in train} == {"q1", "q2"}


def test_train_command_adds_channels_to_a_model_and_keeps_its_query_tower(tiny_files, tiny_splade, tmp_path):
    """The default model's recipe in small: --model with --set channels=..., --encoder-lr 0."""
    cands = tmp_path / "cands.trec"
    cands.write_text("".join(f"{q} Q0 d{i} {i} {20 - i}.0 bm25\n" for q in TINY_TOPICS for i in range(1, 9)))
    base = DiPairModel(tiny_config(query_tuned_layers=1, full_width_residual=True))
    base_dir = base.save_pretrained(tmp_path / "base", save_encoder=False)
    argv = ["train", "--topics", str(tiny_files["topics"]), "--candidates", str(cands),
            "--corpus", str(tiny_files["corpus"]), "--qrels", str(tiny_files["qrels"]), "--teacher", f"run:{cands}",
            "--output", str(tmp_path / "out"), "--model", str(base_dir), "--set", "channels=first_stage,lexical,cosine",
            "--set", f"lexical_model={tiny_splade}", "--encoder-lr", "0", "--depth", "6", "--stage1-epochs", "2",
            "--stage1-lr", "0.05", "--stage2-epochs", "0", "--cached-stage1", "--val-fraction", "0.25",
            "--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--patience", "5"]
    assert main(argv) == 0
    trained = DiPairModel.from_pretrained(tmp_path / "out" / "model")
    assert trained.config.channels == ["first_stage", "lexical", "cosine"] and trained.lexical is not None
    last = torch.load(tmp_path / "out" / "stage1-cached.pt", weights_only=True)["model"]
    assert last["channel_weights"].abs().sum() > 0  # the channel weights train (from 0; the best epoch may be 0)
    tuned = trained.tuned_layer_prefixes()
    base_state, state = DiPairModel.from_pretrained(base_dir).state_dict(), trained.state_dict()
    assert all(torch.equal(base_state[k], state[k]) for k in base_state if k.startswith(tuned))  # tower kept
    assert list((tmp_path / "cache").glob("splade-*.npz"))  # lexical vectors cached where asked

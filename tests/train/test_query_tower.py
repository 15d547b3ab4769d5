"""Shallow query tower: starts as the teacher without the skipped layers, trains its tuned layers only, resumes."""

import pytest
import torch

from dipair_rerank.errors import DiPairError
from dipair_rerank.model import DiPairModel
from dipair_rerank.train.query_tower import STATE_NAME, distill_query_tower, shallow_student
from tests.conftest import TINY_TOPICS, tiny_config

QUERIES = list(TINY_TOPICS.values()) * 4


def _teacher() -> DiPairModel:
    from dipair_rerank.model import tiny_encoder_config

    config = tiny_config(encoder_config=tiny_encoder_config(num_hidden_layers=4), query_tuned_layers=1,
                         full_width_residual=True, head_layers=1)
    return DiPairModel(config)


def test_the_shallow_student_starts_as_the_teacher_without_the_skipped_layers():
    teacher = _teacher()
    student = shallow_student(teacher, [1, 2])
    assert len(student.query_encoder.encoder.layer) == 2 and len(student.doc_encoder.encoder.layer) == 4
    kept, tuned = student.query_encoder.encoder.layer, teacher.query_encoder.encoder.layer
    assert torch.equal(kept[1].output.dense.weight, tuned[3].output.dense.weight)  # the tuned layer moved down
    assert torch.equal(student.query_projection.weight, teacher.query_projection.weight)
    assert student.fingerprint() != teacher.fingerprint()
    with pytest.raises(DiPairError, match="must name frozen layers"):
        shallow_student(teacher, [3])  # the tuned layer cannot be left out
    with pytest.raises(DiPairError, match="already leaves out layers"):
        shallow_student(student, [0])


def test_distilling_trains_only_the_tuned_layers_resumes_and_saves_a_loadable_model(tmp_path):
    teacher = _teacher()
    student = shallow_student(teacher, [1, 2])
    frozen = {name: t.clone() for name, t in student.state_dict().items() if ".layer.1." not in name}
    batch = student.tokenize(QUERIES[:3], max_length=16)
    before = (student.encode_queries(batch).vectors - teacher.encode_queries(batch).vectors).abs().mean()
    losses = distill_query_tower(teacher, student, QUERIES, tmp_path, epochs=2, lr=1e-3, batch_size=4,
                                 progress=False)
    assert len(losses) == 2 and losses[1] < losses[0]
    after = (student.encode_queries(batch).vectors - teacher.encode_queries(batch).vectors).abs().mean()
    assert after < before
    for name, tensor in student.state_dict().items():
        if name in frozen:
            assert torch.equal(tensor, frozen[name]), name
    assert not torch.equal(student.query_encoder.encoder.layer[1].output.dense.weight,
                           teacher.query_encoder.encoder.layer[3].output.dense.weight)
    assert (tmp_path / STATE_NAME).is_file()
    resumed = shallow_student(teacher, [1, 2])
    assert distill_query_tower(teacher, resumed, QUERIES, tmp_path, epochs=2, progress=False) == losses  # nothing left
    assert torch.equal(resumed.query_encoder.encoder.layer[1].output.dense.weight,
                       student.query_encoder.encoder.layer[1].output.dense.weight)
    loaded = DiPairModel.from_folder(student.save_pretrained(tmp_path / "model", save_encoder=False))
    assert len(loaded.query_encoder.encoder.layer) == 2
    assert torch.allclose(loaded.encode_queries(batch).vectors, student.encode_queries(batch).vectors, atol=1e-6)


def test_a_killed_distillation_resumed_ends_as_an_uninterrupted_one(tmp_path, killed_after):
    teacher = _teacher()
    straight = shallow_student(teacher, [1, 2])
    losses = distill_query_tower(teacher, straight, QUERIES, tmp_path / "straight", epochs=3, lr=1e-3, batch_size=4,
                                 progress=False)
    with killed_after(6):  # during epoch 2 (4 batches an epoch)
        distill_query_tower(teacher, shallow_student(teacher, [1, 2]), QUERIES, tmp_path / "resumed", epochs=3,
                            lr=1e-3, batch_size=4, progress=False)
    assert len(torch.load(tmp_path / "resumed" / STATE_NAME, weights_only=True)["losses"]) == 1
    resumed = shallow_student(teacher, [1, 2])
    assert distill_query_tower(teacher, resumed, QUERIES, tmp_path / "resumed", epochs=3, lr=1e-3, batch_size=4,
                               progress=False) == losses
    assert all(torch.equal(v, straight.state_dict()[k]) for k, v in resumed.state_dict().items())

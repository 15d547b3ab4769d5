"""The shared epoch loop: early stopping after ``patience`` epochs, the best epoch kept, resume after the
checkpoint's epoch (an interrupted run resumed ends as an uninterrupted one), atomic checkpoint files."""

import json
import math

import pytest
import torch

from dipair_rerank.train.loop import LoopState, Validation, replace_dir, run_epochs, save_torch, write_json


class Scripted:
    """A trainer whose validation figures are given in advance; its "weights" are the epoch last trained."""

    def __init__(self, figures):
        self.figures = list(figures)
        self.trained: list[int] = []
        self.saved: list[dict] = []

    def run_epoch(self, epoch):
        self.trained.append(epoch)
        return {"epoch": epoch, "loss": 1.0 / epoch}

    def validation(self, patience, min_delta=1e-6):
        return Validation(lambda: {"val": self.figures.pop(0)}, metric="val", patience=patience, min_delta=min_delta)

    def snapshot(self):
        return {"w": torch.tensor(float(self.trained[-1] if self.trained else 0))}

    def save(self, state):
        self.saved.append(state.to_dict())


def test_early_stopping_stops_after_patience_epochs_without_a_better_figure():
    trainer = Scripted([0.5, 0.6, 0.55, 0.58, 0.9, 0.9])  # epoch 0 (untrained), then epochs 1, 2, 3, ...
    state = run_epochs(LoopState(), 10, trainer.run_epoch, validation=trainer.validation(patience=2),
                       snapshot=trainer.snapshot, save=trainer.save)
    assert trainer.trained == [1, 2, 3]  # epochs 2 and 3 bring nothing better: epoch 4 never runs
    assert [r["epoch"] for r in state.history] == [0, 1, 2, 3]
    assert [r["val"] for r in state.history] == [0.5, 0.6, 0.55, 0.58]
    assert (state.epoch, state.best, state.best_epoch, state.stale) == (3, 0.6, 1, 2)
    assert float(state.best_state["w"]) == 1.0  # the best epoch's weights, not the last
    assert [s["epoch"] for s in trainer.saved] == [1, 2, 3]  # a checkpoint after every epoch


def test_the_untrained_model_can_stay_the_best_and_small_gains_do_not_count():
    trainer = Scripted([0.5, 0.5 + 1e-7, 0.4])
    state = run_epochs(LoopState(), 5, trainer.run_epoch, validation=trainer.validation(patience=2),
                       snapshot=trainer.snapshot)
    assert trainer.trained == [1, 2] and state.best_epoch == 0 and state.best == 0.5
    assert float(state.best_state["w"]) == 0.0  # taken before the first epoch


def test_without_validation_every_epoch_runs_and_the_last_is_kept():
    trainer = Scripted([])
    state = run_epochs(LoopState(), 3, trainer.run_epoch, snapshot=trainer.snapshot)
    assert trainer.trained == [1, 2, 3] and [r["epoch"] for r in state.history] == [1, 2, 3]
    assert state.best_epoch == 3 and math.isnan(state.best) and float(state.best_state["w"]) == 3.0


def test_resume_continues_after_the_checkpoints_epoch():
    first = Scripted([0.5, 0.6, 0.7])
    run_epochs(LoopState(), 2, first.run_epoch, validation=first.validation(patience=2), snapshot=first.snapshot,
               save=first.save)
    saved = LoopState.from_dict(first.saved[-1])
    assert (saved.epoch, saved.best, saved.best_epoch) == (2, 0.7, 2)

    second = Scripted([0.65, 0.8, 0.6, 0.6])  # no epoch 0 figure: the restored history has it
    state = run_epochs(saved, 6, second.run_epoch, validation=second.validation(patience=2),
                       snapshot=second.snapshot, save=second.save)
    assert second.trained == [3, 4, 5, 6]  # epochs 1 and 2 are not trained again
    assert [r["epoch"] for r in state.history] == [0, 1, 2, 3, 4, 5, 6]
    assert (state.best, state.best_epoch) == (0.8, 4)


def test_resuming_a_stopped_run_trains_nothing():
    first = Scripted([0.5, 0.4, 0.4])
    run_epochs(LoopState(), 5, first.run_epoch, validation=first.validation(patience=2), save=first.save)
    assert first.trained == [1, 2]
    again = Scripted([])
    state = run_epochs(LoopState.from_dict(first.saved[-1]), 5, again.run_epoch, validation=again.validation(2))
    assert again.trained == [] and state.epoch == 2  # the stale count comes back with the history


def _toy_training(tmp_path, stop_after: int | None = None) -> torch.Tensor:
    """A linear model over seeded batches, one checkpoint file per run (state + weights + optimiser); with
    ``stop_after`` the run is killed after that many epochs, then rerun to completion."""
    tmp_path.mkdir()
    path = tmp_path / "state.pt"

    def train(last: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        optimiser = torch.optim.AdamW(model.parameters(), lr=0.1)
        state = LoopState()
        if path.is_file():
            saved = torch.load(path, weights_only=True)
            model.load_state_dict(saved["model"])
            optimiser.load_state_dict(saved["optimiser"])
            state = LoopState.from_dict(saved)

        def run_epoch(epoch):
            generator = torch.Generator().manual_seed(epoch)
            x = torch.randn(8, 4, generator=generator)
            loss = ((model(x).squeeze(-1) - x.sum(-1)) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            state.step += 1
            return {"epoch": epoch, "loss": float(loss.detach())}

        def save(state):
            save_torch({"model": model.state_dict(), "optimiser": optimiser.state_dict(), **state.to_dict()}, path)

        if stop_after is not None and not path.is_file():
            def interrupted(epoch):
                if epoch > stop_after:
                    raise KeyboardInterrupt
                return run_epoch(epoch)

            with pytest.raises(KeyboardInterrupt):
                run_epochs(state, last, interrupted, save=save)
            return train(last)
        run_epochs(state, last, run_epoch, save=save)
        assert state.step == last
        return model.weight.detach().clone()

    return train(5)


def test_an_interrupted_run_resumed_ends_as_an_uninterrupted_one(tmp_path):
    straight = _toy_training(tmp_path / "straight")
    resumed = _toy_training(tmp_path / "resumed", stop_after=2)
    assert torch.equal(straight, resumed)
    assert json.loads(torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["history"])[-1]["epoch"] == 5


def test_checkpoint_files_are_replaced_whole(tmp_path):
    path = tmp_path / "state.pt"
    save_torch({"a": torch.ones(2)}, path)
    save_torch({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    write_json(tmp_path / "state.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "state.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old").write_text("old")
    (tmp_path / "model.tmp").mkdir()
    (tmp_path / "model.tmp" / "new").write_text("new")
    replace_dir(tmp_path / "model.tmp", tmp_path / "model")
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["new"] and not (tmp_path / "model.tmp").exists()

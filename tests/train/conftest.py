"""Training fixtures: a run killed after a given number of optimiser steps."""

from contextlib import contextmanager

import pytest
import torch


class Killed(Exception):
    """Raised in place of the optimiser step at which a run is killed."""


@contextmanager
def _killed_after(steps: int):
    original, done = torch.optim.AdamW.step, []

    def step(self, *args, **kwargs):
        if len(done) == steps:
            raise Killed
        done.append(1)
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = step
    try:
        with pytest.raises(Killed):
            yield
    finally:
        torch.optim.AdamW.step = original


@pytest.fixture
def killed_after():
    """``with killed_after(n): train(...)``: the training stops at its AdamW step n + 1, as a killed run would."""
    return _killed_after

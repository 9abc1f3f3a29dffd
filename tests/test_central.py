"""The learning-rate schedules (shared by the central trainer and the rounds) and the central device choice."""

import itertools
import math

import pytest
import torch

from fedkey.central import training_device
from fedkey.models.schedules import lr_factor


def test_cosine_schedule_runs_from_full_rate_to_zero() -> None:
    assert lr_factor("cosine", 0, 100) == 1.0
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 100) == pytest.approx(0.0, abs=1e-12)
    factors = [lr_factor("cosine", s, 100) for s in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(factors))
    assert lr_factor("cosine", 25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_constant_schedule_keeps_the_rate() -> None:
    assert {lr_factor("constant", s, 10) for s in range(12)} == {1.0}


def test_warmup_rises_linearly_then_leaves_the_schedule() -> None:
    assert [lr_factor("constant", s, 10, warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor("cosine", 1, 10, warmup_steps=4) == pytest.approx(0.5 * lr_factor("cosine", 1, 10))
    assert lr_factor("cosine", 7, 10, warmup_steps=4) == lr_factor("cosine", 7, 10)
    with pytest.raises(ValueError, match="warm-up"):
        lr_factor("constant", 0, 10, warmup_steps=-1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"central\.device"):
        training_device("cuda")
    assert training_device("cpu").type == "cpu"

"""Server optimizers against updates computed by hand (Reddi et al. 2021, Algorithm 2; Hsu et al. 2019)."""

from __future__ import annotations

import numpy as np
import pytest

from fedkey.server.optimizers import ServerOptimizer, ServerOptimizerError, ServerOptimizerSettings

W = np.array([1.0, -2.0], np.float32)
G1 = np.array([0.5, -1.0], np.float32)
G2 = np.array([-0.25, 2.0], np.float32)


def two_steps(**settings: float | str) -> tuple[np.ndarray, np.ndarray, ServerOptimizer]:
    opt = ServerOptimizer(ServerOptimizerSettings(**settings), 2)  # type: ignore[arg-type]
    w1 = opt.step(W, G1)
    return w1, opt.step(w1, G2), opt


def test_fedavg_adds_the_scaled_mean_delta():
    w1, w2, _ = two_steps(name="fedavg", lr=0.5)
    np.testing.assert_allclose(w1, [1.25, -2.5])
    np.testing.assert_allclose(w2, [1.125, -1.5])


def test_fedavgm_accumulates_momentum():
    w1, w2, opt = two_steps(name="fedavgm", lr=1.0, momentum=0.5)
    # v1 = g1 = [0.5, -1]; v2 = 0.5 v1 + g2 = [0, 1.5]
    np.testing.assert_allclose(w1, [1.5, -3.0])
    np.testing.assert_allclose(w2, [1.5, -1.5])
    np.testing.assert_allclose(opt.state["v"], [0.0, 1.5])


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_optimizers_match_hand_computation(name: str):
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    w1, w2, _ = two_steps(name=name, lr=lr, beta1=b1, beta2=b2, tau=tau)
    m = np.zeros(2)
    v = np.full(2, tau**2)
    w = W.astype(np.float64)
    expected = []
    for g in (G1.astype(np.float64), G2.astype(np.float64)):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g if name == "fedadam" else v - (1 - b2) * g * g * np.sign(v - g * g)
        w = w + lr * m / (np.sqrt(v) + tau)
        expected.append(w)
    np.testing.assert_allclose(w1, expected[0], rtol=1e-5)
    np.testing.assert_allclose(w2, expected[1], rtol=1e-5)


def test_first_adam_step_moves_each_coordinate_by_about_lr():
    # m = 0.1 g, v ~ 0.01 g^2  =>  m / sqrt(v) = sign(g): the step is ~lr per coordinate
    w1, _, _ = two_steps(name="fedadam", lr=0.01, tau=1e-9)
    np.testing.assert_allclose(w1 - W, [0.01, -0.01], rtol=1e-4)


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedadam", "fedyogi"])
def test_lr_scale_scales_the_step_and_not_the_state(name: str):
    full, half = (ServerOptimizer(ServerOptimizerSettings(name=name, lr=0.1), 2) for _ in range(2))
    np.testing.assert_allclose(half.step(W, G1, lr_scale=0.5) - W, 0.5 * (full.step(W, G1) - W), rtol=1e-5)
    for key in full.state:
        np.testing.assert_array_equal(full.state[key], half.state[key])


def test_state_round_trip_continues_identically():
    _, w2, opt = two_steps(name="fedyogi", lr=0.1)
    clone = ServerOptimizer(opt.settings, 2)
    clone.load_state_dict(opt.state_dict())
    np.testing.assert_array_equal(opt.step(w2, G1), clone.step(w2, G1))


def test_bad_settings_and_state_are_refused():
    with pytest.raises(ServerOptimizerError):
        ServerOptimizer(ServerOptimizerSettings(name="sgd"), 2)  # type: ignore[arg-type]
    opt = ServerOptimizer(ServerOptimizerSettings(name="fedadam"), 2)
    with pytest.raises(ServerOptimizerError):
        opt.load_state_dict({"v": np.zeros(2)})
    with pytest.raises(ServerOptimizerError):
        opt.step(W, np.zeros(3, np.float32))

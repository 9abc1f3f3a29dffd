"""Server optimizers: how the aggregated client delta moves the global model (Reddi et al. 2021).

Every round the server gets the pseudo-gradient ``g = mean of the phones' deltas`` (client weights
minus the weights they started from, so ``g`` points downhill) and applies one step to the flat
float32 weights ``w``:

    fedavg    w <- w + lr * g                                   (McMahan et al. 2017; lr = 1 is plain FedAvg)
    fedavgm   v <- momentum * v + g;  w <- w + lr * v           (Hsu et al. 2019)
    fedadam   m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  w <- w + lr * m / (sqrt(v) + tau)
    fedyogi   m as fedadam;  v <- v - (1 - b2) g^2 sign(v - g^2);  w <- w + lr * m / (sqrt(v) + tau)

``lr`` may follow a schedule over the rounds (``lr_schedule``, as the phones' rate does) and rise
linearly over the first ``warmup_rounds``: the strategy passes each round's factor to
:meth:`ServerOptimizer.step`. Adam's normalised step does not
shrink when the phones' deltas do, so a run that anneals the phones' rate anneals the server's too.

FedAdam and FedYogi follow Algorithm 2 of Reddi et al. 2021 ("Adaptive Federated Optimization"):
no bias correction, ``m`` starts at 0 and ``v`` at ``tau^2``. The state is a dict of arrays, so it
goes into a checkpoint and a resumed run continues with exactly the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedkey.models.schedules import Schedule

OptimizerName = Literal["fedavg", "fedavgm", "fedadam", "fedyogi"]


class ServerOptimizerError(ValueError):
    """A server optimizer was configured or restored with invalid settings or state."""


@dataclass(frozen=True)
class ServerOptimizerSettings:
    """Hyper-parameters of the server step (unused ones are ignored by the chosen optimizer)."""

    name: OptimizerName = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    lr_schedule: Schedule = "constant"
    warmup_rounds: int = 0


class ServerOptimizer:
    """One of FedAvg / FedAvgM / FedAdam / FedYogi over flat float32 weights."""

    def __init__(self, settings: ServerOptimizerSettings, dim: int) -> None:
        if settings.name not in ("fedavg", "fedavgm", "fedadam", "fedyogi"):
            raise ServerOptimizerError(f"unknown server optimizer {settings.name!r}")
        if not settings.lr > 0 or not settings.tau > 0:
            raise ServerOptimizerError("server lr and tau must be > 0")
        self.settings = settings
        self.dim = dim
        self.state: dict[str, np.ndarray] = {}
        if settings.name == "fedavgm":
            self.state["v"] = np.zeros(dim, np.float32)
        elif settings.name in ("fedadam", "fedyogi"):
            self.state["m"] = np.zeros(dim, np.float32)
            self.state["v"] = np.full(dim, settings.tau**2, np.float32)

    def step(self, weights: np.ndarray, pseudo_gradient: np.ndarray, lr_scale: float = 1.0) -> np.ndarray:
        """New weights after one server step with ``pseudo_gradient`` (mean client delta) at rate
        ``lr * lr_scale`` (the schedule's factor for this round)."""
        s = self.settings
        lr = np.float32(s.lr * lr_scale)
        g = np.asarray(pseudo_gradient, dtype=np.float32)
        if g.shape != (self.dim,) or weights.shape != (self.dim,):
            raise ServerOptimizerError(f"weights and pseudo-gradient must have shape ({self.dim},)")
        if s.name == "fedavg":
            return (weights + lr * g).astype(np.float32)
        if s.name == "fedavgm":
            v = np.float32(s.momentum) * self.state["v"] + g
            self.state["v"] = v
            return (weights + lr * v).astype(np.float32)
        m = np.float32(s.beta1) * self.state["m"] + np.float32(1 - s.beta1) * g
        g2 = g * g
        v = self.state["v"]
        if s.name == "fedadam":
            v = np.float32(s.beta2) * v + np.float32(1 - s.beta2) * g2
        else:
            v = v - np.float32(1 - s.beta2) * g2 * np.sign(v - g2)
        self.state["m"], self.state["v"] = m, v.astype(np.float32)
        return (weights + lr * m / (np.sqrt(self.state["v"]) + np.float32(s.tau))).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the optimizer's arrays (for checkpoints)."""
        return {k: v.copy() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore arrays saved by :meth:`state_dict` (same optimizer, same dimension)."""
        if set(state) != set(self.state):
            raise ServerOptimizerError(
                f"optimizer state has keys {sorted(state)}; {self.settings.name} needs {sorted(self.state)}"
            )
        for key, value in state.items():
            arr = np.asarray(value, dtype=np.float32)
            if arr.shape != (self.dim,):
                raise ServerOptimizerError(f"optimizer state {key!r} has shape {arr.shape}, need ({self.dim},)")
            self.state[key] = arr.copy()

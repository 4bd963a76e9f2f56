"""A learned value of the chunk-start state, for chunk-level advantages (`advantage_baseline = value`).

With one reward per episode every chunk of a trajectory gets the same advantage, though on LIBERO-Object
the outcome is decided by the grasp in the first few chunks (docs/NOTEBOOK.md, session 9): the later
chunks of a missed grasp carry only noise. A_c = r - V(s_c) credits each chunk with how much better the
episode ended than expected from where that chunk started: chunks after the outcome is settled get
about zero, the grasp chunks get the signal.
"""

from __future__ import annotations

import numpy as np
import torch


class ChunkValue:
    """V(s) ~ E[episode reward | a chunk starts in state s]: a small MLP on the policy's state vector.

    Refit from scratch every step on the chunks of the previous `steps` steps, never on the current
    step's: fitted on the trajectories it then scores, an MLP memorises their rewards and cancels the
    advantages. The fit is a pure function of the buffer (seeded init, full-batch Adam), so a checkpoint
    stores the buffer and a resumed run refits the same V (`load_buffer`).
    """

    def __init__(self, steps: int = 4, hidden: int = 64, fit_iters: int = 300, lr: float = 1e-3, seed: int = 0):
        self.steps, self.hidden, self.fit_iters, self.lr, self.seed = steps, hidden, fit_iters, lr, seed
        self.buffer: list[tuple[np.ndarray, np.ndarray]] = []  # per step: states (N, S), rewards (N,)
        self.net: torch.nn.Module | None = None
        self.loss = float("nan")

    @property
    def fitted(self) -> bool:
        return self.net is not None

    def add(self, states: np.ndarray, rewards: np.ndarray) -> None:
        """One step's chunks: states (N, S) at each chunk's start, rewards (N,) of their episodes."""
        self.buffer.append((np.asarray(states, np.float32), np.asarray(rewards, np.float32)))
        del self.buffer[: max(0, len(self.buffer) - self.steps)]

    def fit(self) -> None:
        """Full-batch regression (MSE) of the buffer's rewards on standardised states."""
        x = torch.from_numpy(np.concatenate([s for s, _ in self.buffer]))
        y = torch.from_numpy(np.concatenate([r for _, r in self.buffer]))
        self.mean, self.std = x.mean(0), x.std(0) + 1e-3
        with torch.random.fork_rng(devices=[]):  # the init is seeded without touching the run's torch stream
            torch.manual_seed(self.seed + len(self.buffer))
            net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], self.hidden), torch.nn.Tanh(),
                                      torch.nn.Linear(self.hidden, self.hidden), torch.nn.Tanh(),
                                      torch.nn.Linear(self.hidden, 1))
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=1e-4)
        z = (x - self.mean) / self.std
        for _ in range(self.fit_iters):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(z).squeeze(-1), y)
            loss.backward()
            opt.step()
        self.net, self.loss = net.eval(), float(loss.detach())

    def load_buffer(self, buffer: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Restore a checkpointed buffer and refit: the same V the interrupted run had after that step."""
        self.buffer, self.net = [], None
        for states, rewards in buffer:
            self.add(states, rewards)
        if self.buffer:
            self.fit()

    @torch.no_grad()
    def __call__(self, states: np.ndarray) -> torch.Tensor:
        """(N, S) -> (N,) predicted episode reward."""
        assert self.net is not None, "fit the value before predicting"
        z = (torch.from_numpy(np.asarray(states, np.float32)) - self.mean) / self.std
        return self.net(z).squeeze(-1)

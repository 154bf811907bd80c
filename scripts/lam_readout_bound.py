"""How well can a latent-action objective name Pong's action when the paddle is handed to it?

The pixel LAM (``worldmodel.lam``) has to find the green paddle among the pixels before its
codes can name the action. This script removes that part of the job: its "frames" are the
paddle's read-out (``envs.readout.paddle_y``: the displacement of each transition, whether
the paddle is visible, its position), and it trains, on those sequences, the same objective
in one dimension:

- **LAM objective**: an encoder (1-D convolutions over the read-out, seeing ``x_{t-3..t+1}``,
  or with ``two-sided`` also ``x_{t+2..t+4}``) emits a code from a 3-level FSQ
  (``worldmodel.lam.FSQ``, batch-normalised input, as the shipped LAM); a decoder predicts the
  displacement ``d_t`` of ``x_t -> x_{t+1}`` from the read-out of the three transitions before
  it (displacement, visibility, position) and the code, never from ``d_t`` itself. No action labels are used. The codes are then scored by
  ``training.evaluate.score_latent_actions`` (Genie's recipe: a code -> action dictionary
  fitted on 200 labelled steps).
- **Supervised**: the same encoder trained with the true effective actions (cross-entropy),
  the bound for any code computed from this read-out.

Both train on ``--train`` (uniformly random play, ``data/pong-iid`` of the README) and are
scored on it and on ``--heldout``. What it printed in session 16 is in the README ("Latent
actions").

    python scripts/lam_readout_bound.py                          # 3 seeds, about 8 minutes on 2 cores
    python scripts/lam_readout_bound.py --seeds 0 --steps 500    # a quick look
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.games import get_game
from envs.readout import paddle_y
from recorders.dataset import DatasetError, EpisodeDataset
from training.evaluate import score_latent_actions
from worldmodel.lam import FSQ

HISTORY = 3          # displacements the decoder sees before d_t
CLIP = 64            # transitions per training clip


def load(path: str, group: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per episode: read-out ``(3, T)`` float32 (displacement / 4, visible, position scaled to
    [-1, 1]) and effective actions ``(T,)`` int64, where ``T`` is the episode's transitions
    (episodes shorter than a training clip are left out)."""
    out = []
    ds = EpisodeDataset(path)
    for i in range(len(ds)):
        e = ds[i]
        if len(e.actions) <= CLIP:
            continue
        y = paddle_y(e.frames)
        d = np.diff(y)
        feats = np.stack([np.nan_to_num(d) / 4, np.isfinite(d), np.nan_to_num(y[:-1], nan=32) / 32 - 1])
        out.append((torch.tensor(feats, dtype=torch.float32), torch.as_tensor(group[e.actions[:len(d)]])))
    return out


class Encoder(nn.Module):
    """``(B, 3, T)`` read-out -> ``(B, out, T)``: one output per transition, seeing the
    transition, the three before it and, if ``two_sided``, the three after it."""

    def __init__(self, out: int, two_sided: bool):
        super().__init__()
        self.pad = (HISTORY, HISTORY) if two_sided else (HISTORY, 0)
        width = 1 + sum(self.pad)
        self.net = nn.Sequential(nn.Conv1d(3, 64, width), nn.SiLU(), nn.Conv1d(64, 64, 1), nn.SiLU(),
                                 nn.Conv1d(64, out, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(F.pad(feats, self.pad))


class ReadoutLAM(nn.Module):
    """The LAM objective on the read-out: FSQ code of the encoder, decoder of ``d_t``."""

    def __init__(self, two_sided: bool):
        super().__init__()
        self.encoder = Encoder(1, two_sided)
        self.norm = nn.BatchNorm1d(1, affine=False)
        self.fsq = FSQ((3,))
        self.decoder = nn.Sequential(nn.Linear(3 * HISTORY + 1, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                                     nn.Linear(128, 1))

    def codes(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(3, T)`` -> FSQ values ``(T,)`` and codes ``(T,)`` int64."""
        z = self.encoder(feats[None])[0, 0]
        values, codes = self.fsq(self.norm(z[:, None]))
        return values[:, 0], codes

    def loss(self, feats: torch.Tensor) -> torch.Tensor:
        """Mean squared error of ``d_t`` over a clip ``(3, T)``, where ``d_t`` and ``d_{t-1}`` are seen."""
        values, _ = self.codes(feats)
        t = torch.arange(HISTORY, feats.shape[1])
        past = torch.cat([feats[:, t - k] for k in range(1, HISTORY + 1)]).T           # (n, 3 * HISTORY)
        pred = self.decoder(torch.cat([past, values[t, None]], dim=1))[:, 0]
        seen = feats[1, t] * feats[1, t - 1]
        return (((pred - feats[0, t]) ** 2) * seen).sum() / seen.sum().clamp(min=1)


def clips(data, rng: np.random.Generator, n: int):
    for i in rng.choice(len(data), n):
        feats, actions = data[i]
        s = int(rng.integers(0, feats.shape[1] - CLIP))
        yield feats[:, s:s + CLIP], actions[s:s + CLIP]


def train(model: nn.Module, data, loss_fn, steps: int, seed: int) -> None:
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        loss = sum(loss_fn(f, a) for f, a in clips(data, rng, 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default="data/pong-iid", help="uniformly random Pong play (no labels used)")
    parser.add_argument("--heldout", default="data/pong-heldout", help="held-out Pong dataset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps of 4 clips of 64 transitions")
    args = parser.parse_args()
    torch.set_num_threads(2)
    names, group = get_game("pong").effective_action_groups()
    try:
        sets = {"train": load(args.train, group), "heldout": load(args.heldout, group)}
    except DatasetError as err:
        raise SystemExit(f"error: {err}\nrecord them first: python -m recorders game=pong episodes=70 policy=random "
                         "max_repeat=1 max_steps=2000 workers=1 out=data/pong-iid; python -m recorders game=pong "
                         "episodes=6 max_steps=1500 policy=mixed seed=100000 out=data/pong-heldout") from None
    for name, data in sets.items():
        # An up or down the paddle does not show: the paddle is seen in both transitions and moves
        # in neither d_t nor d_{t+1} (the action moves it over two transitions), e.g. held
        # against a wall.
        still = [(f[0].abs() < 0.5 / 4) & (f[1] > 0) for f, _ in data]
        hidden = sum(int(((a != 0) & s & F.pad(s[1:], (0, 1), value=True)).sum()) for s, (_, a) in zip(still, data))
        steps = sum(len(a) for _, a in data)
        print(f"{name}: {steps} transitions; an up or down with the paddle seen but still in this transition and "
              f"the next: {hidden / steps:.1%}", flush=True)

    def scores(label, predict) -> None:
        for name, data in sets.items():
            with torch.no_grad():
                pred = np.concatenate([predict(f) for f, _ in data])
            truth = np.concatenate([a.numpy() for _, a in data])
            s = score_latent_actions(pred, truth, names, num_codes=3)
            print(f"{label:44s} {name:8s} accuracy {s['accuracy']:.1%} (majority {s['majority_baseline']:.1%})",
                  flush=True)

    for seed in args.seeds:
        for two_sided in (False, True):
            sides = "two-sided" if two_sided else "past"
            torch.manual_seed(seed)
            lam = ReadoutLAM(two_sided)
            train(lam, sets["train"], lambda f, a, m=lam: m.loss(f), args.steps, seed)
            scores(f"LAM objective, {sides} encoder, seed {seed}", lambda f, m=lam: m.codes(f)[1].numpy())
            torch.manual_seed(seed)
            clf = Encoder(len(names), two_sided)
            train(clf, sets["train"], lambda f, a, m=clf: F.cross_entropy(m(f[None])[0].T, a), args.steps, seed)
            # A classifier's prediction is its own "code": the 200-step dictionary maps it back.
            scores(f"supervised, {sides} encoder, seed {seed}", lambda f, m=clf: m(f[None])[0].argmax(0).numpy())


if __name__ == "__main__":
    main()

"""The reward and end model: what a transition earns, and whether the game is over with it,
read from the two frames it joins.

A separate model, as in DIAMOND (Alonso et al. 2024, "Diffusion for World Modeling: Visual
Details Matter in Atari", section 3: a reward/termination model beside the diffusion
model), rather than heads on the dynamics transformer: it sees pixels, so a one-pixel ball
leaving the screen or a score digit changing is in plain view; it trains in minutes on real
transitions; and the dream pays for it once per frame on the frame it shows.

The reward is classified by its sign (-1, 0, +1), as IRIS and DIAMOND do for Atari.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.config import RewardConfig
from worldmodel.tokenizer import frames_to_tensor

REWARD_CLASSES = (-1.0, 0.0, 1.0)
"""The reward's sign classes, in logit order."""
REWARD_CLASS_WEIGHTS = (20.0, 1.0, 20.0)
"""Cross-entropy class weights in training (non-zero rewards are rare)."""
END_POS_WEIGHT = 50.0
"""Positive-class weight of the end flag's binary cross-entropy in training (ends are rare)."""


def game_over_targets(frames: np.ndarray, terminated: np.ndarray) -> np.ndarray:
    """The end model's targets for one episode: the transitions into a finished game.

    A game may stop on a still screen before the emulator reports its end: Breakout shows
    its last frame unchanged for 0-6 steps (4-6 in most of random play's episodes) after the
    last ball is lost. Those transitions look alike, so from two frames no model can tell
    which one the emulator will flag; the game is over from the first of them. Each end flag
    is therefore spread back over the run of transitions whose next frame equals the frame
    the episode ends on. A game that ends on a moving screen (Pong) keeps its single flag.

    Args:
        frames: ``(T+1, H, W, 3)`` uint8 observations ``x_0 .. x_T``.
        terminated: ``(T,)`` bool, the recorded end flags (``terminated[t]``: the game ended
            with ``x_{t+1}``).

    Returns:
        ``(T,)`` bool targets.
    """
    out = np.asarray(terminated, bool).copy()
    for end in np.flatnonzero(out):
        t = end
        while t > 0 and np.array_equal(frames[t], frames[end + 1]):
            t -= 1
        out[t:end] = True
    return out


@dataclass
class RewardEndOutput:
    """Logits for ``B`` transitions.

    Attributes:
        reward_logits: ``(B, 3)`` float over :data:`REWARD_CLASSES`.
        end_logits: ``(B,)`` float, the logit of ``terminated``.
    """

    reward_logits: torch.Tensor
    end_logits: torch.Tensor

    def decode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The most likely outcome: rewards ``(B,)`` float32 (-1, 0 or +1) and terminated ``(B,)`` bool.

        Training weighted the classes (:data:`REWARD_CLASS_WEIGHTS`, :data:`END_POS_WEIGHT`),
        which multiplies each class's odds by its weight; subtracting the log weights
        recovers the unweighted posterior before the arg-max.
        """
        w = torch.tensor(REWARD_CLASS_WEIGHTS, device=self.reward_logits.device)
        cls = (self.reward_logits.float() - w.log()).argmax(-1)
        rewards = torch.tensor(REWARD_CLASSES, device=cls.device)[cls]
        return rewards, self.end_logits.float() > math.log(END_POS_WEIGHT)


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(min(8, c_out), c_out),
                         nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(min(8, c_out), c_out),
                         nn.SiLU())


class RewardEndModel(nn.Module):
    """A small CNN over ``(x_t, x_{t+1}, x_{t+1} - x_t)`` and the action ``a_t``.

    Stride-2 stages, then max and mean pooling (max keeps a small local event such as the
    ball crossing a goal line), the action's embedding, and an MLP to the reward and end
    logits.

    Args:
        cfg: widths and the action vocabulary.
    """

    def __init__(self, cfg: RewardConfig):
        super().__init__()
        self.cfg = cfg
        stages, c_prev = [], 9
        for c in cfg.channels:
            stages.append(_down(c_prev, c))
            c_prev = c
        self.encoder = nn.Sequential(*stages)
        self.action_emb = nn.Embedding(cfg.num_actions, cfg.hidden)
        self.head = nn.Sequential(nn.Linear(2 * c_prev + cfg.hidden, cfg.hidden), nn.SiLU(),
                                  nn.Linear(cfg.hidden, len(REWARD_CLASSES) + 1))

    def forward(self, prev: torch.Tensor, nxt: torch.Tensor, actions: torch.Tensor) -> RewardEndOutput:
        """Logits of ``B`` transitions.

        Args:
            prev: ``(B, 3, H, W)`` float in [-1, 1], the frame ``x_t``.
            nxt: ``(B, 3, H, W)`` float in [-1, 1], the frame ``x_{t+1}``.
            actions: ``(B,)`` int64 in ``[0, num_actions)``, the action ``a_t`` between them.
        """
        h = self.encoder(torch.cat([prev, nxt, nxt - prev], dim=1))                  # (B, C, h, w)
        pooled = torch.cat([h.amax(dim=(-2, -1)), h.mean(dim=(-2, -1))], dim=-1)     # (B, 2C)
        out = self.head(torch.cat([pooled, self.action_emb(actions)], dim=-1))       # (B, 4)
        return RewardEndOutput(reward_logits=out[:, :3], end_logits=out[:, 3])

    def predict(self, prev: torch.Tensor, nxt: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded outcome of transitions between uint8 frames.

        Args:
            prev, nxt: ``(B, H, W, 3)`` uint8 frames ``x_t`` and ``x_{t+1}``.
            actions: ``(B,)`` int64, the action ``a_t``.

        Returns:
            rewards ``(B,)`` float32 in {-1, 0, +1} and terminated ``(B,)`` bool.

        A model cast to bfloat16 (the Simulator's, at ``precision="bfloat16"``) reads the frames
        in bfloat16: it decided every one of 5,940 held-out Pong transitions (117 rewards) and
        1,728 random-play Breakout transitions (15 rewards, 10 ends) as the float32 model does
        (the shipped checkpoints).
        """
        dtype = self.head[0].weight.dtype
        return self(frames_to_tensor(prev).to(dtype), frames_to_tensor(nxt).to(dtype), actions).decode()


def reward_end_loss(model: RewardEndModel, frames: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                    terminated: torch.Tensor, sample_weights: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Class-weighted cross-entropy of the reward's sign plus weighted BCE of the end flag.

    Args:
        frames: ``(B, 2, 3, H, W)`` float in [-1, 1], ``x_t`` and ``x_{t+1}``.
        actions: ``(B,)`` int64 ``a_t``.
        rewards: ``(B,)`` float ``r_t`` (only its sign is used).
        terminated: ``(B,)`` bool, whether the game is over with ``x_{t+1}`` (the pipeline
            passes :func:`game_over_targets`, not the recorded flags).
        sample_weights: ``(B,)`` importance weights of a batch drawn with rare transitions
            over-represented (true probability / sampling probability); None: all 1.

    Returns:
        (scalar loss, ``{"reward": ..., "end": ...}`` the two terms).
    """
    out = model(frames[:, 0], frames[:, 1], actions)
    classes = torch.tensor(REWARD_CLASSES, device=frames.device)
    target = torch.bucketize(rewards.sign(), classes)                              # index into REWARD_CLASSES
    w = torch.ones_like(rewards, dtype=torch.float32) if sample_weights is None else sample_weights.float()
    rew = F.cross_entropy(out.reward_logits.float(), target, reduction="none",
                          weight=torch.tensor(REWARD_CLASS_WEIGHTS, device=frames.device))
    end = F.binary_cross_entropy_with_logits(out.end_logits.float(), terminated.float(), reduction="none",
                                             pos_weight=torch.tensor(END_POS_WEIGHT, device=frames.device))
    rew, end = (w * rew).sum() / w.sum(), (w * end).sum() / w.sum()
    return rew + end, {"reward": rew, "end": end}


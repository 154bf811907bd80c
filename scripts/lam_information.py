"""What a Pong latent-action model's codes carry, in bits of mutual information.

The codes of the held-out transitions against quantities read out of the frames
(``envs.readout``): the true effective action, the green paddle's position, displacement and
"acceleration" (displacement minus half the previous one), the orange paddle's displacement,
the ball's position and velocity. Continuous quantities are cut into 5 quantile bins. Also
prints how well the read-out alone names the action (a look-up table fitted in-sample: an
upper bound for any code that sees the same frames; with the previous action too, the bound
for a code read knowing the previous one), and what the code says about the action once the
previous action is known (a code that names the action relative to the previous one).

    python scripts/lam_information.py pong                        # a bundle's LAM
    python scripts/lam_information.py runs/lamx-iid3-pool         # a pipeline run's lam snapshot
    python scripts/lam_information.py pong --heldout training/heldout/pong
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from envs.games import get_game
from envs.readout import ball_xy, paddle_y
from recorders.dataset import EpisodeDataset
from training.evaluate import score_latent_actions
from worldmodel.tokenizer import frames_to_tensor


def load_lam(source: str):
    """A bundle name or directory, or a pipeline run directory with a ``lam`` snapshot."""
    run = Path(source)
    if (run / "lam").is_dir() and (run / "config.json").exists():
        from training.train_state import load_trained
        from worldmodel.config import LAMConfig
        from worldmodel.lam import LatentActionModel

        cfg = LAMConfig(**json.loads((run / "config.json").read_text())["model"]["lam"])
        return load_trained(run / "lam", LatentActionModel(cfg)).eval()
    import worldmodel

    lam = worldmodel.load(source).lam
    if lam is None:
        raise SystemExit(f"error: {source!r} has no latent-action model")
    return lam.eval()


def bins(x: np.ndarray, n: int = 5) -> np.ndarray:
    x = np.nan_to_num(x, nan=1e9)                 # "not visible" is a bin of its own
    return np.digitize(x, np.unique(np.quantile(x, np.linspace(0, 1, n + 1)[1:-1])))


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in bits, of two int arrays."""
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) @ joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / outer[nz])).sum())


def lookup_accuracy(action: np.ndarray, *features: np.ndarray) -> float:
    """Accuracy of the best action per distinct (rounded) feature tuple, fitted in-sample."""
    key = np.stack([np.round(np.nan_to_num(f, nan=-99) * 2).astype(int) for f in features], 1)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    counts = np.zeros((inv.max() + 1, action.max() + 1))
    np.add.at(counts, (inv.ravel(), action), 1)
    return float(counts.max(1).sum() / len(action))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="bundle name or directory, or a pipeline run directory")
    parser.add_argument("--heldout", default="data/pong-heldout", help="held-out Pong dataset")
    args = parser.parse_args()
    torch.set_num_threads(2)
    lam = load_lam(args.source)
    names, group = get_game("pong").effective_action_groups()
    ds = EpisodeDataset(args.heldout)
    cols: dict[str, list] = {k: [] for k in ("code", "action", "prev_action", "y", "disp", "prev", "opp",
                                             "bx", "by", "vx", "vy")}
    for i in range(len(ds)):
        e = ds[i]
        cols["code"].append(lam.infer(frames_to_tensor(torch.as_tensor(e.frames))).numpy())
        y = paddle_y(e.frames)
        disp = np.diff(y)
        ball = ball_xy(e.frames)
        cols["action"].append(group[e.actions])
        cols["prev_action"].append(np.concatenate([[0], group[e.actions[:-1]]]))
        cols["y"].append(y[:-1])
        cols["disp"].append(disp)
        cols["prev"].append(np.concatenate([[0.0], disp[:-1]]))
        cols["opp"].append(np.diff(paddle_y(e.frames, player=False)))
        cols["bx"].append(ball[:-1, 0])
        cols["by"].append(ball[:-1, 1])
        cols["vx"].append(np.diff(ball[:, 0]))
        cols["vy"].append(np.diff(ball[:, 1]))
    c = {k: np.concatenate(v) for k, v in cols.items()}
    code, action, prev = c["code"], c["action"], c["prev_action"]
    print(f"{args.source} on {args.heldout}: {len(code)} transitions, H(code) = "
          f"{mutual_information(code, code):.2f} bits, H(action) = {mutual_information(action, action):.2f} bits")
    rows = [("action", action), ("previous action", prev), ("green paddle position", bins(c["y"])),
            ("green paddle displacement", bins(c["disp"])),
            ("green paddle acceleration", bins(c["disp"] - 0.5 * c["prev"])),
            ("orange paddle displacement", bins(c["opp"])), ("ball x", bins(c["bx"])), ("ball y", bins(c["by"])),
            ("ball vx", bins(c["vx"])), ("ball vy", bins(c["vy"]))]
    for name, values in rows:
        print(f"  I(code; {name:27s}) = {mutual_information(code, values):.3f} bits")
    conditional = sum((prev == v).mean() * mutual_information(code[prev == v], action[prev == v]) for v in np.unique(prev))
    print(f"  I(code; action | previous action) = {conditional:.3f} bits (a code that names the action relative to "
          f"the previous one carries more here than unconditionally); in-sample look-up of the action from the code "
          f"{lookup_accuracy(action, code):.1%}, from the code and the previous action "
          f"{lookup_accuracy(action, code, prev):.1%}, from the previous action alone {lookup_accuracy(action, prev):.1%}")
    moved = np.isfinite(c["disp"])
    print("mean green paddle displacement (px) by (previous action, action): " + ", ".join(
        f"{names[p]}-{names[a]} {np.mean(c['disp'][moved & (prev == p) & (action == a)]):+.1f}"
        for p in range(len(names)) for a in range(len(names))))
    genie = score_latent_actions(code, action, names, num_codes=lam.fsq.num_codes)
    print(f"code -> action dictionary fitted on {genie['labelled_steps']} labelled steps (Genie's recipe, as "
          f"training.evaluate scores it): accuracy {genie['accuracy']:.1%}, majority {genie['majority_baseline']:.1%}, "
          f"perplexity {genie['perplexity']:.2f}")
    print("read-out alone names the action (in-sample look-up): displacement "
          f"{lookup_accuracy(action, c['disp']):.1%}, with the previous displacement "
          f"{lookup_accuracy(action, c['disp'], c['prev']):.1%}, and the position "
          f"{lookup_accuracy(action, c['disp'], c['prev'], c['y']):.1%}; displacement, previous displacement and "
          f"previous action {lookup_accuracy(action, c['disp'], c['prev'], prev):.1%} (what a code can name "
          "when the previous action is known)")


if __name__ == "__main__":
    main()

"""Checkpoint bundles: safetensors weights + a JSON config + the game's action and key maps.

A bundle is a directory::

    pong/
      config.json               # game, actions, key map, model configs, sampler, metrics
      dynamics.safetensors      # the dynamics model
      reward.safetensors        # the reward and end model, when trained
      tokenizer.safetensors     # only for a learned (conv) tokenizer
      lam.safetensors           # the latent-action model, when trained
      start_frames.safetensors  # real start windows: frames (K, T, H, W, 3) uint8, actions (K, T-1) int64

No pickles anywhere: loading a bundle runs no code from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from envs.games import GAMES, GameSpec
from worldmodel.device import resolve_device
from worldmodel.config import DynamicsConfig, LAMConfig, RewardConfig, SamplerConfig, TokenizerConfig, to_dict
from worldmodel.dynamics import DynamicsModel
from worldmodel.lam import LatentActionModel
from worldmodel.reward_model import RewardEndModel
from worldmodel.tokenizer import build_tokenizer

BUNDLE_FORMAT = "dreamgame-bundle"
BUNDLE_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"
"""Where the shipped bundles live; ``load("pong")`` reads ``SHIPPED_DIR / "pong"``."""
LAM_BEFORE_V2 = {"decoder_channels": None, "frame_differences": False, "spatial_readout": False,
                 "normalize_latent": False}
"""The latent-action model's design in bundles written before these config fields existed."""


class CheckpointError(ValueError):
    """A bundle is missing, incomplete or corrupt."""


@dataclass
class ModelBundle:
    """Everything a dream needs: models, configs, the game's actions and start frames.

    Attributes:
        game: game name (``"pong"``).
        action_meanings: one name per action the dynamics model is conditioned on.
        keymap: key chord -> action (see :class:`envs.games.GameSpec`).
        key_aliases: physical key -> logical key.
        fps: frames per second the dream is shown at.
        conditioning: ``"actions"`` (real actions) or ``"latent"`` (LAM codes).
        action_codes: for a ``"latent"`` bundle, the key-to-code map: the latent code each of
            the game's actions plays (``num_actions`` ints, fitted on a few labelled steps by
            :func:`worldmodel.latent_actions.fit_action_codes`); ``None``: played by codes.
        tokenizer, dynamics, lam, reward_model: the models (``lam`` and ``reward_model`` may
            be None; without a reward model the dream's rewards are 0 and it never ends).
        tokenizer_config, dynamics_config, lam_config, reward_config, sampler: their configs.
        start_frames: ``(K, T, H, W, 3) uint8`` real windows to start dreams from.
        start_actions: ``(K, T-1) int64`` the actions taken between those frames.
        info: free-form metadata (training command, metrics).
    """

    game: str
    action_meanings: list[str]
    keymap: dict[str, int]
    key_aliases: dict[str, str]
    fps: int
    conditioning: str
    tokenizer_config: TokenizerConfig
    dynamics_config: DynamicsConfig
    sampler: SamplerConfig
    tokenizer: torch.nn.Module
    dynamics: DynamicsModel
    start_frames: torch.Tensor
    start_actions: torch.Tensor
    lam_config: LAMConfig | None = None
    lam: LatentActionModel | None = None
    reward_config: RewardConfig | None = None
    reward_model: RewardEndModel | None = None
    action_codes: list[int] | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_actions(self) -> int:
        return len(self.action_meanings)

    @property
    def plays_game_actions(self) -> bool:
        """Whether players and agents step the dream with the game's actions: an ``"actions"``
        bundle, or a ``"latent"`` one through its key-to-code map (else with latent codes)."""
        return self.conditioning != "latent" or self.action_codes is not None

    @property
    def control_actions(self) -> int:
        """How many actions a player or agent steps the dream with: the game's actions, or the
        latent codes for a ``"latent"`` bundle without a key-to-code map."""
        return self.num_actions if self.plays_game_actions else self.dynamics_config.num_actions

    def to_conditioning(self, actions) -> np.ndarray:
        """Actions in ``range(control_actions)`` -> what the dynamics model is conditioned on.

        The game's actions pass through a ``"latent"`` bundle's key-to-code map
        (:attr:`action_codes`); otherwise they are returned as they are (int64).

        Raises:
            ValueError: an action out of ``range(control_actions)``.
        """
        a = np.asarray(actions, np.int64)
        bad = a[(a < 0) | (a >= self.control_actions)]
        if bad.size:
            raise ValueError(f"action {int(bad.flat[0])} out of range [0, {self.control_actions})")
        if self.conditioning == "latent" and self.action_codes is not None:
            return np.asarray(self.action_codes, np.int64)[a]
        return a

    @property
    def game_spec(self) -> GameSpec:
        """A :class:`GameSpec` view of the bundle's game (key map, actions, fps), with the
        registered game's effective actions where the game is registered with the same actions."""
        registered = GAMES.get(self.game)
        same = registered is not None and tuple(registered.action_meanings) == tuple(self.action_meanings)
        return GameSpec(name=self.game, env_id=f"worldmodel/Dream{self.game.capitalize()}-v0",
                        action_meanings=tuple(self.action_meanings), keymap=dict(self.keymap),
                        key_aliases=dict(self.key_aliases), fps=self.fps,
                        effective_actions=dict(registered.effective_actions) if same else {})

    @property
    def models(self) -> list[torch.nn.Module]:
        """The bundle's models that are present."""
        return [m for m in (self.tokenizer, self.dynamics, self.lam, self.reward_model) if m is not None]

    def to(self, device) -> "ModelBundle":
        for m in self.models:
            m.to(device)
        return self

    def eval(self) -> "ModelBundle":
        for m in self.models:
            m.eval()
        return self

    def save(self, path: str | Path, *, weights_dtype: torch.dtype | None = None) -> Path:
        """Write the bundle directory (created if needed) and return its path.

        Args:
            weights_dtype: store the models' floating-point weights as this dtype (such as
                ``torch.float16``, half the size); ``None`` keeps theirs. :func:`load` casts
                them back to float32.
        """
        path = Path(path)
        config = dict(
            format=BUNDLE_FORMAT, version=BUNDLE_VERSION, game=self.game, action_meanings=list(self.action_meanings),
            keymap=self.keymap, key_aliases=self.key_aliases, fps=self.fps, conditioning=self.conditioning,
            action_codes=self.action_codes, tokenizer=to_dict(self.tokenizer_config), dynamics=to_dict(self.dynamics_config),
            sampler=to_dict(self.sampler), lam=to_dict(self.lam_config) if self.lam_config else None,
            reward=to_dict(self.reward_config) if self.reward_model is not None else None, info=self.info)
        text = json.dumps(config, indent=2)  # fails before anything is written if info is not JSON
        path.mkdir(parents=True, exist_ok=True)
        weights = {"dynamics": self.dynamics, "lam": self.lam, "reward": self.reward_model}
        if any(True for _ in self.tokenizer.parameters()):
            weights["tokenizer"] = self.tokenizer
        for name, module in weights.items():
            if module is not None:
                save_file(_contiguous(module.state_dict(), weights_dtype), path / f"{name}.safetensors")
        save_file({"frames": self.start_frames.contiguous(), "actions": self.start_actions.contiguous()},
                  path / "start_frames.safetensors")
        (path / "config.json").write_text(text)
        return path


def _contiguous(state: dict, dtype: torch.dtype | None = None) -> dict:
    cast = lambda v: v.to(dtype) if dtype is not None and v.is_floating_point() else v  # noqa: E731
    return {k: cast(v.detach()).contiguous().cpu() for k, v in state.items()}


def resolve(name_or_path: str | Path) -> Path:
    """A shipped bundle's name (``"pong"``) or a bundle directory -> its path.

    Raises:
        CheckpointError: neither a shipped name nor an existing directory.
    """
    p = Path(name_or_path)
    if p.is_dir():
        return p
    shipped = SHIPPED_DIR / str(name_or_path)
    if "/" not in str(name_or_path) and shipped.is_dir():
        return shipped
    names = sorted(d.name for d in SHIPPED_DIR.iterdir() if d.is_dir()) if SHIPPED_DIR.is_dir() else []
    raise CheckpointError(f"no checkpoint {str(name_or_path)!r}: not a directory, and not a shipped name "
                          f"(shipped: {names})")


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: missing from the bundle")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt weights ({e})") from None


def _load_state(module: torch.nn.Module, path: Path) -> None:
    try:
        module.load_state_dict(_load_weights(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the config ({first})") from None


def available() -> list[str]:
    """Names of the shipped bundles."""
    return sorted(d.name for d in SHIPPED_DIR.iterdir() if (d / "config.json").exists()) if SHIPPED_DIR.is_dir() else []


def load(name_or_path: str | Path, *, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a checkpoint bundle.

    Args:
        name_or_path: a shipped name (``"pong"``) or a bundle directory.
        device: where to put the models.

    Returns:
        The :class:`ModelBundle`, in eval mode.

    Raises:
        CheckpointError: missing directory or file, unreadable config, corrupt weights,
            weights that do not fit the config.
        ValueError: an unknown device, or CUDA where there is none.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    path = resolve(name_or_path)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no config.json, not a checkpoint bundle") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / 'config.json'}: corrupt ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path / 'config.json'}: expected a JSON object, got {type(cfg).__name__}")
    if cfg.get("format") != BUNDLE_FORMAT or cfg.get("version") != BUNDLE_VERSION:
        raise CheckpointError(f"{path}: format {cfg.get('format')!r} v{cfg.get('version')!r} is not "
                              f"{BUNDLE_FORMAT!r} v{BUNDLE_VERSION}")
    try:
        tok_cfg = TokenizerConfig(**cfg["tokenizer"])
        # Bundles written before the previous-frame skip existed predict frames without it.
        dyn_cfg = DynamicsConfig(**{"prev_skip": False, **cfg["dynamics"]})
        lam_cfg = LAMConfig(**{**LAM_BEFORE_V2, **cfg["lam"]}) if cfg.get("lam") else None
        reward_cfg = RewardConfig(**cfg["reward"]) if cfg.get("reward") else None
        sampler = SamplerConfig(**cfg.get("sampler", {}))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'}: bad model config ({type(e).__name__}: {e})") from None
    tokenizer = build_tokenizer(tok_cfg)
    if tok_cfg.kind != "patch":
        _load_state(tokenizer, path / "tokenizer.safetensors")
    dynamics = DynamicsModel(dyn_cfg)
    _load_state(dynamics, path / "dynamics.safetensors")
    lam = None
    if lam_cfg is not None and (path / "lam.safetensors").exists():
        lam = LatentActionModel(lam_cfg)
        _load_state(lam, path / "lam.safetensors")
    reward_model = None
    if reward_cfg is not None:
        reward_model = RewardEndModel(reward_cfg)
        _load_state(reward_model, path / "reward.safetensors")
    starts = _load_weights(path / "start_frames.safetensors")
    missing = {"frames", "actions"} - set(starts)
    if missing:
        raise CheckpointError(f"{path / 'start_frames.safetensors'}: missing tensors {sorted(missing)}")
    bundle = ModelBundle(
        game=cfg["game"], action_meanings=list(cfg["action_meanings"]), keymap=dict(cfg["keymap"]),
        key_aliases=dict(cfg.get("key_aliases", {})), fps=int(cfg.get("fps", 15)),
        conditioning=cfg.get("conditioning", "actions"), tokenizer_config=tok_cfg, dynamics_config=dyn_cfg,
        sampler=sampler, tokenizer=tokenizer, dynamics=dynamics, start_frames=starts["frames"],
        start_actions=starts["actions"], lam_config=lam_cfg, lam=lam, reward_config=reward_cfg,
        reward_model=reward_model, action_codes=_action_codes(cfg, dyn_cfg, path), info=cfg.get("info", {}))
    return bundle.to(device).eval()


def _action_codes(cfg: dict, dyn_cfg: DynamicsConfig, path: Path) -> list[int] | None:
    """The config's key-to-code map, checked against the game's actions and the dynamics' codes."""
    codes = cfg.get("action_codes")
    if codes is None:
        return None
    n = len(cfg["action_meanings"])
    if (not isinstance(codes, list) or len(codes) != n
            or not all(isinstance(c, int) and 0 <= c < dyn_cfg.num_actions for c in codes)):
        raise CheckpointError(f"{path / 'config.json'}: action_codes must be {n} latent codes in "
                              f"[0, {dyn_cfg.num_actions}), got {codes!r}")
    return codes

"""Typed configuration of every model, and the named size presets.

``tiny`` trains in seconds for tests, ``cpu`` is the size of the shipped checkpoints
(trained on 2 CPU cores), ``gpu`` is for scale. The same names serve the Hydra configs
and the CLI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace


def check_positive(obj, *names: str) -> None:
    """Raise ValueError naming the first of ``names`` that is not a positive integer."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")


def to_dict(obj) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(obj).items()}


@dataclass
class TokenizerConfig:
    """Frames <-> latent tokens.

    Attributes:
        kind: ``"patch"`` (plain patchify of pixels, lossless, nothing to train) or
            ``"conv"`` (a convolutional autoencoder, 8x spatial down-sampling).
        frame_size: input frame height and width in pixels.
        patch_size: patch side for ``patch`` (tokens per frame = (frame_size / patch_size)^2).
        latent_channels: channels of the latent grid for ``conv``.
        hidden_channels: widths of the ``conv`` encoder's stages (the decoder mirrors them).
    """

    kind: str = "patch"
    frame_size: int = 64
    patch_size: int = 8
    latent_channels: int = 16
    hidden_channels: tuple[int, ...] = (32, 64, 128)

    def __post_init__(self):
        check_positive(self, "frame_size", "patch_size", "latent_channels")
        if self.kind not in ("patch", "conv"):
            raise ValueError(f"tokenizer kind must be 'patch' or 'conv', got {self.kind!r}")
        self.hidden_channels = tuple(self.hidden_channels)
        if self.frame_size % self.downsample:
            raise ValueError(f"frame_size {self.frame_size} is not a multiple of {self.downsample}")

    @property
    def downsample(self) -> int:
        return self.patch_size if self.kind == "patch" else 2 ** len(self.hidden_channels)

    @property
    def grid(self) -> int:
        """Tokens per side of a frame."""
        return self.frame_size // self.downsample

    @property
    def tokens_per_frame(self) -> int:
        return self.grid ** 2

    @property
    def token_dim(self) -> int:
        return 3 * self.patch_size ** 2 if self.kind == "patch" else self.latent_channels


@dataclass
class LAMConfig:
    """Genie-style latent-action model.

    Attributes:
        history: frames before ``x_t`` the encoder and decoder also see (momentum).
        fsq_levels: levels per dimension of the finite scalar quantizer; the codebook size
            is their product.
        channels: conv widths of the encoder.
        decoder_channels: conv widths of the decoder (``None``: the encoder's).
        frame_size: frame height and width.
        frame_differences: the encoder also sees the differences of consecutive frames.
        spatial_readout: the encoder reads its last feature map out whole (flattened), where
            the object that moved is, instead of averaging it over the frame.
        normalize_latent: batch-normalise the quantizer's input, so that the codes stay spread
            over the codebook (without it the shipped Pong LAM collapsed onto one code).
        decoder_differences: the decoder also sees the differences of consecutive past frames
            (the objects' velocities), so that motion the history already implies need not
            be carried by the code.
    """

    history: int = 2
    fsq_levels: tuple[int, ...] = (3, 3)
    channels: tuple[int, ...] = (32, 64, 128, 128)
    decoder_channels: tuple[int, ...] | None = (16, 32, 64, 64)
    frame_size: int = 64
    frame_differences: bool = True
    spatial_readout: bool = True
    normalize_latent: bool = True
    decoder_differences: bool = False

    def __post_init__(self):
        self.fsq_levels = tuple(self.fsq_levels)
        self.channels = tuple(self.channels)
        self.decoder_channels = tuple(self.decoder_channels) if self.decoder_channels else None
        check_positive(self, "history", "frame_size")
        if not self.fsq_levels or min(self.fsq_levels) < 2:
            raise ValueError(f"LAMConfig.fsq_levels must be levels >= 2, got {self.fsq_levels}")
        if self.spatial_readout and self.frame_size % 2 ** len(self.channels):
            raise ValueError(f"LAMConfig.spatial_readout needs frame_size {self.frame_size} divisible by "
                             f"2 ** {len(self.channels)} (one halving per encoder layer)")

    @property
    def num_codes(self) -> int:
        n = 1
        for level in self.fsq_levels:
            n *= level
        return n


@dataclass
class RewardConfig:
    """The reward and end model (:class:`worldmodel.reward_model.RewardEndModel`).

    Attributes:
        channels: widths of its stride-2 convolution stages.
        hidden: width of the action embedding and of the MLP.
        num_actions: action vocabulary (set from the game by the pipeline).
    """

    channels: tuple[int, ...] = (32, 64, 64, 128)
    hidden: int = 128
    num_actions: int = 6

    def __post_init__(self):
        self.channels = tuple(self.channels)
        check_positive(self, "hidden", "num_actions")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"RewardConfig.channels must be positive widths, got {self.channels}")


@dataclass
class DynamicsConfig:
    """Action-conditioned diffusion-forcing transformer over frame tokens.

    Attributes:
        width: model width D.
        depth: transformer blocks.
        heads: attention heads (``width`` must divide by it).
        mlp_ratio: hidden width of the MLP over D.
        context_frames: frames the model attends over, the new one included; training
            windows and the runtime's KV cache use this same window.
        num_actions: conditioning vocabulary (real actions or latent codes); one more index
            is reserved for "no action" (an episode's first frame).
        token_dim: size of one input token (from the tokenizer).
        tokens_per_frame: tokens per frame (from the tokenizer).
        rope_base: base of the rotary embedding over (frame, row, column) positions.
        prev_skip: predict each frame as a correction of the previous frame's clean tokens
            (``x0_hat = prev + f(...)``; the real previous frame in training, the previous
            generated frame at inference), so an untrained model copies the last frame and
            training spends its effort on what moves. Bundles written before this option
            have it off.
        palette_size: 0: the model regresses each frame's tokens (mean squared error). K > 0:
            with a patch tokenizer, the model classifies every pixel into a palette of the K
            most common colours of the training frames, trained with cross-entropy (the
            categorical x0-parameterisation of CDCD, Dieleman et al. 2022, "Continuous
            diffusion for categorical data"), and a frame is the most likely colour of each
            pixel: sharp objects where a regression predicts their blurred mean. With
            ``prev_skip`` a learned bias favours each pixel's previous colour, so an untrained
            model copies the last frame.
        local_mixing: add a 3x3 depthwise convolution over each frame's token grid at the
            start of every block (a residual branch, zero at first), so a token reads its
            neighbours' features at exact relative positions: the positional encoding
            generator of CPVT (Chu et al. 2023, "Conditional Positional Encodings for Vision
            Transformers"), in every block. Made against the copies of Pong's ball that a
            one-step dream draws in neighbouring 8x8 patches; in a 50-minute CPU run it did not
            reduce them (docs/experiments.md). A warm start from a bundle without it starts the
            convolutions at zero (the same model).
        reward_clock: 0: off. C > 0: each frame is also conditioned on how many frames before
            it the last non-zero reward came (the clock of the frame before it, capped at ``C``;
            ``C`` also stands for "none seen"): a summary of the episode's reward history
            reaching past the context window. Pong serves the ball exactly 17 frames after each
            point, more than the 8-frame context can count; the Simulator keeps the clock from
            its reward model's predictions. The embeddings start at zero, so a warm start from
            a bundle without it starts from the same model.
        event_codes: 0: off. K > 0: each frame is also conditioned on a discrete latent, one of
            K codes per frame, that says which of the transitions the past leaves open happened
            (a paddle that jumps now or a frame later, a serve now or not), so that every token
            of the frame draws the same one: a per-frame stochastic latent with a learned prior
            (SVG-LP, Denton & Fergus 2018, "Stochastic Video Generation with a Learned Prior"),
            categorical as DreamerV2's (Hafner et al. 2021). In training the code comes from a
            posterior that sees the real frame it explains (straight-through Gumbel-softmax
            sample), and a prior from the frames before it learns the posterior's distribution;
            a dream samples the prior (:class:`~worldmodel.simulator.Simulator`). The code's
            embeddings start at zero, so a warm start from a bundle without it starts from the
            same model.
    """

    width: int = 192
    depth: int = 6
    heads: int = 6
    mlp_ratio: float = 4.0
    context_frames: int = 8
    num_actions: int = 6
    token_dim: int = 192
    tokens_per_frame: int = 64
    rope_base: float = 10_000.0
    prev_skip: bool = True
    palette_size: int = 0
    local_mixing: bool = False
    reward_clock: int = 0
    event_codes: int = 0

    def __post_init__(self):
        check_positive(self, "width", "depth", "heads", "context_frames", "num_actions", "token_dim",
                       "tokens_per_frame")
        if self.palette_size < 0 or self.palette_size == 1:
            raise ValueError(f"palette_size must be 0 (regression) or >= 2 colours, got {self.palette_size}")
        if self.palette_size and self.token_dim % 3:
            raise ValueError(f"palette_size needs tokens of RGB pixels (a patch tokenizer): token_dim {self.token_dim} "
                             f"is not a multiple of 3")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        head_dim = self.width // self.heads
        if head_dim % 2 or head_dim < 6:
            raise ValueError(f"head dimension {head_dim} must be even and >= 6 for the 3-D rotary embedding")
        if self.context_frames < 2:
            raise ValueError(f"context_frames must be >= 2, got {self.context_frames}")
        if self.reward_clock < 0:
            raise ValueError(f"reward_clock must be 0 (off) or a cap of >= 1 frames, got {self.reward_clock}")
        if self.event_codes < 0 or self.event_codes == 1:
            raise ValueError(f"event_codes must be 0 (off) or >= 2 codes, got {self.event_codes}")
        if self.local_mixing and self.token_grid ** 2 != self.tokens_per_frame:
            raise ValueError(f"local_mixing needs a square grid of tokens, got tokens_per_frame {self.tokens_per_frame}")

    @property
    def token_grid(self) -> int:
        """Side of the square grid of a frame's tokens (rows = columns)."""
        return int(round(self.tokens_per_frame ** 0.5))


@dataclass
class SamplerConfig:
    """How a new frame is denoised at inference.

    Attributes:
        steps: denoising steps per frame.
        context_noise: noise level the finished frame is written into the KV cache with
            (0 = clean; a little noise makes long rollouts more robust, Diffusion Forcing).
        noise_shift: shift of the noise levels towards 1, the same in training and
            sampling (:func:`worldmodel.diffusion.shift_noise_levels`; 1 = none).
        quantize_frames: with a lossless (patch) tokenizer, continue each dream from the
            uint8 frame it showed (re-encoded), not from the float prediction: the dream's
            state is exactly what the player saw, and errors under half a colour level do
            not pile up from frame to frame.
        change_threshold: with ``quantize_frames``, a pixel of a new frame that differs from
            the same pixel of the previous frame by less than this many uint8 levels in every
            channel keeps its previous value (0 = off). For games drawn in a few flat colours
            (Atari), where a real change is a jump between palette colours, this stops the
            small per-step errors of a model that predicts a correction of the previous
            frame from accumulating over a long rollout.
        temperature: with a palette model (``DynamicsConfig.palette_size``): 0 draws each
            pixel's most likely colour; above 0 colours are drawn at this temperature, one
            Gumbel draw per token and colour (:func:`worldmodel.diffusion.sample_palette_colours`),
            so that an event the model expects on one of several frames is drawn on one of them.
            Runs on the torch backend.
        event_temperature: with a model with event codes (``DynamicsConfig.event_codes``): each
            frame's code is drawn from the learned prior at this temperature (1: the prior as
            learnt; 0: its most likely code, so an event less likely than not on every frame is
            never drawn).
    """

    steps: int = 4
    context_noise: float = 0.0
    noise_shift: float = 3.0
    quantize_frames: bool = True
    change_threshold: int = 0
    temperature: float = 0.0
    event_temperature: float = 1.0

    def __post_init__(self):
        check_positive(self, "steps")
        if not self.noise_shift > 0:
            raise ValueError(f"SamplerConfig.noise_shift must be > 0, got {self.noise_shift!r}")
        if not 0 <= self.change_threshold <= 255:
            raise ValueError(f"SamplerConfig.change_threshold must be in [0, 255], got {self.change_threshold!r}")
        if not 0.0 <= self.context_noise < 1.0:
            raise ValueError(f"SamplerConfig.context_noise must be in [0, 1), got {self.context_noise!r}")
        if not self.temperature >= 0:
            raise ValueError(f"SamplerConfig.temperature must be >= 0, got {self.temperature!r}")
        if not self.event_temperature >= 0:
            raise ValueError(f"SamplerConfig.event_temperature must be >= 0, got {self.event_temperature!r}")


@dataclass
class ModelPreset:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    lam: LAMConfig = field(default_factory=LAMConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(
        tokenizer=TokenizerConfig(kind="patch", patch_size=8, hidden_channels=(8, 16, 16), latent_channels=4),
        lam=LAMConfig(history=1, channels=(8, 16, 16, 16), decoder_channels=None),
        dynamics=DynamicsConfig(width=64, depth=2, heads=2, context_frames=4),
        sampler=SamplerConfig(steps=2),
        reward=RewardConfig(channels=(8, 16), hidden=16),
    ),
    # One sampling step, and sub-threshold changes kept out (chosen on held-out figures; README).
    "cpu": ModelPreset(sampler=SamplerConfig(steps=1, change_threshold=48)),
    "gpu": ModelPreset(
        tokenizer=TokenizerConfig(kind="patch", patch_size=8),
        lam=LAMConfig(channels=(64, 128, 256, 256), decoder_channels=(32, 64, 128, 128)),
        dynamics=DynamicsConfig(width=512, depth=12, heads=8, context_frames=16),
    ),
}


def get_preset(name: str) -> ModelPreset:
    """A fresh copy of a named preset.

    Raises:
        ValueError: unknown preset name (the message lists the known ones).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    p = PRESETS[name]
    return ModelPreset(*(replace(getattr(p, f.name)) for f in fields(p)))


def update_dataclass(obj, overrides: dict | None, *, where: str):
    """Return a copy of dataclass ``obj`` with ``overrides`` applied.

    Raises:
        ValueError: an override names a field the dataclass does not have, or gives a value
            of the wrong type or range.
    """
    if not overrides:
        return replace(obj)
    names = {f.name for f in fields(obj)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown {where} setting(s) {sorted(unknown)}; known: {sorted(names)}")
    try:
        return replace(obj, **overrides)
    except (TypeError, ZeroDivisionError) as e:
        raise ValueError(f"bad {where} setting in {overrides}: {e}") from None


"""What the held keys mean to the dream: the game's key map, or digit keys choosing a latent code.

A checkpoint trained on real actions (``conditioning="actions"``) is played with the game's
key map. A checkpoint whose dynamics are conditioned on latent-action codes
(``conditioning="latent"``, Genie's set-up) is played with the game's keys through its
key-to-code map (``ModelBundle.action_codes``, fitted on a few labelled steps) when it has
one, or with the digit keys: pressing ``k`` chooses code ``k``, which is then held on every
step until another digit is pressed.
"""

from __future__ import annotations

from worldmodel.bundle import ModelBundle

DIGIT_KEYS = tuple(str(d) for d in range(10))
"""pygame's names of the digit keys; the keypad's are the same in brackets (``"[3]"``)."""


class KeymapControls:
    """The game's key map: held keys -> action id (``GameSpec.action_for_keys``), for a latent
    checkpoint through its key-to-code map (``ModelBundle.to_conditioning``).

    Args:
        model: the checkpoint bundle, whose key map is used.
    """

    latent = False

    def __init__(self, model: ModelBundle):
        self.model, self.spec = model, model.game_spec

    def action(self, held: set[str]) -> int:
        """What the dynamics model is conditioned on for the held key names."""
        return int(self.model.to_conditioning(self.spec.action_for_keys(held)))

    def press(self, key: str) -> str | None:
        """A key went down; the key map needs no edge events, so there is nothing to report."""
        return None

    def help_lines(self) -> list[str]:
        """One line per key chord of the key map: ``"Up/W  RIGHT"``."""
        names: dict[str, list[str]] = {}
        for physical, logical in self.spec.key_aliases.items():
            names.setdefault(logical, []).append(physical.upper())
        lines = []
        for chord, action in self.spec.keymap.items():
            if not chord:
                continue
            keys = "+".join("/".join([k.capitalize(), *names.get(k, [])]) for k in chord.split("+"))
            lines.append(f"{keys}  {self.spec.action_meanings[action]}")
        return lines

    def status(self) -> str:
        """Nothing to show in the HUD: the keys speak for themselves."""
        return ""


class LatentCodeControls:
    """Digit keys choose the latent-action code the dream is conditioned on, held until changed.

    Args:
        num_codes: codes the dynamics model knows; only digits below it (and below 10) choose.
        code: the code held at the start.

    Attributes:
        code: the code held now.
    """

    latent = True

    def __init__(self, num_codes: int, *, code: int = 0):
        if not 0 <= code < num_codes:
            raise ValueError(f"start code {code} out of range [0, {num_codes})")
        self.num_codes, self.code = num_codes, code

    def action(self, held: set[str]) -> int:
        """The held code (the keys held now do not matter; the last digit pressed does)."""
        return self.code

    def press(self, key: str) -> str | None:
        """A key went down: a digit chooses its code.

        Returns:
            A message for the player when the key was a digit (the new code, or why it was
            refused), else ``None``.
        """
        digit = key.strip("[]")
        if digit not in DIGIT_KEYS:
            return None
        k = int(digit)
        if k >= self.num_codes:
            return f"no latent code {k}: this checkpoint has codes 0-{self.num_codes - 1}"
        self.code = k
        return f"latent code {k}"

    def help_lines(self) -> list[str]:
        """The digit keys and what they choose."""
        last = min(self.num_codes, len(DIGIT_KEYS)) - 1
        lines = [f"0-{last}  choose the latent-action code (held until changed)"]
        if self.num_codes > len(DIGIT_KEYS):
            lines.append(f"(codes {len(DIGIT_KEYS)}-{self.num_codes - 1} have no key)")
        return lines

    def status(self) -> str:
        """The held code for the HUD: ``"code 3/9"``."""
        return f"code {self.code}/{self.num_codes}"


def make_controls(model: ModelBundle, *, num_codes: int, latent_keys: bool | None = None):
    """The controls a checkpoint is played with.

    Args:
        model: the checkpoint bundle.
        num_codes: the dynamics model's conditioning vocabulary (``Simulator.num_actions``).
        latent_keys: ``True`` asks for latent-code digit keys, ``False`` for the game's key
            map, ``None`` takes the key map where the checkpoint can use it.

    Returns:
        :class:`LatentCodeControls` for a ``"latent"`` checkpoint without a key-to-code map
        (or with ``latent_keys``), else :class:`KeymapControls`.

    Raises:
        ValueError: ``latent_keys`` contradicts the checkpoint's conditioning (the message
            names it), or the conditioning is unknown.
    """
    conditioning = model.conditioning
    if conditioning not in ("actions", "latent"):
        raise ValueError(f"unknown conditioning {conditioning!r} in the {model.game!r} checkpoint; "
                         f"expected 'actions' or 'latent'")
    if latent_keys and conditioning != "latent":
        raise ValueError(f"latent_keys=true needs a checkpoint conditioned on latent-action codes, but this "
                         f"{model.game!r} checkpoint has conditioning={conditioning!r}; play it with the game's keys "
                         f"(latent_keys=null)")
    if latent_keys is False and not model.plays_game_actions:
        raise ValueError(f"this {model.game!r} checkpoint has conditioning='latent' and no key-to-code map: its "
                         f"dynamics take latent-action codes, so it is played with the digit keys (latent_keys=null)")
    if latent_keys or not model.plays_game_actions:
        return LatentCodeControls(num_codes)
    return KeymapControls(model)

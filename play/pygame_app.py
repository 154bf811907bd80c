"""The pygame front-end: the dream scaled up in a window, keyboard in, HUD on top.

Keys: the game's key map (Pong: Up/W and Down/S move the paddle, Space is FIRE),
R resets the dream from real frames, Esc quits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from play.session import PlaySession


@dataclass
class WindowConfig:
    """Attributes:
        scale: window pixels per frame pixel.
        fps: ticks per second (``None``: the game's own, 0: as fast as possible).
        headless: run without a screen (SDL's dummy video driver) for ``steps`` steps.
        steps: steps to run headless.
        keys: scripted key chords for headless play: ``"up:8 down:8"`` holds Up for 8
            steps then Down for 8, cycled; ``none`` holds nothing; entries are separated by
            spaces or commas.
        save_frames: directory to save every window frame to as PNG (headless or not).
        screenshot: save the last window frame to this PNG path.
    """

    scale: int = 8
    fps: float | None = None
    headless: bool = False
    steps: int = 200
    keys: str = "up:8 down:8"
    save_frames: str | None = None
    screenshot: str | None = None


def parse_key_script(script: str) -> list[set[str]]:
    """``"up:8 down+space:2 none:3"`` -> one set of held keys per step (one cycle).

    Raises:
        ValueError: a malformed entry (the message quotes it).
    """
    steps: list[set[str]] = []
    for entry in script.replace(",", " ").split():
        chord, _, count = entry.partition(":")
        try:
            n = int(count) if count else 1
        except ValueError:
            raise ValueError(f"bad key script entry {entry!r}: expected CHORD:COUNT such as 'up:8'") from None
        if n < 1:
            raise ValueError(f"bad key script entry {entry!r}: the count must be >= 1")
        keys = set() if chord in ("", "none") else set(chord.split("+"))
        steps += [keys] * n
    if not steps:
        raise ValueError(f"empty key script {script!r}")
    return steps


class PygameApp:
    """Runs a :class:`PlaySession` in a pygame window."""

    HELP = "R reset   Esc quit"

    def __init__(self, session: PlaySession, cfg: WindowConfig):
        if cfg.headless:
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        import pygame

        self.pg, self.session, self.cfg = pygame, session, cfg
        pygame.display.init()  # no pygame.init(): the audio mixer is not needed
        pygame.font.init()
        h, w = session.frame.shape[:2]
        self.screen = pygame.display.set_mode((w * cfg.scale, h * cfg.scale))
        pygame.display.set_caption(f"dream {session.spec.name}")
        self.font = pygame.font.Font(None, max(16, 3 * cfg.scale))
        self.clock = pygame.time.Clock()
        self.held: set[str] = set()
        self.message = ""
        self.script = parse_key_script(cfg.keys) if cfg.headless else None
        self.frames_dir = Path(cfg.save_frames) if cfg.save_frames else None
        if self.frames_dir:
            self.frames_dir.mkdir(parents=True, exist_ok=True)

    def _controls_text(self) -> str:
        spec = self.session.spec
        names = {v: k for k, v in spec.key_aliases.items()}
        parts = []
        for chord, action in spec.keymap.items():
            if chord and "+" not in chord:
                alias = f"/{names[chord].upper()}" if chord in names else ""
                parts.append(f"{chord.capitalize()}{alias} {spec.action_meanings[action]}")
        return "   ".join(parts)

    def _draw(self, frame: np.ndarray) -> None:
        pg, s = self.pg, self.session
        surf = pg.surfarray.make_surface(np.ascontiguousarray(frame.swapaxes(0, 1)))
        self.screen.blit(pg.transform.scale(surf, self.screen.get_size()), (0, 0))
        hud = (f"{s.model.game}   {s.fps:4.1f} fps   {s.latency_ms:5.1f} ms ({s.sim.backend})   "
               f"step {s.step_count}   score {s.score:+.0f}")
        self._text(hud, (4, 4))
        self._text(self._controls_text() + "   " + self.HELP, (4, self.screen.get_height() - self.font.get_height() - 4))
        if self.message:
            self._text(self.message, (4, 8 + self.font.get_height()))
        pg.display.flip()

    def _text(self, text: str, pos: tuple[int, int]) -> None:
        img = self.font.render(text, True, (255, 255, 255))
        bg = self.pg.Surface((img.get_width() + 6, img.get_height() + 2), self.pg.SRCALPHA)
        bg.fill((0, 0, 0, 150))
        self.screen.blit(bg, (pos[0] - 3, pos[1] - 1))
        self.screen.blit(img, pos)

    def _events(self) -> bool:
        """Handle input; False when the player quits."""
        pg = self.pg
        for event in pg.event.get():
            if event.type == pg.QUIT:
                return False
            if event.type == pg.KEYDOWN:
                name = pg.key.name(event.key)
                if name == "escape":
                    return False
                if name == "r":
                    self.session.reset()
                    self.message = "reset from real frames"
                self.held.add(name)
            elif event.type == pg.KEYUP:
                self.held.discard(pg.key.name(event.key))
        return True

    def run(self) -> int:
        """Play until Esc (or ``steps`` steps headless); returns the number of steps played."""
        fps = self.session.spec.fps if self.cfg.fps is None else self.cfg.fps
        played = 0
        try:
            self._draw(self.session.frame)
            while self._events():
                if self.script is not None:
                    if played >= self.cfg.steps:
                        break
                    self.held = self.script[played % len(self.script)]
                result = self.session.step(self.session.action_for_keys(self.held))
                if result.terminated:
                    self.message = "the dream predicts the game ended (R restarts)"
                self._draw(result.frame)
                played += 1
                if self.frames_dir:
                    self.pg.image.save(self.screen, str(self.frames_dir / f"frame_{played:05d}.png"))
                if fps and self.script is None:
                    self.clock.tick(fps)
            if self.cfg.screenshot:
                Path(self.cfg.screenshot).parent.mkdir(parents=True, exist_ok=True)
                self.pg.image.save(self.screen, self.cfg.screenshot)
        finally:
            self.pg.quit()
        return played

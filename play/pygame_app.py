"""The pygame front-end: the dream scaled up in a window, keyboard in, HUD on top.

Keys: the game's key map (Pong: Up/W and Down/S move the paddle, Space is FIRE; for a
``conditioning="latent"`` checkpoint through its key-to-code map), or the digit keys choosing a
latent-action code for a latent checkpoint without a map (or with ``latent_keys=True``);
H or F1 shows every key, P pauses, R restarts the dream from real frames, Tab re-syncs the
dream to the real game (side-by-side mode), Esc quits.

Side by side (``side_by_side=True``), the real game runs on the left with the same keys and
the dream on the right, so the player sees where the dream departs from the game. The
session can be recorded into the project's dataset format (``record``) and to a video.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.games import GAMES
from play.controls import make_controls
from play.real_game import RealGame
from play.recording import EpisodeRecorder, VideoRecorder, check_video_path
from play.session import PlaySession

RECORD_SOURCES = ("dream", "real", "both")
SCRIPT_ALIASES = {"sync": "tab", "pause": "p", "help": "h", "reset": "r", "quit": "escape"}
"""Readable names for the command keys in key scripts: ``"up:4 sync up:4"`` presses Tab once."""
RESYNC_KEY = "tab"
HUD_WHITE, LABEL_REAL, LABEL_DREAM = (255, 255, 255), (140, 235, 140), (140, 190, 255)
PAUSED_TICK_HZ = 30
"""Ticks per second while paused, so an unthrottled window does not spin."""


@dataclass
class WindowConfig:
    """Attributes:
        scale: window pixels per frame pixel.
        fps: ticks per second (``None``: the game's own, 0: as fast as possible).
        headless: run without a screen (SDL's dummy video driver) for ``steps`` ticks.
        steps: ticks to run headless (each one steps the game unless paused).
        keys: scripted key chords for headless play: ``"up:8 down:8"`` holds Up for 8
            ticks then Down for 8, cycled; ``none`` holds nothing; entries are separated by
            spaces or commas. A key that goes down acts as a key press, so ``p``, ``r``, ``h``,
            ``tab`` and digits work as on a keyboard; ``sync``, ``pause``, ``help``, ``reset``
            and ``quit`` name Tab, P, H, R and Esc.
        save_frames: directory to save every window frame to as PNG (headless or not).
        screenshot: save the last window frame to this PNG path.
        side_by_side: run the real game (``envs.make``) beside the dream with the same keys;
            Tab re-syncs the dream to the real game's latest frames.
        latent_keys: ``True``: choose latent-action codes with the digit keys (needs a
            ``conditioning="latent"`` checkpoint); ``False``: the game's key map (needs an
            ``"actions"`` checkpoint or a latent one with a key-to-code map); ``None``: the
            key map where the checkpoint has one, else the digit keys.
        record: what to write as dataset episodes: ``"dream"``, ``"real"`` (needs
            ``side_by_side``), ``"both"`` or ``None``.
        record_out: dataset root; the dream's episodes go to ``<record_out>/dream``, the real
            game's to ``<record_out>/real`` (appended to if they exist).
        video: write the window, as shown, to this ``.mp4`` (needs imageio-ffmpeg) or ``.gif``.
        seed: seed of the real game's first episode.

    Raises:
        ValueError: an unknown ``record`` value, ``record`` without ``record_out``,
            ``record="real"`` or ``"both"`` without ``side_by_side``, a bad video suffix, or
            a scale below 1.
    """

    scale: int = 8
    fps: float | None = None
    headless: bool = False
    steps: int = 200
    keys: str = "up:8 down:8"
    save_frames: str | None = None
    screenshot: str | None = None
    side_by_side: bool = False
    latent_keys: bool | None = None
    record: str | None = None
    record_out: str | None = None
    video: str | None = None
    seed: int = 0

    def __post_init__(self):
        if self.scale < 1:
            raise ValueError(f"scale must be >= 1, got {self.scale}")
        if self.record is not None:
            if self.record not in RECORD_SOURCES:
                raise ValueError(f"record={self.record!r}: expected one of {RECORD_SOURCES} or null")
            if not self.record_out:
                raise ValueError(f"record={self.record!r} needs record_out=DIR, the dataset directory")
            if self.record != "dream" and not self.side_by_side:
                raise ValueError(f"record={self.record!r} records the real game, which runs with side_by_side=true")
        if self.video:
            check_video_path(self.video)

    @property
    def records(self) -> tuple[str, ...]:
        """The sides recorded: a subset of ``("dream", "real")``."""
        if self.record is None:
            return ()
        return ("dream", "real") if self.record == "both" else (self.record,)


def parse_key_script(script: str) -> list[set[str]]:
    """``"up:8 down+space:2 none:3"`` -> one set of held keys per tick (one cycle).

    Command names (:data:`SCRIPT_ALIASES`: ``sync``, ``pause``, ``help``, ``reset``,
    ``quit``) become their keys' names.

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
        keys = set() if chord in ("", "none") else {SCRIPT_ALIASES.get(k, k) for k in chord.split("+")}
        steps += [keys] * n
    if not steps:
        raise ValueError(f"empty key script {script!r}")
    return steps


class PygameApp:
    """Runs a :class:`PlaySession` in a pygame window, with the real game beside it if asked.

    Args:
        session: the dream.
        cfg: window, mode and recording options.

    Attributes:
        controls: what the held keys mean to the dream (:mod:`play.controls`).
        real: the real game in side-by-side mode, else ``None``.
        show_help: the help overlay is shown.
        paused: the game is paused (nothing steps).

    Raises:
        ValueError: latent keys asked of an ``"actions"`` checkpoint or the reverse; side by
            side with a latent checkpoint that has no latent-action model to label the real
            frames; a game without a real counterpart in side-by-side mode.
    """

    def __init__(self, session: PlaySession, cfg: WindowConfig):
        model = session.model
        self.session, self.cfg = session, cfg
        self.controls = make_controls(model, num_codes=session.sim.num_actions, latent_keys=cfg.latent_keys)
        if cfg.side_by_side:
            if model.game not in GAMES:
                raise ValueError(f"side_by_side needs the real game, but {model.game!r} is not one of {sorted(GAMES)}")
            if model.conditioning == "latent" and model.lam is None:
                raise ValueError(f"side_by_side with this {model.game!r} checkpoint (conditioning='latent') needs its "
                                 f"latent-action model to label the real frames when re-syncing; it has none")
        self.script = parse_key_script(cfg.keys) if cfg.headless else None
        if cfg.headless:
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        import pygame

        self.pg = pygame
        pygame.display.init()  # no pygame.init(): the audio mixer is not needed
        pygame.font.init()
        h, w = session.frame.shape[:2]
        self.panel = (w * cfg.scale, h * cfg.scale)
        panels = 2 if cfg.side_by_side else 1
        self.screen = pygame.display.set_mode((self.panel[0] * panels, self.panel[1]))
        pygame.display.set_caption(f"dream {session.spec.name}" + (" | real game" if cfg.side_by_side else ""))
        self.font = pygame.font.Font(None, max(16, 3 * cfg.scale))
        self.clock = pygame.time.Clock()
        self.held: set[str] = set()
        self.message = f"latent code {self.controls.code}: the digit keys choose" if self.controls.latent else ""
        self.show_help = False
        self.paused = False
        self.frames_dir = Path(cfg.save_frames) if cfg.save_frames else None
        if self.frames_dir:
            self.frames_dir.mkdir(parents=True, exist_ok=True)
        self.dream_recorder = self._recorder("dream") if "dream" in cfg.records else None
        self.dream_over = False   # the dream's last step was flagged as game over (a still end screen lasts several)
        self.real = None
        if cfg.side_by_side:
            self.real = RealGame(model.game, history=session.context_frames, seed=cfg.seed, size=h,
                                 recorder=self._recorder("real") if "real" in cfg.records else None)
        self.video: VideoRecorder | None = None

    # -- recording ------------------------------------------------------------------------------
    def _recorder(self, side: str) -> EpisodeRecorder:
        """An episode recorder into ``<record_out>/<side>`` with the metadata of that side."""
        model, frame = self.session.model, self.session.frame
        spec = GAMES.get(model.game)
        meta = dict(game=model.game, frame_size=list(frame.shape[:2]),
                    frame_skip=spec.frame_skip if spec else None, fps=model.fps, source=side,
                    policy="human (pygame)")
        if side == "real":
            meta.update(action_meanings=list(spec.action_meanings), sticky_actions=0.0, env_id=spec.env_id)
        elif model.conditioning == "latent":
            meta.update(action_meanings=[f"latent_{k}" for k in range(self.session.sim.num_actions)],
                        conditioning="latent")
        else:
            meta.update(action_meanings=list(model.action_meanings), conditioning=model.conditioning)
        return EpisodeRecorder(Path(self.cfg.record_out) / side, meta,
                               info=dict(policy="human (pygame)", source=side, seed=self.cfg.seed))

    # -- commands -------------------------------------------------------------------------------
    def press(self, key: str) -> bool:
        """Handle a key going down (pygame's key name), from the keyboard or the key script.

        Returns:
            False when the key quits (Esc), else True.
        """
        if key == "escape":
            return False
        if key in ("h", "f1"):
            self.show_help = not self.show_help
        elif key == "p":
            self.paused = not self.paused
            self.message = "paused (P resumes)" if self.paused else ""
        elif key == "r":
            self.reset_dream()
        elif key == RESYNC_KEY:
            self.resync()
        else:
            self.message = self.controls.press(key) or self.message
        return True

    def reset_dream(self) -> None:
        """Restart the dream from a random real start window of the checkpoint."""
        frame = self.session.reset()
        self.dream_over = False
        if self.dream_recorder:
            self.dream_recorder.start(frame, reason="reset")
        self.message = "dream reset from real frames"

    def resync(self) -> None:
        """Restart the dream from the real game's latest frames and actions (side by side only).

        With a latent checkpoint, the real frames are labelled with latent codes by the
        checkpoint's latent-action model.
        """
        if self.real is None:
            self.message = "Tab re-syncs the dream to the real game in side-by-side mode (side_by_side=true)"
            return
        frames, actions = self.real.history()
        if self.session.model.conditioning == "latent":
            from worldmodel.latent_actions import infer_latent_actions

            actions = infer_latent_actions(self.session.model, frames) if len(frames) > 1 else actions
        frame = self.session.reset_from(frames, actions)
        self.dream_over = False
        if self.dream_recorder:
            self.dream_recorder.start(frame, reason="resync")
        self.message = f"dream re-synced to the real game ({len(frames)} frames)"

    def help_lines(self) -> list[str]:
        """Every key of this window, one line each, as the help overlay shows them."""
        lines = ["Keys", *("  " + line for line in self.controls.help_lines())]
        lines += ["  P  pause / resume", "  R  restart the dream from real frames"]
        if self.real is not None:
            lines.append("  Tab  re-sync the dream to the real game")
        lines += ["  H / F1  this help", "  Esc  quit"]
        return lines

    # -- drawing --------------------------------------------------------------------------------
    def _controls_text(self) -> str:
        if self.controls.latent:
            return self.controls.help_lines()[0].split("  ")[0] + " latent code"
        spec = self.session.spec
        names = {v: k for k, v in spec.key_aliases.items()}
        parts = []
        for chord, action in spec.keymap.items():
            if chord and "+" not in chord:
                alias = f"/{names[chord].upper()}" if chord in names else ""
                parts.append(f"{chord.capitalize()}{alias} {spec.action_meanings[action]}")
        return "   ".join(parts)

    def _draw(self) -> None:
        """Draw the frames, the HUD (over the dream), the labels, the message and the help overlay."""
        pg, s = self.pg, self.session
        line = self.font.get_height() + 4
        dream_x = self.panel[0] if self.real is not None else 0
        self._blit_frame(s.frame, dream_x)
        if self.real is not None:
            self._blit_frame(self.real.frame, 0)
            pg.draw.line(self.screen, HUD_WHITE, (dream_x, 0), (dream_x, self.panel[1]), 2)
            self._text(f"real game   episode {self.real.episode}   score {self.real.score:+.0f}", (4, 4), LABEL_REAL)
            self._text("dream", (dream_x + 4, 4 + line), LABEL_DREAM)
        hud = (f"{s.model.game}   {s.fps:4.1f} fps   {s.latency_ms:5.1f} ms ({s.sim.backend}, {s.sim.precision})   "
               f"step {s.step_count}   score {s.score:+.0f}")
        status = self.controls.status()
        hud += f"   {status}" if status else ""
        hud += "   PAUSED" if self.paused else ""
        self._text(hud, (dream_x + 4, 4))
        if self.message:
            self._text(self.message, (4, 4 + line))
        keys = self._controls_text() + ("   Tab re-sync" if self.real is not None else "") + "   H/F1 help   Esc quit"
        self._text(keys, (4, self.screen.get_height() - line))
        if self.show_help:
            self._draw_help()
        pg.display.flip()

    def _blit_frame(self, frame: np.ndarray, x: int) -> None:
        """Draw ``frame (H, W, 3) uint8`` scaled to a panel whose left edge is ``x``."""
        surf = self.pg.surfarray.make_surface(np.ascontiguousarray(frame.swapaxes(0, 1)))
        self.screen.blit(self.pg.transform.scale(surf, self.panel), (x, 0))

    def _draw_help(self) -> None:
        pg, lines = self.pg, self.help_lines()
        imgs = [self.font.render(t, True, HUD_WHITE) for t in lines]
        w = max(img.get_width() for img in imgs) + 16
        h = sum(img.get_height() for img in imgs) + 16
        x, y = max((self.screen.get_width() - w) // 2, 0), max((self.screen.get_height() - h) // 2, 0)
        box = pg.Surface((w, h), pg.SRCALPHA)
        box.fill((0, 0, 0, 200))
        self.screen.blit(box, (x, y))
        for img in imgs:
            self.screen.blit(img, (x + 8, y + 8))
            y += img.get_height()

    def _text(self, text: str, pos: tuple[int, int], colour: tuple[int, int, int] = HUD_WHITE) -> None:
        img = self.font.render(text, True, colour)
        bg = self.pg.Surface((img.get_width() + 6, img.get_height() + 2), self.pg.SRCALPHA)
        bg.fill((0, 0, 0, 150))
        self.screen.blit(bg, (pos[0] - 3, pos[1] - 1))
        self.screen.blit(img, pos)

    def window_frame(self) -> np.ndarray:
        """The window as shown: ``(H, W, 3)`` uint8."""
        return self.pg.surfarray.array3d(self.screen).swapaxes(0, 1).copy()

    # -- the loop -------------------------------------------------------------------------------
    def _events(self) -> bool:
        """Handle keyboard and window events; False when the player quits."""
        pg = self.pg
        for event in pg.event.get():
            if event.type == pg.QUIT:
                return False
            if event.type == pg.KEYDOWN:
                name = pg.key.name(event.key)
                if not self.press(name):
                    return False
                self.held.add(name)
            elif event.type == pg.KEYUP:
                self.held.discard(pg.key.name(event.key))
        return True

    def _step(self) -> None:
        """Step the dream (and the real game) once with the held keys."""
        action = self.controls.action(self.held)
        result = self.session.step(action)
        ended = result.terminated and not self.dream_over      # the first step of a game over ends the episode
        self.dream_over = result.terminated
        if ended:
            self.message = "the dream predicts the game ended (R restarts)"
        if self.dream_recorder:
            self.dream_recorder.add(action, result.frame, result.reward, terminated=ended)
            if ended:
                self.dream_recorder.start(result.frame, reason="dream ended")
        if self.real is not None:
            real = self.real.step(self.real.action_for_keys(self.held))
            if real.terminated or real.truncated:
                self.message = f"the real game ended; episode {self.real.episode} begins"

    def run(self) -> int:
        """Play until Esc or the window closes (or ``steps`` ticks headless).

        Recorded episodes are written as they end; the ones in flight and the video are
        finished when the loop stops, however it stops.

        Returns:
            The number of steps played (paused ticks do not count).
        """
        fps = self.session.spec.fps if self.cfg.fps is None else self.cfg.fps
        played, tick = 0, 0
        scripted_prev: set[str] = set()
        if self.dream_recorder:
            self.dream_recorder.start(self.session.frame, reason="start")
        try:
            if self.cfg.video:
                self.video = VideoRecorder(self.cfg.video, fps=fps or self.session.spec.fps)
            self._draw()
            while self._events():
                if self.script is not None:
                    if tick >= self.cfg.steps:
                        break
                    self.held = self.script[tick % len(self.script)]
                    pressed, scripted_prev = sorted(self.held - scripted_prev), self.held
                    if not all(self.press(k) for k in pressed):
                        break
                tick += 1
                if not self.paused:
                    self._step()
                    played += 1
                self._draw()
                if not self.paused:
                    if self.frames_dir:
                        self.pg.image.save(self.screen, str(self.frames_dir / f"frame_{played:05d}.png"))
                    if self.video:
                        self.video.add(self.window_frame())
                if self.script is None and (fps or self.paused):
                    self.clock.tick(PAUSED_TICK_HZ if self.paused else fps)
            if self.cfg.screenshot:
                Path(self.cfg.screenshot).parent.mkdir(parents=True, exist_ok=True)
                self.pg.image.save(self.screen, self.cfg.screenshot)
        finally:
            self.close()
        return played

    def close(self) -> None:
        """Write the recorded episodes in flight, finish the video, close the real game and the window."""
        try:
            if self.dream_recorder:
                self.dream_recorder.flush(reason="quit")
            if self.real is not None:
                self.real.close()
            if self.video:
                self.video.close()
        finally:
            self.pg.quit()

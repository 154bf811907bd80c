"""``python -m play.serve key=value ...``: play dreams in a browser over a websocket (Hydra entry point).

One port serves both: plain HTTP ``GET /`` answers the page (``play/static/index.html`` and
the files beside it) and ``/ws`` is the websocket. Each websocket client plays its own dream
(one :class:`~play.session.PlaySession`), up to ``max_sessions`` at once.

Examples::

    python -m play.serve                              # the shipped Pong dream on http://127.0.0.1:8765/
    python -m play.serve port=9000 max_sessions=2 checkpoint=runs/pong-cpu/bundle
    python -m play.serve host=0.0.0.0 'allowed_origins=[http://192.168.1.20:8765]'

Protocol (``docs/protocol.md`` is the full reference for writing a client):

* server -> client, on connect, JSON text::

      {"type": "hello", "protocol": 1, "game": "pong", "fps": 15, "action_meanings": [...],
       "keymap": {"": 0, "up": 2, ...}, "key_aliases": {"w": "up", ...},
       "frame": {"width": 64, "height": 64, "format": "png"}, "max_message_bytes": 4096}

* client -> server, JSON text: ``{"type": "action", "action": <int>}`` (held until the next
  one), ``{"type": "reset"}``, ``{"type": "pause", "paused": <bool>}``.
* server -> client: every frame as a BINARY message holding a PNG image, on a fixed tick at
  the game's fps; a client that reads slowly gets the newest frame (frames it has not taken
  yet are replaced, never queued). About once a second a JSON text
  ``{"type": "stats", "step", "fps", "latency_ms", "score", "action", "paused", "terminated",
  "dropped", "sessions"}``.
* A bad client message (binary, over ``max_message_bytes``, malformed JSON, unknown type,
  out-of-range action, non-boolean ``paused``) is answered with
  ``{"type": "error", "message": "..."}`` naming the bad value, and the connection keeps
  serving. A message over ``HARD_LIMIT_FACTOR * max_message_bytes`` is refused by the
  websocket layer itself: the connection is closed with code 1009 (message too big).
* When ``max_sessions`` dreams are running, a new client gets
  ``{"type": "error", "message": "server full (8/8 sessions) ..."}`` and is closed with code
  1013 (try again later) and the reason ``"server full"``.
* Requests (page or websocket) whose ``Origin`` header is not an allowed origin get HTTP 403.
  Requests without an ``Origin`` header (non-browser clients) are allowed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import logging
import mimetypes
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import imageio.v3 as iio
import numpy as np
from omegaconf import DictConfig, OmegaConf
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers, MultipleValuesError
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from play.session import PlaySession, prepare_backend
from worldmodel.bundle import ModelBundle

PROTOCOL_VERSION = 1
WS_PATH = "/ws"
"""The websocket's path; every other path is answered over plain HTTP."""
STATIC_DIR = Path(__file__).resolve().parent / "static"
HARD_LIMIT_FACTOR = 4
"""The websocket layer's ``max_size`` is this many times ``max_message_bytes``: messages
between the two get an error reply, larger ones close the connection (code 1009)."""
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_INTERNAL_ERROR = 1011
MESSAGE_TYPES = ("action", "pause", "reset")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """Attributes:
        host: interface to bind (``127.0.0.1``: this machine only).
        port: TCP port for the page and the websocket (0: any free port).
        max_sessions: dreams played at once; further clients are turned away.
        allowed_origins: ``Origin`` header values accepted from browsers; ``None``: only
            the server's own page (``http://127.0.0.1:PORT``, ``http://localhost:PORT`` and
            ``http://HOST:PORT`` for a named host), computed once the port is bound.
        max_message_bytes: largest client message answered normally (UTF-8 bytes).
        fps: frames per second sent to each client (``None``: the game's).
        sampling_steps: denoising steps per frame (``None``: the checkpoint's).
        temperature: colour sampling temperature (``None``: the checkpoint's; see
            :class:`~worldmodel.simulator.Simulator`).
        seed: session ``k`` (0, 1, 2, ... in connection order) is seeded with ``seed + k``.
        workers: threads that run model steps (the event loop never does).
        stats_interval_s: seconds between two ``stats`` messages to a client.
        backend: Simulator backend of the sessions (``auto``, ``torch``, ``onnx``); the
            command line resolves ``auto`` with :func:`play.session.prepare_backend`.
        precision: the Simulator's arithmetic (``auto``, ``float32``, ``bfloat16``; see
            :class:`~worldmodel.simulator.Simulator`).

    Raises:
        ValueError: a setting out of range (the message quotes it).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 8
    allowed_origins: list[str] | None = None
    max_message_bytes: int = 4096
    fps: float | None = None
    sampling_steps: int | None = None
    temperature: float | None = None
    seed: int = 0
    workers: int = 1
    stats_interval_s: float = 1.0
    backend: str = "auto"
    precision: str = "auto"

    def __post_init__(self):
        from worldmodel.simulator import check_precision

        check_precision(self.precision)
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65536), got {self.port}")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.max_message_bytes < 64:
            raise ValueError(f"max_message_bytes must be >= 64, got {self.max_message_bytes}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0 (or null for the game's), got {self.fps}")
        if self.stats_interval_s <= 0:
            raise ValueError(f"stats_interval_s must be > 0, got {self.stats_interval_s}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.allowed_origins is not None:
            self.allowed_origins = [str(o) for o in self.allowed_origins]


# -- the wire format ---------------------------------------------------------------------------------
class ClientMessageError(ValueError):
    """A client message the protocol does not accept; the text is sent back as an error."""


def _quote(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_client_message(message: str | bytes, *, num_actions: int, max_bytes: int) -> dict:
    """Check one client message against the protocol.

    Args:
        message: the websocket message (``str`` for text, ``bytes`` for binary).
        num_actions: actions are accepted in ``range(num_actions)``.
        max_bytes: the largest accepted message, in UTF-8 bytes.

    Returns:
        The message as a dict with a valid ``"type"``: ``{"type": "action", "action": int}``,
        ``{"type": "reset"}`` or ``{"type": "pause", "paused": bool}``.

    Raises:
        ClientMessageError: binary, oversized, malformed JSON, not an object, unknown type,
            an action that is not an integer in range, ``paused`` that is not a boolean.
            The message names the bad value.
    """
    if isinstance(message, (bytes, bytearray, memoryview)):
        raise ClientMessageError(f"binary message of {len(message)} bytes refused: send JSON text messages")
    size = len(message.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ClientMessageError(f"message of {size} bytes is over the {max_bytes}-byte limit")
    try:
        msg = json.loads(message)
    except json.JSONDecodeError as e:
        raise ClientMessageError(f"malformed JSON ({e.msg} at position {e.pos}): {_quote(message)}") from None
    if not isinstance(msg, dict):
        raise ClientMessageError(f"expected a JSON object with a \"type\", got {_quote(msg)}")
    kind = msg.get("type")
    if kind not in MESSAGE_TYPES:
        raise ClientMessageError(f"unknown message type {_quote(kind)}; expected one of {list(MESSAGE_TYPES)}")
    if kind == "action":
        a = msg.get("action")
        if isinstance(a, bool) or not isinstance(a, int):
            raise ClientMessageError(f"action must be an integer in [0, {num_actions}), got {_quote(a)}")
        if not 0 <= a < num_actions:
            raise ClientMessageError(f"action {a} out of range [0, {num_actions})")
        return {"type": "action", "action": a}
    if kind == "pause":
        p = msg.get("paused")
        if not isinstance(p, bool):
            raise ClientMessageError(f"paused must be true or false, got {_quote(p)}")
        return {"type": "pause", "paused": p}
    return {"type": "reset"}


def encode_png(frame: np.ndarray) -> bytes:
    """``frame (H, W, 3) uint8`` -> the bytes of a PNG image.

    Raises:
        ValueError: not an ``(H, W, 3)`` uint8 array.
    """
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.dtype} {frame.shape}")
    return iio.imwrite("<bytes>", frame, extension=".png")


def error_message(text: str) -> str:
    """The JSON text of an ``error`` message."""
    return json.dumps({"type": "error", "message": text})


# -- one connected client ----------------------------------------------------------------------------
class LatestOutbox:
    """Outgoing messages of which only the newest of each kind matters (frames, stats).

    Putting a frame while the previous one is still waiting replaces it (and counts it in
    ``dropped``), so a slow reader costs one pending frame, never a growing queue.
    """

    def __init__(self):
        self._pending: dict[str, str | bytes] = {}
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, kind: str, message: str | bytes) -> None:
        if kind == "frame" and kind in self._pending:
            self.dropped += 1
        self._pending[kind] = message
        self._ready.set()

    async def take(self) -> list[str | bytes]:
        """Wait for at least one message; return all pending ones, oldest kind first."""
        await self._ready.wait()
        self._ready.clear()
        pending, self._pending = self._pending, {}
        return list(pending.values())


@dataclass
class RemotePlayer:
    """One websocket client and its dream.

    Attributes:
        number: connection number (the session's seed is ``seed + number``).
        held: the action the client holds (the newest ``action`` message wins).
        applied: the action of the latest model step (-1 before the first).
    """

    ws: ServerConnection
    session: PlaySession
    number: int
    held: int = 0
    applied: int = -1
    paused: bool = False
    reset_pending: bool = False
    terminated: bool = False
    errors: int = 0
    outbox: LatestOutbox = field(default_factory=LatestOutbox)

    def step_png(self, action: int) -> bytes:
        """One model step with ``action``; the new frame as PNG (runs in a worker thread)."""
        result = self.session.step(int(self.session.model.to_conditioning(action)))
        self.applied = action
        self.terminated = self.terminated or result.terminated
        return encode_png(result.frame)

    def reset_png(self) -> bytes:
        """Restart the dream; its first frame as PNG (runs in a worker thread)."""
        frame = self.session.reset()
        self.terminated = False
        return encode_png(frame)

    def apply(self, msg: dict) -> None:
        """Take a message checked by :func:`parse_client_message` into account."""
        if msg["type"] == "action":
            self.held = msg["action"]
        elif msg["type"] == "pause":
            self.paused = msg["paused"]
        else:
            self.reset_pending = True


# -- the server -----------------------------------------------------------------------------------
class DreamServer:
    """The page over HTTP and one dream per websocket client, on one port.

    Args:
        model: the loaded checkpoint bundle (shared read-only by every session).
        cfg: the server settings.

    Use ``await server.start()`` then ``await server.serve_forever()``, or
    :class:`ServerThread` to run it in the background.
    """

    def __init__(self, model: ModelBundle, cfg: ServerConfig):
        self.model, self.cfg = model, cfg
        self.fps = float(cfg.fps or model.fps)
        self.slots: dict[int, ServerConnection] = {}       # connection number -> its websocket, while served
        self.connections = 0
        self.allowed_origins: set[str] = set()
        self.port: int | None = None
        self._static = _load_static(STATIC_DIR)
        self._executor = concurrent.futures.ThreadPoolExecutor(cfg.workers, thread_name_prefix="dream-step")
        self._server: Server | None = None

    @property
    def session_count(self) -> int:
        """Sessions being served now (including ones starting); back to 0 when every client has left."""
        return len(self.slots)

    def _busy_slots(self) -> int:
        # A connection that is closed but whose handler has not finished cleaning up yet does
        # not hold its slot: a client that reconnects at once must not find the server full.
        return sum(ws.state is not State.CLOSED for ws in self.slots.values())

    async def start(self) -> None:
        """Bind the port and start accepting connections.

        Raises:
            OSError: the port cannot be bound.
        """
        cap = self.cfg.max_message_bytes
        self._server = await serve(
            self._handle, self.cfg.host, self.cfg.port, process_request=self._process_request,
            max_size=HARD_LIMIT_FACTOR * cap, compression=None)  # PNG frames do not deflate
        self.port = self._server.sockets[0].getsockname()[1]
        self.allowed_origins = set(self.cfg.allowed_origins if self.cfg.allowed_origins is not None
                                   else default_origins(self.cfg.host, self.port))

    async def serve_forever(self) -> None:
        await self._server.serve_forever()

    async def stop(self) -> None:
        """Close every connection (code 1001) and the port; drop the worker threads."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- HTTP: the page, origins -----------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            origin = request.headers.get("Origin")
        except MultipleValuesError:
            return connection.respond(400, "more than one Origin header\n")
        if origin is not None and origin not in self.allowed_origins:
            return connection.respond(403, f"origin {origin!r} is not allowed; allowed: {sorted(self.allowed_origins)} "
                                           "(the allowed_origins setting)\n")
        path = request.path.split("?", 1)[0]
        if path == WS_PATH:
            return None                                            # go on with the websocket handshake
        name = "index.html" if path == "/" else path.removeprefix("/")
        if name not in self._static:
            return connection.respond(404, f"no such page {path!r}; the game is at / and the websocket at "
                                           f"{WS_PATH}\n")
        body, content_type = self._static[name]
        headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                           ("Content-Length", str(len(body))), ("Content-Type", content_type),
                           ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff")])
        return Response(200, "OK", headers, body)

    # -- one websocket connection -------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        n = self._busy_slots()
        if n >= self.cfg.max_sessions:
            await _send_quietly(ws, error_message(
                f"server full ({n}/{self.cfg.max_sessions} sessions); try again later"))
            await ws.close(CLOSE_TRY_AGAIN_LATER, "server full")
            return
        number = self.connections
        self.connections += 1
        self.slots[number] = ws                                     # reserve the slot before any await
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task] = []
        try:
            session = await loop.run_in_executor(self._executor, self._new_session, number)
            player = RemotePlayer(ws, session, number)
            await ws.send(json.dumps(self._hello()))
            player.outbox.put("frame", encode_png(session.frame))
            tasks = [asyncio.create_task(c) for c in (self._read(player), self._tick(player), self._send(player))]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()                                      # the client left, or a task failed
        except ConnectionClosed:
            pass
        except Exception as e:
            log.exception("session %d failed", number)
            await ws.close(CLOSE_INTERNAL_ERROR, f"internal error: {type(e).__name__}"[:120])
        finally:
            del self.slots[number]                                 # a step still running in a thread is dropped
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _new_session(self, number: int) -> PlaySession:
        return PlaySession(self.model, seed=self.cfg.seed + number, sampling_steps=self.cfg.sampling_steps,
                           temperature=self.cfg.temperature, backend=self.cfg.backend, precision=self.cfg.precision)

    def _hello(self) -> dict:
        h, w = self.model.start_frames.shape[-3:-1]
        return {"type": "hello", "protocol": PROTOCOL_VERSION, "game": self.model.game, "fps": self.fps,
                "action_meanings": list(self.model.action_meanings), "keymap": dict(self.model.keymap),
                "key_aliases": dict(self.model.key_aliases), "frame": {"width": int(w), "height": int(h),
                                                                       "format": "png"},
                "max_message_bytes": self.cfg.max_message_bytes}

    async def _read(self, player: RemotePlayer) -> None:
        """Apply the client's messages; answer bad ones with an error and go on."""
        async for message in player.ws:
            try:
                msg = parse_client_message(message, num_actions=self.model.control_actions,
                                           max_bytes=self.cfg.max_message_bytes)
            except ClientMessageError as e:
                player.errors += 1
                await player.ws.send(error_message(str(e)))
                continue
            player.apply(msg)

    async def _tick(self, player: RemotePlayer) -> None:
        """Step the dream at ``fps``; a late step starts the next tick at once, never a burst."""
        loop = asyncio.get_running_loop()
        period = 1.0 / self.fps
        next_tick = loop.time()
        stats_since, steps_since = loop.time(), 0
        while True:
            next_tick += period
            delay = next_tick - loop.time()
            if delay < 0:
                next_tick, delay = loop.time(), 0.0                 # behind: drop the missed ticks
            await asyncio.sleep(delay)
            if player.reset_pending:
                player.reset_pending = False
                player.outbox.put("frame", await loop.run_in_executor(self._executor, player.reset_png))
            elif not player.paused:
                png = await loop.run_in_executor(self._executor, player.step_png, player.held)
                player.outbox.put("frame", png)
                steps_since += 1
            now = loop.time()
            if now - stats_since >= self.cfg.stats_interval_s:
                player.outbox.put("stats", json.dumps(self._stats(player, steps_since / (now - stats_since))))
                stats_since, steps_since = now, 0

    def _stats(self, player: RemotePlayer, fps: float) -> dict:
        s = player.session
        return {"type": "stats", "step": s.step_count, "fps": round(fps, 2), "latency_ms": round(s.latency_ms, 1),
                "score": s.score, "action": player.applied, "paused": player.paused,
                "terminated": player.terminated, "dropped": player.outbox.dropped, "sessions": self.session_count}

    async def _send(self, player: RemotePlayer) -> None:
        while True:
            for message in await player.outbox.take():
                await player.ws.send(message)


def default_origins(host: str, port: int) -> list[str]:
    """The origins of the server's own page: ``http://127.0.0.1:PORT``, ``http://localhost:PORT``
    and, for a named host, ``http://HOST:PORT`` (IPv6 addresses in brackets)."""
    origins = [f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"]
    if host not in _WILDCARD_HOSTS:
        name = f"[{host}]" if ":" in host else host
        origins.append(f"http://{name}:{port}")
    return list(dict.fromkeys(origins))


def _load_static(folder: Path) -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: name -> (bytes, content type). Only these names are served."""
    files = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.is_file():
            kind = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
            files[p.name] = (p.read_bytes(), f"{kind}; charset=utf-8" if kind.startswith("text/") else kind)
    return files


async def _send_quietly(ws: ServerConnection, message: str) -> None:
    try:
        await ws.send(message)
    except ConnectionClosed:
        pass


class ServerThread:
    """A :class:`DreamServer` on its own event loop in a daemon thread (tests, scripts, notebooks).

    Use as a context manager::

        with ServerThread(model, ServerConfig(port=0)) as st:
            print(st.url, st.ws_url)

    Raises:
        OSError: the port cannot be bound (raised by ``__enter__``).
    """

    def __init__(self, model: ModelBundle, cfg: ServerConfig):
        self.server = DreamServer(model, cfg)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="dream-server", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The page, ``http://HOST:PORT/``."""
        return f"http://{self.server.cfg.host}:{self.server.port}/"

    @property
    def ws_url(self) -> str:
        """The websocket, ``ws://HOST:PORT/ws``."""
        return f"ws://{self.server.cfg.host}:{self.server.port}{WS_PATH}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as e:  # noqa: BLE001 - handed to the starting thread
            self._error = e
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        await self.server.stop()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


async def run_server(model: ModelBundle, cfg: ServerConfig) -> None:
    """Serve until cancelled (Ctrl-C), printing the page's address."""
    server = DreamServer(model, cfg)
    await server.start()
    shown = "127.0.0.1" if cfg.host in _WILDCARD_HOSTS else cfg.host
    print(f"dream {model.game}: open http://{shown}:{server.port}/ (websocket at {WS_PATH}, "
          f"{cfg.max_sessions} sessions at most, {server.fps:g} frames/s)", flush=True)
    try:
        await server.serve_forever()
    finally:
        await server.stop()


@hydra.main(config_path="conf", config_name="serve", version_base=None)
def _main(cfg: DictConfig) -> None:
    from worldmodel import CheckpointError, load

    if cfg.threads is not None:
        import torch

        torch.set_num_threads(int(cfg.threads))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    origins = OmegaConf.to_container(cfg.allowed_origins) if cfg.allowed_origins is not None else None
    try:
        server_cfg = ServerConfig(host=cfg.host, port=cfg.port, max_sessions=cfg.max_sessions,
                                  allowed_origins=[origins] if isinstance(origins, str) else origins,
                                  max_message_bytes=cfg.max_message_bytes, fps=cfg.fps,
                                  sampling_steps=cfg.sampling_steps, temperature=cfg.temperature, seed=cfg.seed,
                                  workers=cfg.workers, stats_interval_s=cfg.stats_interval_s, precision=cfg.precision)
        model = load(cfg.checkpoint, device=cfg.device)
        server_cfg.backend = prepare_backend(model, cfg.backend, cfg.precision, cfg.temperature)
        asyncio.run(run_server(model, server_cfg))
    except (CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: cannot serve on {cfg.host}:{cfg.port}: {e}")
    except KeyboardInterrupt:
        pass


def main() -> None:
    """The ``python -m play.serve`` entry point."""
    _main()


if __name__ == "__main__":
    main()

"""The websocket server (``python -m play.serve``): protocol, robustness, origins, capacity, the page.

Every test starts its own server on a free port (``port=0``) in a background thread, with the
tiny random-weight Pong bundle saved to a temporary directory and loaded back, so a model step
takes milliseconds. The browser test drives the system's Chromium through Playwright and is
skipped where either is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

os.environ.setdefault("OMP_NUM_THREADS", "1")

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

from play.serve import (HARD_LIMIT_FACTOR, ClientMessageError, LatestOutbox, RemotePlayer, ServerConfig,  # noqa: E402
                        ServerThread, default_origins, parse_client_message)
from play.session import PlaySession  # noqa: E402

torch.set_num_threads(1)

CAP = 256          # max_message_bytes in these tests
STATS_S = 0.25     # seconds between stats messages in these tests
TIMEOUT = 20.0     # seconds any wait may take before a test fails


@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle, tmp_path_factory):
    return tiny_bundle.save(tmp_path_factory.mktemp("serve") / "tiny-pong")


@pytest.fixture(scope="module")
def model(bundle_dir):
    import worldmodel

    return worldmodel.load(bundle_dir)


def server(model, **kw) -> ServerThread:
    return ServerThread(model, ServerConfig(port=0, max_message_bytes=CAP, stats_interval_s=STATS_S, **kw))


async def recv_until(ws, predicate, *, timeout: float = TIMEOUT):
    """Read messages until ``predicate(msg)`` holds for a decoded one; returns (msg, frames seen)."""
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            raw = await ws.recv()
            msg = iio.imread(raw) if isinstance(raw, bytes) else json.loads(raw)
            if isinstance(raw, bytes):
                frames.append(msg)
            if predicate(msg):
                return msg, frames


def is_type(kind):
    return lambda m: isinstance(m, dict) and m.get("type") == kind


def is_frame(m):
    return isinstance(m, np.ndarray)


def wait_for(condition, *, timeout: float = TIMEOUT) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# -- the wire format, without a server ------------------------------------------------------------------
@pytest.mark.parametrize("message, names", [
    ("{not json", ["malformed JSON", "{not json"]),
    ("[1, 2]", ["JSON object", "[1, 2]"]),
    ('{"type": "jump"}', ["unknown message type", "'jump'"]),
    ('{"action": 2}', ["unknown message type", "None"]),
    ('{"type": "action", "action": 6}', ["action 6 out of range [0, 6)"]),
    ('{"type": "action", "action": -1}', ["action -1 out of range"]),
    ('{"type": "action", "action": 2.5}', ["integer", "2.5"]),
    ('{"type": "action", "action": true}', ["integer", "True"]),
    ('{"type": "action", "action": "2"}', ["integer", "'2'"]),
    ('{"type": "pause", "paused": "yes"}', ["paused must be true or false", "'yes'"]),
    (b'{"type": "reset"}', ["binary message of 17 bytes"]),
    ('{"type": "reset", "pad": "' + "x" * CAP + '"}', [f"over the {CAP}-byte limit"]),
])
def test_bad_client_messages_are_refused_naming_the_value(message, names):
    with pytest.raises(ClientMessageError) as info:
        parse_client_message(message, num_actions=6, max_bytes=CAP)
    for name in names:
        assert name in str(info.value)
    assert len(str(info.value)) < 200                      # a long bad value is quoted cut short


def test_good_client_messages_parse():
    parse = lambda m: parse_client_message(json.dumps(m), num_actions=6, max_bytes=CAP)  # noqa: E731
    assert parse({"type": "action", "action": 5}) == {"type": "action", "action": 5}
    assert parse({"type": "pause", "paused": False}) == {"type": "pause", "paused": False}
    assert parse({"type": "reset", "extra": 1}) == {"type": "reset"}


def test_outbox_keeps_only_the_newest_frame():
    async def run():
        box = LatestOutbox()
        for i in range(3):
            box.put("frame", bytes([i]))
        box.put("stats", "s")
        assert await box.take() == [bytes([2]), "s"]
        assert box.dropped == 2
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await box.take()                         # nothing left: waits
    asyncio.run(run())


def test_config_refuses_bad_settings():
    for bad in (dict(max_sessions=0), dict(port=70000), dict(max_message_bytes=10), dict(fps=0), dict(workers=0),
                dict(precision="float16")):
        with pytest.raises(ValueError, match=str(next(iter(bad.values())))):
            ServerConfig(**bad)
    assert default_origins("127.0.0.1", 80) == ["http://127.0.0.1:80", "http://localhost:80", "http://[::1]:80"]
    assert "http://example.org:80" in default_origins("example.org", 80)


# -- one client ---------------------------------------------------------------------------------------
def test_client_gets_hello_frames_and_its_actions_are_applied(model):
    async def play(url):
        async with connect(url) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello" and hello["game"] == "pong" and hello["fps"] == model.fps
            assert hello["action_meanings"] == model.action_meanings and hello["keymap"] == model.keymap
            assert hello["key_aliases"] == model.key_aliases and hello["max_message_bytes"] == CAP
            frames = []
            for action in (2, 3):                                          # hold Up (RIGHT), then Down (LEFT)
                await ws.send(json.dumps({"type": "action", "action": action}))
                stats, seen = await recv_until(ws, lambda m, a=action: is_type("stats")(m) and m["action"] == a)
                frames += seen
                for _ in range(6):
                    frames += (await recv_until(ws, is_frame))[1]
            return hello, stats, frames

    with server(model) as st:
        _, stats, frames = asyncio.run(play(st.ws_url))
    assert len(frames) >= 10
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert len({f.tobytes() for f in frames}) > len(frames) // 2           # the dream moves
    assert stats["step"] >= 2 and stats["latency_ms"] > 0 and stats["fps"] > 0 and not stats["paused"]
    assert stats["sessions"] == 1


def test_frames_are_exactly_the_dream_of_the_held_action(model):
    """The PNG frames are the frames PlaySession(seed=0) makes with the action the client holds."""
    n = 4

    async def play(url):
        async with connect(url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "action", "action": 2}))      # long before the first tick
            frames = []
            while len(frames) < n + 1:
                frames += (await recv_until(ws, is_frame))[1]
            return frames

    with server(model, fps=4, seed=0) as st:                               # first tick after 250 ms
        frames = asyncio.run(play(st.ws_url))

    def replay(action):
        s = PlaySession(model, seed=0)
        return [s.frame] + [s.step(action).frame for _ in range(n)]

    up, down = replay(2), replay(3)
    assert not all(np.array_equal(a, b) for a, b in zip(up[1:], down[1:]))  # the action matters to this model
    for got, want in zip(frames, up):
        np.testing.assert_array_equal(got, want)                           # PNG is lossless


def test_pause_stops_frames_and_reset_sends_a_start_frame(model):
    async def play(url):
        async with connect(url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "pause", "paused": True}))
            await recv_until(ws, lambda m: is_type("stats")(m) and m["paused"])
            step = (await recv_until(ws, is_type("stats")))[0]["step"]
            later, frames = await recv_until(ws, is_type("stats"))             # one stats interval later
            assert frames == [] and later["step"] == step                     # paused: no steps, no frames
            await ws.send(json.dumps({"type": "reset"}))
            reset_frame, _ = await recv_until(ws, is_frame)
            stats, _ = await recv_until(ws, is_type("stats"))
            assert stats["step"] == 0 and stats["paused"]
            return reset_frame

    with server(model) as st:
        frame = asyncio.run(play(st.ws_url))
    starts = model.start_frames[:, -1].numpy()
    assert any(np.array_equal(frame, s) for s in starts)                       # a real start frame


# -- robustness ---------------------------------------------------------------------------------------
BAD_MESSAGES = [
    ("{oops", "{oops"), ('"just a string"', "just a string"), ('{"type": "fly"}', "fly"),
    ('{"type": "action", "action": 99}', "99"), ('{"type": "action", "action": null}', "None"),
    ('{"type": "pause", "paused": 1}', "1"), (b"\x00\x01", "binary"),
    ('{"type": "action", "action": 1, "pad": "' + "y" * (2 * CAP) + '"}', f"{CAP}-byte limit"),
]


def test_bad_messages_get_errors_and_the_connection_keeps_serving(model):
    async def play(url):
        async with connect(url) as ws:
            await ws.recv()
            for message, name in BAD_MESSAGES:
                await ws.send(message)
                error, _ = await recv_until(ws, is_type("error"))
                assert name in error["message"], (name, error)
            await ws.send(json.dumps({"type": "action", "action": 4}))
            _, frames = await recv_until(ws, lambda m: is_type("stats")(m) and m["action"] == 4)
            _, more = await recv_until(ws, is_frame)
            return frames + more

    with server(model) as st:
        frames = asyncio.run(play(st.ws_url))
        assert wait_for(lambda: st.server.session_count == 0)
    assert len(frames) >= 1


def test_a_message_over_the_hard_limit_closes_only_that_connection(model):
    async def play(url):
        async with connect(url, max_size=None) as big, connect(url) as other:
            await big.recv()
            await other.recv()
            await big.send('{"type": "reset", "pad": "' + "z" * (HARD_LIMIT_FACTOR * CAP) + '"}')
            with pytest.raises(ConnectionClosed) as info:
                await recv_until(big, lambda m: False)
            _, frames = await recv_until(other, is_frame)
            return info.value.rcvd.code, frames

    with server(model) as st:
        code, frames = asyncio.run(play(st.ws_url))
        assert wait_for(lambda: st.server.session_count == 0)
    assert code == 1009 and len(frames) == 1                                      # 1009: message too big


def test_foreign_origin_is_refused_with_403(model):
    async def play(url, origin):
        async with connect(url, origin=origin) as ws:
            return json.loads(await ws.recv())["type"]

    with server(model) as st:
        port = st.server.port
        with pytest.raises(InvalidStatus) as info:
            asyncio.run(play(st.ws_url, "http://evil.example"))
        assert info.value.response.status_code == 403
        with pytest.raises(urllib.error.HTTPError) as page:
            urllib.request.urlopen(urllib.request.Request(st.url, headers={"Origin": "http://evil.example"}))
        assert page.value.code == 403 and "evil.example" in page.value.read().decode()
        assert asyncio.run(play(st.ws_url, f"http://127.0.0.1:{port}")) == "hello"
        assert asyncio.run(play(st.ws_url, f"http://localhost:{port}")) == "hello"
        assert asyncio.run(play(st.ws_url, None)) == "hello"                   # non-browser clients
    with server(model, allowed_origins=["https://play.example"]) as st:
        assert asyncio.run(play(st.ws_url, "https://play.example")) == "hello"
        with pytest.raises(InvalidStatus):
            asyncio.run(play(st.ws_url, f"http://127.0.0.1:{st.server.port}"))


def test_full_server_turns_new_clients_away_with_a_reason(model):
    async def play(url):
        async with connect(url) as first:
            await first.recv()
            async with connect(url) as second:
                error = json.loads(await second.recv())
                with pytest.raises(ConnectionClosed) as info:
                    await second.recv()
            _, frames = await recv_until(first, is_frame)                       # the first plays on
        return error, info.value.rcvd, frames

    with server(model, max_sessions=1) as st:
        error, close, frames = asyncio.run(play(st.ws_url))
        assert wait_for(lambda: st.server.session_count == 0)
        assert asyncio.run(_hello_type(st.ws_url)) == "hello"                   # room again
    assert error["type"] == "error" and error["message"].startswith("server full (1/1 sessions)")
    assert close.code == 1013 and close.reason == "server full"
    assert len(frames) == 1


async def _hello_type(url):
    async with connect(url) as ws:
        return json.loads(await ws.recv())["type"]


def test_a_client_that_reconnects_at_once_finds_its_slot_free(model):
    async def cycles(url, n):
        kinds = []
        for _ in range(n):
            async with connect(url) as ws:
                kinds.append(json.loads(await ws.recv())["type"])
                await recv_until(ws, is_frame)
        return kinds

    with server(model, max_sessions=1) as st:
        assert asyncio.run(cycles(st.ws_url, 5)) == ["hello"] * 5
        assert wait_for(lambda: st.server.session_count == 0)


def test_disconnect_mid_step_leaves_no_session(model, monkeypatch):
    in_step = threading.Event()
    step_png = RemotePlayer.step_png

    def slow_step_png(self, action):
        in_step.set()
        time.sleep(0.5)
        return step_png(self, action)

    monkeypatch.setattr(RemotePlayer, "step_png", slow_step_png)

    async def play(url, n):
        clients = [await connect(url) for _ in range(n)]
        for ws in clients:
            await ws.recv()
        assert await asyncio.to_thread(in_step.wait, TIMEOUT)
        for ws in clients:
            ws.transport.abort()                                               # gone, no closing handshake

    with server(model, max_sessions=3) as st:
        asyncio.run(play(st.ws_url, 3))
        t0 = time.monotonic()
        assert wait_for(lambda: st.server.session_count == 0)
        freed_s = time.monotonic() - t0
        assert asyncio.run(_hello_type(st.ws_url)) == "hello"
    assert freed_s < 0.5                                                       # freed before the step ends


# -- the page -------------------------------------------------------------------------------------------
def test_page_is_served_on_the_same_port(model):
    with server(model) as st:
        html = urllib.request.urlopen(st.url).read().decode()
        with urllib.request.urlopen(st.url + "app.js") as response:
            js_type, js = response.headers["Content-Type"], response.read()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(st.url + "nothing-here")
        missing.value.close()
    assert "<canvas" in html and "pixelated" in html and 'src="app.js"' in html
    assert js_type.startswith("text/javascript") and b"/ws" in js
    assert missing.value.code == 404


def test_command_line_serves_the_page(bundle_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "play.serve", f"checkpoint={bundle_dir}", "port=0", "threads=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = next((ln for ln in proc.stdout if "open http://" in ln), "")   # skips any start-up chatter
        assert "open http://127.0.0.1:" in line, f"the server exited with {proc.wait()}"
        url = line.split("open ", 1)[1].split()[0]
        assert "<canvas" in urllib.request.urlopen(url, timeout=TIMEOUT).read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)
    bad = subprocess.run([sys.executable, "-m", "play.serve", "checkpoint=/no/such/bundle"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "no checkpoint '/no/such/bundle'" in bad.stderr


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_browser_page_plays_with_the_keyboard(model, tmp_path):
    """Headless Chromium opens the page, holds Up, and the canvas shows new frames."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with server(model, max_sessions=1) as st, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(st.url)
            page.wait_for_function("window.dream.framesShown >= 3", timeout=TIMEOUT * 1000)
            before = page.locator("#screen").screenshot()
            page.keyboard.down("ArrowUp")
            page.wait_for_function("window.dream.stats && window.dream.stats.action === 2", timeout=TIMEOUT * 1000)
            shown = page.evaluate("window.dream.framesShown")
            page.wait_for_function(f"window.dream.framesShown >= {shown + 3}", timeout=TIMEOUT * 1000)
            after = page.locator("#screen").screenshot()
            page.keyboard.up("ArrowUp")
            hud = page.locator("#hud").inner_text()
            second = browser.new_page()                                        # max_sessions=1: full
            second.goto(st.url)
            second.wait_for_function("window.dream.closed !== null", timeout=TIMEOUT * 1000)
            full = second.locator("#message").inner_text()
        finally:
            browser.close()
    a, b = iio.imread(before), iio.imread(after)
    assert a.shape == b.shape and a.shape[0] >= 256                           # the 64x64 frame scaled up
    assert not np.array_equal(a, b)
    assert "frames/s" in hud and "RIGHT" in hud
    assert "server is full" in full


def test_held_keys_move_the_paddle_of_the_shipped_dream():
    """With the shipped Pong checkpoint: hold one key, then the other (16 frames each), reading
    the green paddle's row out of the decoded PNG frames: it goes down while Down is held and up
    while Up is held (at least 2 px each way: the mean of the first key's last 4 frames vs the
    frames before it, and of the second key's last 4 vs the first key's last 4; how many frames
    pass between a key and its first frame depends on the server's clock, and the paddle may
    be at the wall by then). The first key moves the paddle away from the wall it starts nearer
    to (a paddle resting on the bottom wall cannot go down). The first shipped checkpoint, which
    ignored keys, failed the first check; the second failed the second, then measured within
    the second key's 16 frames (its paddle drifted back down under Up)."""
    import worldmodel
    from envs.readout import paddle_y

    shipped = worldmodel.load("pong")
    down_key, up_key = 3, 2

    async def play(url):
        async with connect(url) as ws:
            await ws.recv()
            start = float(np.nanmean(paddle_y(np.stack((await recv_until(ws, is_frame))[1]))))
            order = (up_key, down_key) if start > shipped.start_frames.shape[-3] / 2 else (down_key, up_key)
            rows = []
            for action in order:
                await ws.send(json.dumps({"type": "action", "action": action}))
                await recv_until(ws, lambda m, a=action: is_type("stats")(m) and m["action"] == a)
                frames = []
                while len(frames) < 16:
                    frames += (await recv_until(ws, is_frame))[1]
                rows.append(paddle_y(np.stack(frames)))
            return start, order, rows

    with server(shipped, seed=0) as st:
        start, order, (first, second) = asyncio.run(play(st.ws_url))
    sign = {down_key: 1.0, up_key: -1.0}                               # rows grow downwards
    end = lambda r: float(np.nanmean(r[-4:]))                          # noqa: E731
    assert sign[order[0]] * (end(first) - start) >= 2.0, (start, order, first)          # the first checkpoint failed this
    assert sign[order[1]] * (end(second) - end(first)) >= 2.0, (order, first, second)   # the second one failed this

#!/usr/bin/env python3
"""Talks to the `ws-echo` app with Python's `websockets` library, a client nobody here wrote.

    ws_echo_client.py ws://127.0.0.1:PORT/ws-echo

Checks, each on the wire as the library does it (masking, framing, ping/pong, close):
* text and binary messages come back byte-exact and of the same kind: ASCII, UTF-8 with 2-, 3-
  and 4-byte sequences, empty messages, all 256 byte values, a 200 KiB random binary;
* a fragmented text message (sent as three frames) comes back whole;
* 100 messages sent back to back come back in order;
* a ping with a payload gets its pong;
* the close handshake: a close with 1000, and one with 4000 and a reason, each answered with a
  close carrying the same code.

Prints one `ok:` line per check. Any mismatch exits 1 with a `FAIL:` line saying what was sent
and what came back; every wait is bounded (10 s per step).
"""

import asyncio
import os
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

STEP_TIMEOUT = 10.0


class Mismatch(Exception):
    pass


def show(message, limit=80):
    """A short description of a message for failure lines."""
    kind = "text" if isinstance(message, str) else "binary"
    size = len(message.encode()) if isinstance(message, str) else len(message)
    text = repr(message if size <= limit else message[:limit])
    return f"{kind} of {size} bytes {text}{' ...' if size > limit else ''}"


async def recv(ws, what):
    try:
        return await asyncio.wait_for(ws.recv(), STEP_TIMEOUT)
    except asyncio.TimeoutError:
        raise Mismatch(f"{what}: nothing came back within {STEP_TIMEOUT:.0f} s") from None
    except ConnectionClosed as err:
        raise Mismatch(f"{what}: the connection closed instead ({err})") from None


async def echo(ws, message, what):
    await asyncio.wait_for(ws.send(message), STEP_TIMEOUT)
    back = await recv(ws, what)
    if type(back) is not type(message) or back != message:
        first = next((i for i, (a, b) in enumerate(zip(back, message)) if a != b), None)
        where = f", first difference at index {first}" if first is not None else ""
        raise Mismatch(f"{what}: sent {show(message)}, got {show(back)}{where}")
    print(f"ok: {what} ({show(message, 24)})", flush=True)


async def close_with(url, code, reason):
    async with connect(url, open_timeout=STEP_TIMEOUT, close_timeout=STEP_TIMEOUT) as ws:
        await echo(ws, "before close", f"echo before closing with {code}")
        await asyncio.wait_for(ws.close(code=code, reason=reason), STEP_TIMEOUT)
        received = ws.protocol.close_rcvd
        if received is None:
            raise Mismatch(f"close {code}: the server sent no close frame back "
                           f"(connection state {ws.protocol.state.name})")
        if received.code != code:
            raise Mismatch(f"close {code} {reason!r}: the server answered with close "
                           f"{received.code} {received.reason!r}")
        print(f"ok: close {code} {reason!r} answered with close {received.code} "
              f"{received.reason!r}", flush=True)


async def main(url):
    async with connect(url, open_timeout=STEP_TIMEOUT, close_timeout=STEP_TIMEOUT,
                       max_size=4 * 1024 * 1024) as ws:
        agent = ws.response.headers.get("Server", "(no Server header)")
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        print(f"ok: connected to {url}, server {agent!r}, extensions {extensions!r}", flush=True)

        await echo(ws, "hello, berth", "ASCII text")
        await echo(ws, "h\u00e9llo w\u00f6rld \u2014 \u65e5\u672c\u8a9e \U0001f389\U0001f30d",
                   "UTF-8 text with 2-, 3- and 4-byte sequences")
        await echo(ws, "\u00e9" * 40_000, "80 KB of 2-byte UTF-8")
        await echo(ws, "", "empty text")
        await echo(ws, b"", "empty binary")
        await echo(ws, bytes(range(256)), "binary with all 256 byte values")
        await echo(ws, b"\x00not text \xff\xfe", "binary that is not UTF-8")
        await echo(ws, os.urandom(200 * 1024), "200 KiB random binary")

        # A fragmented message: the library sends one frame per item.
        parts = ["frag", "men\u00e9", "ted \U0001f389"]
        await asyncio.wait_for(ws.send(parts), STEP_TIMEOUT)
        back = await recv(ws, "fragmented text")
        if back != "".join(parts):
            raise Mismatch(f"fragmented text: sent {parts!r} in 3 frames, got {show(back)}")
        print("ok: fragmented text (3 frames) came back whole", flush=True)

        sent = [f"message {i}" if i % 2 else f"message {i}".encode() for i in range(100)]
        for message in sent:
            await asyncio.wait_for(ws.send(message), STEP_TIMEOUT)
        for i, message in enumerate(sent):
            back = await recv(ws, f"pipelined message {i}")
            if back != message or type(back) is not type(message):
                raise Mismatch(f"pipelined message {i}: expected {show(message)}, got {show(back)}")
        print("ok: 100 pipelined messages, text and binary, came back in order", flush=True)

        pong = await ws.ping(b"berth-ping")
        try:
            latency = await asyncio.wait_for(pong, STEP_TIMEOUT)
        except asyncio.TimeoutError:
            raise Mismatch(f"ping: no pong within {STEP_TIMEOUT:.0f} s") from None
        print(f"ok: ping answered with a pong in {latency * 1000:.1f} ms", flush=True)

    await close_with(url, 1000, "")
    await close_with(url, 4000, "berth test done")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} ws://HOST:PORT/ws-echo")
    try:
        asyncio.run(asyncio.wait_for(main(sys.argv[1]), 120))
    except Mismatch as err:
        sys.exit(f"FAIL: {err}")
    except InvalidHandshake as err:
        sys.exit(f"FAIL: the WebSocket handshake with {sys.argv[1]} failed: {err}")
    except (OSError, ConnectionClosed, asyncio.TimeoutError) as err:
        sys.exit(f"FAIL: {type(err).__name__}: {err}")
    except Exception as err:  # noqa: BLE001 - any other error fails the check, explained
        sys.exit(f"FAIL: unexpected {type(err).__name__}: {err}")
    print("ws_echo_client: all checks passed", flush=True)

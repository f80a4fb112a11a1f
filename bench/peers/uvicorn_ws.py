"""The `ws-echo` app as a bare ASGI app, for uvicorn with uvloop and the `websockets` library.

A WebSocket at `/ws-echo` sends every text and binary message back unchanged and answers a close
with a close, like Berth's `ws-echo` sample app; any other WebSocket path is refused (403) and any
plain HTTP request gets `200 uvicorn-ws`. No framework, as in uvicorn_app.py: the comparison is
with uvicorn and its WebSocket protocol. `--ws websockets-sansio` is what uvicorn's `auto` picks
when `websockets` is installed; permessage-deflate is on by default in uvicorn but is only used
when the client offers it, and the suite's client (wsload, on tungstenite) does not.

Run with: `python -m uvicorn uvicorn_ws:app --host 127.0.0.1 --port 8086 --loop uvloop --http
httptools --ws websockets-sansio --no-access-log` from this directory (bench/run.py does).
"""

TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
BODY = b"uvicorn-ws\n"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "websocket":
        await echo(scope, receive, send)
    else:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": TEXT + [(b"content-length", str(len(BODY)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": BODY})


async def echo(scope, receive, send):
    message = await receive()  # websocket.connect
    if message["type"] != "websocket.connect":
        return
    if scope["path"] != "/ws-echo":
        await send({"type": "websocket.close", "code": 1000})  # before accept: HTTP 403
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
        elif kind == "websocket.disconnect":
            # uvicorn has answered the client's close already.
            return

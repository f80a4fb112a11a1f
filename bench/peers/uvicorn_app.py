"""The hello and fetch endpoints as a bare ASGI app, for uvicorn with uvloop and httptools.

No framework: this is the fastest shape of a uvicorn app, so the comparison is with uvicorn
itself. `/fetch?url=URL` GETs URL through one pooled aiohttp.ClientSession (opened at startup)
and answers with the first 20 bytes of its body, like Berth's `fetch` sample app.

Run with: `python -m uvicorn uvicorn_app:app --host 127.0.0.1 --port 8084 --loop uvloop
--http httptools --no-access-log` from this directory (bench/run.py does).
"""

from urllib.parse import parse_qs

import aiohttp

HELLO = b"Hello, world!\n"
TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
OCTETS = [(b"content-type", b"application/octet-stream")]

session = None


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/hello":
        await answer(send, 200, TEXT, HELLO)
    elif path == "/fetch":
        url = parse_qs(scope["query_string"].decode("latin-1")).get("url")
        if not url:
            await answer(send, 400, TEXT, b"missing ?url= parameter\n")
            return
        try:
            async with session.get(url[0]) as upstream:
                body = await upstream.read()
        except Exception as err:  # the client gets the reason, as Berth's app gives it
            await answer(send, 502, TEXT, f"upstream failed: {err}\n".encode())
            return
        await answer(send, 200, OCTETS, body[:20])
    else:
        await answer(send, 404, TEXT, b"not found\n")


async def answer(send, status, headers, body):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers + [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive, send):
    global session
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return

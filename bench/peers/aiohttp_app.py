"""The hello and fetch endpoints as an aiohttp web app, on uvloop.

`/fetch?url=URL` GETs URL through one pooled aiohttp.ClientSession and answers with the first
20 bytes of its body, like Berth's `fetch` sample app. The access log is off.

Run with: `python aiohttp_app.py --port 8085` (bench/run.py does).
"""

import argparse
import asyncio

import aiohttp
import uvloop
from aiohttp import web

HELLO = b"Hello, world!\n"


async def hello(request):
    return web.Response(body=HELLO, content_type="text/plain", charset="utf-8")


async def fetch(request):
    url = request.query.get("url")
    if not url:
        return web.Response(status=400, text="missing ?url= parameter\n")
    try:
        async with request.app["session"].get(url) as upstream:
            body = await upstream.read()
    except Exception as err:  # the client gets the reason, as Berth's app gives it
        return web.Response(status=502, text=f"upstream failed: {err}\n")
    return web.Response(body=body[:20], content_type="application/octet-stream")


async def client_session(app):
    app["session"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    yield
    await app["session"].close()


async def serve(host, port):
    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/fetch", fetch)
    app.cleanup_ctx.append(client_session)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=8192).start()
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()  # until the process is stopped
    finally:
        await runner.cleanup()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8085)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

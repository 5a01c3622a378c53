"""A tiny ASGI app for the supervisor's uvicorn tests and benchmark.

Run unmodified under the supervisor, which hands it the listening socket as
fd 3:  supervisor --ready auto --chdir testdata/uvicorn -- \
           /usr/bin/python3 -m uvicorn --fd 3 app:app
It answers every request with its own pid.
"""
import os

PID = str(os.getpid())


async def app(scope, receive, send):
    if scope["type"] != "http":
        return  # lifespan and websocket: nothing to set up
    body = ("hello from pid " + PID + "\n").encode()
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})

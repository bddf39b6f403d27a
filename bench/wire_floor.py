"""The wire floor: an HTTP server that answers every request at once, with no model.

The load tool's p50 against it is the round trip every server pays before doing
any work (the client, the loopback, one request and one response), so the
report can tell what the service itself adds at concurrency 1.

    .venv-serve/bin/python -m bench.wire_floor --port 8002
"""

from __future__ import annotations

import argparse
import asyncio

ANSWER = b'[{"label":"x","score":1.0}]'
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(answer, host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    try:
        import uvloop  # the service's own event loop, so the floor is measured alike
    except ModuleNotFoundError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

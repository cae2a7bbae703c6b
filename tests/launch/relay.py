"""A byte relay between two socket addresses, for reaching a loopback server from a namespace.

A network namespace has a loopback of its own, so a server on the host's 127.0.0.1 is out of its
reach. Unix sockets are found by path, not by network, so two relays bridge the gap without any
address outside the namespaces: the host side relays ``unix:PATH`` to ``tcp:127.0.0.1:PORT``, and
inside each namespace ``tcp:127.0.0.1:PORT`` is relayed to ``unix:PATH``. Clients in the namespace
then use the same URL as clients on the host, as a pod would use a Service.

    python relay.py LISTEN TARGET      # each of the form tcp:HOST:PORT or unix:PATH

The relay prints ``ready`` once it listens and runs until it is signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

CHUNK = 64 * 1024


async def _open(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    kind, _, rest = address.partition(":")
    if kind == "unix":
        return await asyncio.open_unix_connection(rest)
    host, _, port = rest.rpartition(":")
    return await asyncio.open_connection(host, int(port))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        # Pass the half-close on, so HTTP clients see the end of a reply.
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()


async def _serve(listen: str, target: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await _open(target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()

    kind, _, rest = listen.partition(":")
    if kind == "unix":
        server = await asyncio.start_unix_server(handle, rest)
    else:
        host, _, port = rest.rpartition(":")
        server = await asyncio.start_server(handle, host, int(port), reuse_address=True)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], sys.argv[2]))

"""A TCP relay that delays what it forwards: a link's latency where the
kernel has no ``tc netem`` (the machines here do not).

Run inside a network namespace (``python -m pyqemu.machine.relay LISTEN
TARGET DELAY``), it accepts connections on LISTEN and forwards each to
TARGET, holding every chunk read in either direction for DELAY seconds
before writing it on, in order.  So a connection through it sees DELAY
more latency each way and the same bandwidth, as with netem's ``delay``
on both ends of a link.  It prints ``ready`` once it listens.
"""

from __future__ import annotations

import asyncio
import sys
import time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay: float) -> None:
    """Copy *reader* to *writer*, each chunk *delay* seconds late."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(pump())
    try:
        while True:
            data = await reader.read(65536)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                break
        await task
    finally:
        task.cancel()


async def _serve(listen: tuple[str, int], target: tuple[str, int],
                 delay: float) -> None:
    async def connection(reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_w, delay),
                                 _pipe(up_r, writer, delay))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_w):
                w.close()

    server = await asyncio.start_server(connection, *listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def _addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main(argv: list[str]) -> None:
    listen, target, delay = argv
    asyncio.run(_serve(_addr(listen), _addr(target), float(delay)))


if __name__ == "__main__":
    main(sys.argv[1:])

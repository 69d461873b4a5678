"""The server's connections have TCP_NODELAY.

Without it, uvicorn writes a response's headers and body in two sends; Nagle's algorithm holds the body until the
client ACKs the headers, and the client delays that ACK (40 ms on Linux): every answer costs ~44 ms on 127.0.0.1.
The check goes through asyncio exactly as uvicorn does (``loop.create_server(sock=...)`` with the server's socket)
and reads the option on the accepted connection's transport; nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import socket

from tinkerflow.shell.serve import server as server_module


async def _accepted_nodelay(sock: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    seen: asyncio.Future[int] = loop.create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    listener = await loop.create_server(Probe, sock=sock)
    try:
        host, port = sock.getsockname()[:2]
        _, writer = await asyncio.open_connection(host, port)
        try:
            return await asyncio.wait_for(seen, timeout=30)
        finally:
            writer.close()
    finally:
        listener.close()
        await listener.wait_closed()


def test_accepted_connections_have_tcp_nodelay() -> None:
    sock = server_module._bound_socket("127.0.0.1", 0)
    assert asyncio.run(_accepted_nodelay(sock)) != 0

"""Both socket servers let cancellation through: a cancelled connection task ends
cancelled (not quietly done), so whoever cancels it sees what happened."""
import asyncio
import socket

import pytest

from monitor.hmp_server import HmpServer
from monitor.qmp_server import QmpServer
from fake_core import FakeCore
async def _cancel_while_serving(server):
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    peer_reader, peer_writer = await asyncio.open_unix_connection(sock=theirs)
    task = asyncio.get_running_loop().create_task(server.handle_connection(reader, writer))
    greeting = await asyncio.wait_for(peer_reader.read(4096), timeout=30)
    task.cancel()
    await asyncio.wait([task], timeout=30)
    rest = await asyncio.wait_for(peer_reader.read(4096), timeout=30)
    peer_writer.close()
    return task, greeting, rest


@pytest.mark.parametrize("make_server", [QmpServer, HmpServer], ids=["qmp", "hmp"])
def test_a_cancelled_connection_task_ends_cancelled(make_server):
    server = make_server(FakeCore())
    task, greeting, rest = asyncio.run(_cancel_while_serving(server))
    assert greeting                      # it was serving: the greeting or banner came
    assert task.cancelled()              # CancelledError was re-raised, not swallowed
    assert rest == b""                   # and the connection was still closed
    assert server.writers() == []

"""The Kafka client under uvloop (what uvicorn runs the services on): a write on a connection
the broker closed fails as a broken connection, which every aiokafka caller retries."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest

import shared.kafka  # noqa: F401  (what every service imports: the fix under test)


async def _send_after_the_broker_closed() -> BaseException:
    async def broker_closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(broker_closes, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.read()  # end of stream: the broker went away
        writer.close()  # the transport is closed, as aiokafka's reader task leaves it
        conn = AIOKafkaConnection("127.0.0.1", port)
        conn._reader, conn._writer, conn._versions = reader, writer, {}
        conn._read_task = asyncio.create_task(asyncio.Event().wait())  # stands in for it
        with pytest.raises(Exception) as raised:
            await conn.send(MetadataRequest([]))
        return raised.value
    finally:
        server.close()


def test_a_send_on_a_connection_the_broker_closed_is_a_connection_error_under_uvloop() -> None:
    raised = uvloop.run(_send_after_the_broker_closed())
    # Not uvloop's RuntimeError, which ended the client's metadata task for good.
    assert isinstance(raised, KafkaConnectionError), repr(raised)

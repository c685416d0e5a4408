"""A lean HTTP/1.1 keep-alive client for the load generators.

A load generator on the same 2-core machine as the server must cost far less per request than
the server does, or it measures its own CPU: httpx spends about a millisecond of Python per
request, this spends tens of microseconds (requests are pre-encoded bytes, responses need a
``Content-Length``, which tornado always sends for a finished answer).

* :class:`Connection`: one socket, one request at a time;
* :class:`Pool`: ``size`` connections; a request waits for a free one (the wait is part of its
  latency: an open-loop generator must not hide a saturated server).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


def encode(
    method: str, path: str, host: str, *, body: Any = None, headers: dict[str, str] | None = None
) -> bytes:
    """A whole HTTP/1.1 request as bytes (``body`` is sent as JSON)."""
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(payload)}"]
    if body is not None:
        lines.append("Content-Type: application/json")
    lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Status and body of the answer to one pre-encoded request."""
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if length is None:
            raise ValueError(f"answer without Content-Length: {head[:200]!r}")
        return status, await self._reader.readexactly(length)

    def close(self) -> None:
        self._writer.close()


class Pool:
    def __init__(self, host: str, port: int, size: int) -> None:
        self.host = host
        self.port = port
        self.size = size
        self._idle: asyncio.Queue[Connection] = asyncio.Queue()
        self._all: list[Connection] = []

    async def open(self) -> Pool:
        for _ in range(self.size):
            connection = await Connection.open(self.host, self.port)
            self._all.append(connection)
            self._idle.put_nowait(connection)
        return self

    async def send(self, request: bytes) -> tuple[int, bytes]:
        connection = await self._idle.get()
        try:
            answer = await connection.send(request)
        except BaseException:
            # The connection is in an unknown state: replace it.
            connection.close()
            self._all.remove(connection)
            replacement = await Connection.open(self.host, self.port)
            self._all.append(replacement)
            self._idle.put_nowait(replacement)
            raise
        self._idle.put_nowait(connection)
        return answer

    def close(self) -> None:
        for connection in self._all:
            connection.close()

"""wire_frame: the bytes of one event frame are exactly what tornado's own WebSocket writer sends
for the same text, at every length boundary of RFC 6455's length field."""

from __future__ import annotations

from typing import Any

import pytest
from tornado.websocket import WebSocketProtocol13

from qubix_jupyter.server_extension.websocket import wire_frame


class Capture:
    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data


def tornado_frame(text: str) -> bytes:
    protocol: Any = WebSocketProtocol13.__new__(WebSocketProtocol13)
    protocol.mask_outgoing = False  # a server's frames are unmasked
    protocol._wire_bytes_out = 0
    protocol.stream = Capture()
    protocol._write_frame(True, 0x1, text.encode())
    return protocol.stream.written  # type: ignore[no-any-return]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_a_frame_is_tornados_frame_of_the_same_text(size: int) -> None:
    text = "x" * size
    assert wire_frame(text) == tornado_frame(text)


def test_lengths_count_bytes_not_characters() -> None:
    text = '{"location":"Zürich","price":"' + "€" * 40 + '"}'  # 71 characters, 151 bytes
    assert len(text) < 126 < len(text.encode())
    assert wire_frame(text) == tornado_frame(text)

"""KangarooTwelve, the hash Qubic uses everywhere (identities, keys, signatures, transaction ids).

Qubic calls K12 with an empty customization string; the output length varies by use (3 bytes for
identity checksums, 32 for digests and keys, 64 inside SchnorrQ).
"""

from __future__ import annotations

from Crypto.Hash import KangarooTwelve


def k12(data: bytes | bytearray | memoryview, out_len: int = 32) -> bytes:
    """Return ``out_len`` bytes of KangarooTwelve(``data``) with an empty customization string."""
    if out_len < 1:
        raise ValueError(f"K12 output length must be at least 1 byte, got {out_len}")
    return KangarooTwelve.new(data=bytes(data), custom=b"").read(out_len)

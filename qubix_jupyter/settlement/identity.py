"""Qubic identities: the 60-letter text form of a 32-byte public key.

Layout: the key is read as four little-endian uint64 words; each word is written as 14 base-26
letters ('A' = 0 … 'Z' = 25), least significant digit first. Four more letters carry a checksum:
the low 18 bits of K12(key, 3 bytes) read little-endian, also base 26, least significant first.

The same encoding in lowercase names transaction ids (of a 32-byte K12 digest) and private-key
ids (of the private key bytes); only the case differs, the checksum is computed identically.
"""

from __future__ import annotations

from .k12 import k12

IDENTITY_LENGTH = 60
PUBLIC_KEY_LENGTH = 32
_GROUP_LETTERS = 14
_CHECKSUM_LETTERS = 4
_CHECKSUM_MASK = (1 << 18) - 1
_UINT64_LIMIT = 1 << 64


class InvalidIdentity(ValueError):
    """A string that is not a well-formed Qubic identity (length, letters, groups or checksum)."""


def _base26(value: int, letters: int, alphabet_start: int) -> str:
    digits = []
    for _ in range(letters):
        value, digit = divmod(value, 26)
        digits.append(chr(alphabet_start + digit))
    return "".join(digits)


def _checksum(key: bytes) -> int:
    return int.from_bytes(k12(key, 3), "little") & _CHECKSUM_MASK


def identity_from_public_key(public_key: bytes, lowercase: bool = False) -> str:
    """Encode 32 bytes (a public key, or any 32-byte value such as a digest) as an identity."""
    if not isinstance(public_key, bytes | bytearray | memoryview):
        raise TypeError(f"public key must be bytes, not {type(public_key).__name__}")
    key = bytes(public_key)
    if len(key) != PUBLIC_KEY_LENGTH:
        raise ValueError(f"public key must be {PUBLIC_KEY_LENGTH} bytes, got {len(key)}")
    start = ord("a") if lowercase else ord("A")
    parts = [
        _base26(int.from_bytes(key[i : i + 8], "little"), _GROUP_LETTERS, start)
        for i in range(0, PUBLIC_KEY_LENGTH, 8)
    ]
    parts.append(_base26(_checksum(key), _CHECKSUM_LETTERS, start))
    return "".join(parts)


def _letters_value(letters: str) -> int:
    value = 0
    for ch in reversed(letters):
        value = value * 26 + (ord(ch) - ord("A"))
    return value


def public_key_from_identity(identity: str) -> bytes:
    """Decode an uppercase identity to its 32-byte public key, checking every rule.

    Raises :class:`InvalidIdentity` when the string has the wrong length, contains anything but
    'A'..'Z', has a 14-letter group whose value does not fit in 64 bits, or fails its checksum.
    """
    if not isinstance(identity, str):
        raise InvalidIdentity(f"identity must be a string, not {type(identity).__name__}")
    if len(identity) != IDENTITY_LENGTH:
        raise InvalidIdentity(
            f"identity must be {IDENTITY_LENGTH} letters, got {len(identity)} characters"
        )
    if not (identity.isascii() and identity.isalpha() and identity.isupper()):
        raise InvalidIdentity("identity must contain only the uppercase letters A-Z")
    key = bytearray()
    for group in range(4):
        letters = identity[group * _GROUP_LETTERS : (group + 1) * _GROUP_LETTERS]
        value = _letters_value(letters)
        if value >= _UINT64_LIMIT:
            raise InvalidIdentity(
                f"identity letters {group * _GROUP_LETTERS + 1}-{(group + 1) * _GROUP_LETTERS} "
                "encode a value that does not fit in 64 bits"
            )
        key += value.to_bytes(8, "little")
    expected = _checksum(bytes(key))
    if _letters_value(identity[4 * _GROUP_LETTERS :]) != expected:
        raise InvalidIdentity("identity checksum does not match (mistyped or truncated identity?)")
    return bytes(key)


def is_valid_identity(identity: object) -> bool:
    """True iff ``identity`` decodes and re-encodes to exactly the same 60 uppercase letters."""
    if not isinstance(identity, str):
        return False
    try:
        key = public_key_from_identity(identity)
    except InvalidIdentity:
        return False
    return identity_from_public_key(key) == identity

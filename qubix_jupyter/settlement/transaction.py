"""Qubic transactions: the exact bytes nodes accept, their digest, signature and id.

Layout (little endian throughout)::

    sourcePublicKey 32 | destinationPublicKey 32 | amount int64 | tick uint32
    | inputType uint16 | inputSize uint16 | payload (inputSize bytes) | signature 64

The signature is SchnorrQ over digest = K12(header ‖ payload, 32). The transaction id is the
lowercase identity encoding of K12(all signed bytes, 32).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import struct
from dataclasses import dataclass

from . import schnorrq
from .identity import identity_from_public_key
from .k12 import k12

MAX_AMOUNT = 10**15
"""The largest amount a transaction may carry (Qubic's total supply bound)."""
MAX_PAYLOAD = 1024
"""Largest inputSize nodes accept."""
MAX_TICK = 2**32 - 1
HEADER_SIZE = 80
SIGNATURE_SIZE = 64
_HEADER = struct.Struct("<32s32sqIHH")


class InvalidTransaction(ValueError):
    """Transaction fields or bytes that do not form a valid Qubic transaction."""


def _check_key(name: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) != 32:
        raise InvalidTransaction(f"{name} must be 32 bytes, got {len(value)}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidTransaction(f"{name} must be between {low} and {high}, got {value}")


@dataclass(frozen=True, slots=True)
class Transaction:
    """An immutable Qubic transaction, signed (``signature`` set) or not.

    Field values are validated on construction: keys are 32 bytes, 0 ≤ amount ≤ MAX_AMOUNT,
    tick fits in uint32, input_type in uint16, payload ≤ MAX_PAYLOAD bytes, signature 64 bytes
    or None. Wrong types raise TypeError, out-of-range values :class:`InvalidTransaction`.
    """

    source_public_key: bytes
    destination_public_key: bytes
    amount: int
    tick: int
    input_type: int = 0
    payload: bytes = b""
    signature: bytes | None = None

    def __post_init__(self) -> None:
        _check_key("source public key", self.source_public_key)
        _check_key("destination public key", self.destination_public_key)
        _check_int("amount", self.amount, 0, MAX_AMOUNT)
        _check_int("tick", self.tick, 0, MAX_TICK)
        _check_int("input type", self.input_type, 0, 0xFFFF)
        if not isinstance(self.payload, bytes):
            raise TypeError(f"payload must be bytes, not {type(self.payload).__name__}")
        if len(self.payload) > MAX_PAYLOAD:
            raise InvalidTransaction(
                f"payload must be at most {MAX_PAYLOAD} bytes, got {len(self.payload)}"
            )
        if self.signature is not None:
            if not isinstance(self.signature, bytes):
                raise TypeError(f"signature must be bytes, not {type(self.signature).__name__}")
            if len(self.signature) != SIGNATURE_SIZE:
                raise InvalidTransaction(
                    f"signature must be {SIGNATURE_SIZE} bytes, got {len(self.signature)}"
                )

    def header_and_payload(self) -> bytes:
        """The signed part: the 80-byte header followed by the payload."""
        return (
            _HEADER.pack(
                self.source_public_key,
                self.destination_public_key,
                self.amount,
                self.tick,
                self.input_type,
                len(self.payload),
            )
            + self.payload
        )

    def digest(self) -> bytes:
        """K12(header ‖ payload, 32): what the source signs."""
        return k12(self.header_and_payload(), 32)

    def signed(self, subseed: bytes) -> Transaction:
        """A copy signed with ``subseed``, which must belong to the source public key."""
        private_key = schnorrq.private_key_from_subseed(subseed)
        if schnorrq.public_key_from_private_key(private_key) != self.source_public_key:
            raise InvalidTransaction("the subseed does not belong to the source public key")
        signature = schnorrq.sign(subseed, self.source_public_key, self.digest())
        return dataclasses.replace(self, signature=signature)

    def verify_signature(self) -> bool:
        """True iff the transaction carries a valid signature by its source key."""
        if self.signature is None:
            return False
        return schnorrq.verify(self.source_public_key, self.digest(), self.signature)

    def to_bytes(self) -> bytes:
        """The wire form nodes accept (header ‖ payload ‖ signature); needs a signature."""
        return self.header_and_payload() + self._require_signature()

    @classmethod
    def from_bytes(cls, data: bytes) -> Transaction:
        """Parse the wire form strictly: exactly 80 + inputSize + 64 bytes, valid fields.

        The signature is parsed, not verified (see :meth:`verify_signature`).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"transaction data must be bytes, not {type(data).__name__}")
        data = bytes(data)
        if len(data) < HEADER_SIZE + SIGNATURE_SIZE:
            raise InvalidTransaction(
                f"a signed transaction is at least {HEADER_SIZE + SIGNATURE_SIZE} bytes, "
                f"got {len(data)}"
            )
        source, destination, amount, tick, input_type, input_size = _HEADER.unpack_from(data)
        expected = HEADER_SIZE + input_size + SIGNATURE_SIZE
        if len(data) != expected:
            raise InvalidTransaction(
                f"inputSize {input_size} implies {expected} bytes, got {len(data)} "
                f"({'trailing' if len(data) > expected else 'missing'} data)"
            )
        end = HEADER_SIZE + input_size
        return cls(
            source_public_key=source,
            destination_public_key=destination,
            amount=amount,
            tick=tick,
            input_type=input_type,
            payload=data[HEADER_SIZE:end],
            signature=data[end:],
        )

    def to_base64(self) -> str:
        """Standard base64 of :meth:`to_bytes` (the form the broadcast RPC takes)."""
        return base64.b64encode(self.to_bytes()).decode("ascii")

    @classmethod
    def from_base64(cls, text: str) -> Transaction:
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidTransaction(f"transaction is not valid base64: {exc}") from exc
        return cls.from_bytes(data)

    @property
    def tx_id(self) -> str:
        """Lowercase identity encoding of K12(signed bytes, 32), as explorers and RPC show it."""
        return identity_from_public_key(k12(self.to_bytes(), 32), lowercase=True)

    def _require_signature(self) -> bytes:
        if self.signature is None:
            raise InvalidTransaction("the transaction is not signed (use .signed(subseed))")
        return self.signature

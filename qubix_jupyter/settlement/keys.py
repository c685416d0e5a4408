"""Qubic seeds and the keys derived from them.

    seed (55 letters a-z) → subseed = K12(letter values 0..25, 32)
                          → private key = K12(subseed, 32)
                          → public key = encode([private key]G) → identity (60 letters)

The seed and the subseed are secrets: anyone holding either can spend. :class:`KeyPair` keeps
them out of its ``repr`` and signs through :mod:`.schnorrq` (not constant-time; see there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import schnorrq
from .identity import identity_from_public_key
from .k12 import k12

SEED_LENGTH = 55


class InvalidSeed(ValueError):
    """A seed that is not exactly 55 lowercase ASCII letters a-z."""


def validate_seed(seed: object) -> str:
    """Return ``seed`` unchanged if it is 55 lowercase letters a-z, else raise :class:`InvalidSeed`.

    The message never echoes the seed itself (it may be a real secret with a typo).
    """
    if not isinstance(seed, str):
        raise InvalidSeed(f"seed must be a string, not {type(seed).__name__}")
    if len(seed) != SEED_LENGTH:
        raise InvalidSeed(f"seed must be {SEED_LENGTH} letters, got {len(seed)} characters")
    if not all("a" <= ch <= "z" for ch in seed):
        raise InvalidSeed("seed must contain only the lowercase letters a-z")
    return seed


def subseed_from_seed(seed: str) -> bytes:
    """K12 of the seed's letter values ('a' = 0 … 'z' = 25), 32 bytes."""
    seed = validate_seed(seed)
    return k12(bytes(ord(ch) - ord("a") for ch in seed), 32)


def private_key_id(private_key: bytes) -> str:
    """The lowercase 60-letter form of a private key, as Qubic wallets display it (secret!)."""
    return identity_from_public_key(private_key, lowercase=True)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A Qubic key pair derived from a seed. ``repr`` shows only the public identity."""

    subseed: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    public_key: bytes = field(repr=False)
    identity: str

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        return cls.from_subseed(subseed_from_seed(seed))

    @classmethod
    def from_subseed(cls, subseed: bytes) -> KeyPair:
        private_key = schnorrq.private_key_from_subseed(subseed)
        public_key = schnorrq.public_key_from_private_key(private_key)
        return cls(bytes(subseed), private_key, public_key, identity_from_public_key(public_key))

    def sign(self, digest: bytes) -> bytes:
        """SchnorrQ signature (64 bytes) of a 32-byte digest."""
        return schnorrq.sign(self.subseed, self.public_key, digest)

    def verify(self, digest: bytes, signature: bytes) -> bool:
        return schnorrq.verify(self.public_key, digest, signature)

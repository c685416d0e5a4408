"""Qubic settlement: offline cryptography (K12, identities, FourQ, SchnorrQ, transactions, wallet).

Everything here runs without the network. See docs/qubic-crypto.md for the sources, the test
vectors and the constant-time caveat that applies to signing.
"""

from .identity import (
    InvalidIdentity,
    identity_from_public_key,
    is_valid_identity,
    public_key_from_identity,
)
from .k12 import k12
from .keys import InvalidSeed, KeyPair
from .schnorrq import sign, verify

__all__ = [
    "InvalidIdentity",
    "InvalidSeed",
    "KeyPair",
    "identity_from_public_key",
    "is_valid_identity",
    "k12",
    "public_key_from_identity",
    "sign",
    "verify",
]

"""Qubic settlement.

The offline cryptography — K12, identities, FourQ, SchnorrQ, keys, transactions, the local
wallet — needs no network; its everyday names are re-exported here. See docs/qubic-crypto.md
for the sources, the test vectors and the constant-time caveat that applies to signing.
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
from .transaction import MAX_AMOUNT, InvalidTransaction, Transaction

__all__ = [
    "MAX_AMOUNT",
    "InvalidIdentity",
    "InvalidSeed",
    "InvalidTransaction",
    "KeyPair",
    "Transaction",
    "identity_from_public_key",
    "is_valid_identity",
    "k12",
    "public_key_from_identity",
    "sign",
    "verify",
]

"""Qubic's SchnorrQ signatures over FourQ (FourQlib's SchnorrQ with KangarooTwelve for SHA-512).

Signing, for a 32-byte subseed, its public key A and a 32-byte message digest M:

    k = K12(subseed, 64);   a = k[0:32] (the private key)
    r = LE(K12(k[32:64] ‖ M, 64)[0:32]) mod N;       R = encode([r]G)
    h = LE(K12(R ‖ A ‖ M, 64)[0:32]) mod N;          s = (r - h·a) mod N
    signature = R ‖ LE32(s)

Only the low 32 bytes of each 64-byte K12 output enter the scalars — the FourQlib scalar
routines read 256-bit inputs — and the public ``sign_deterministic`` vectors confirm it (taking
the whole 512-bit value gives different signatures).

Verification accepts iff encode([s]G + [h]A) == R, after rejecting: a public key or R with
the top bit of byte 15 set (non-canonical y0), s ≥ N, a public key that does not decode or
whose point is not of prime order N (identity, small-order and mixed-order points), and an R
that does not decode. These rules are meant to be at least as strict as the network's: nodes
refuse s with its top nibble set (s ≥ 2^252) rather than s ≥ N, and rely on their
endomorphism-based multiplication instead of an explicit subgroup check. Honest signatures
(s < N, keys derived from seeds) satisfy the stricter rules, so nothing real is refused.

Error policy: arguments of the wrong *type* raise ``TypeError`` and of the wrong *length* raise
``ValueError`` — both are programming errors at the call site. Anything wrong with the *content*
of correctly sized inputs (forged, corrupted or malicious data) makes :func:`verify` return
False and never raise. Code that handles untrusted strings of unknown length (e.g.
:func:`qubix_jupyter.settlement.wallet.verify_challenge`) checks lengths before calling.

SECURITY: NOT constant-time. Pure Python integers and a table-driven fixed-base
multiplication indexed by secret digits leak timing about the nonce r and the private key a.
That matters only where a secret is used — signing, i.e. ``qubix wallet`` on the user's own
machine and the platform payout wallet on the server. :func:`verify` handles public data
only. Operators should run the payout signer on a dedicated host with no co-tenants, or swap
in a constant-time native implementation behind these same function signatures
(see docs/qubic-crypto.md).
"""

from __future__ import annotations

from . import fourq
from .k12 import k12

SIGNATURE_LENGTH = 64
PUBLIC_KEY_LENGTH = 32
SUBSEED_LENGTH = 32
DIGEST_LENGTH = 32


def _check_bytes(name: str, value: object, length: int) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if len(value) != length:
        raise ValueError(f"{name} must be {length} bytes, got {len(value)}")
    return value


def _scalar(hash64: bytes) -> int:
    """The SchnorrQ scalar from a 64-byte K12 output: its low 256 bits, reduced mod N."""
    return int.from_bytes(hash64[:32], "little") % fourq.N


def private_key_from_subseed(subseed: bytes) -> bytes:
    """The 32-byte private key K12(subseed, 32) (= the first half of K12(subseed, 64))."""
    return k12(_check_bytes("subseed", subseed, SUBSEED_LENGTH), 32)


def public_key_from_private_key(private_key: bytes) -> bytes:
    """encode([a]G), a = the private key read as a little-endian integer (G has order N, so
    reducing a mod N first, as the fixed-base multiplication does, gives the same point)."""
    key = _check_bytes("private key", private_key, 32)
    return fourq.mul_base(int.from_bytes(key, "little")).encode()


def sign(subseed: bytes, public_key: bytes, digest: bytes) -> bytes:
    """Sign a 32-byte digest; returns the 64-byte signature R ‖ s. Deterministic.

    ``public_key`` must be the key of ``subseed`` (it is hashed into h; a wrong key yields a
    signature that does not verify — :class:`qubix_jupyter.settlement.keys.KeyPair` keeps them
    together).
    """
    subseed = _check_bytes("subseed", subseed, SUBSEED_LENGTH)
    public_key = _check_bytes("public key", public_key, PUBLIC_KEY_LENGTH)
    digest = _check_bytes("digest", digest, DIGEST_LENGTH)
    k = k12(subseed, 64)
    a = int.from_bytes(k[:32], "little")
    r = _scalar(k12(k[32:] + digest, 64))
    encoded_r = fourq.mul_base(r).encode()
    h = _scalar(k12(encoded_r + public_key + digest, 64))
    s = (r - h * a) % fourq.N
    return encoded_r + s.to_bytes(32, "little")


def verify(public_key: bytes, digest: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid SchnorrQ signature of ``digest`` under ``public_key``.

    Raises TypeError/ValueError only for non-bytes arguments or wrong lengths (32, 32, 64);
    returns False for every other defect.
    """
    public_key = _check_bytes("public key", public_key, PUBLIC_KEY_LENGTH)
    digest = _check_bytes("digest", digest, DIGEST_LENGTH)
    signature = _check_bytes("signature", signature, SIGNATURE_LENGTH)
    if public_key[15] & 0x80 or signature[15] & 0x80:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= fourq.N:  # also covers the top nibble of byte 63 (N < 2^246)
        return False
    encoded_r = signature[:32]
    try:
        fourq.decode_point(encoded_r)
        key = fourq.SubgroupPoint.decode(public_key)
    except fourq.InvalidPoint:
        return False
    h = _scalar(k12(encoded_r + public_key + digest, 64))
    return key.double_mul_base(s, h).encode() == encoded_r

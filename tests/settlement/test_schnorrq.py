"""Seeds, keys and SchnorrQ: public vectors, sign/verify properties, forgery rejection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qubix_jupyter.settlement import fourq, schnorrq
from qubix_jupyter.settlement.identity import identity_from_public_key
from qubix_jupyter.settlement.keys import (
    InvalidSeed,
    KeyPair,
    private_key_id,
    subseed_from_seed,
    validate_seed,
)
from qubix_jupyter.settlement.schnorrq import sign, verify

VECTORS = json.loads(Path(__file__).with_name("qubic-vectors.json").read_text())

seeds = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=55, max_size=55)
digests = st.binary(min_size=32, max_size=32)


def _signed(seed: str, digest: bytes) -> tuple[KeyPair, bytes]:
    pair = KeyPair.from_seed(seed)
    return pair, pair.sign(digest)


def _with_s(signature: bytes, s: int) -> bytes:
    return signature[:32] + s.to_bytes(32, "little")


FIXED = KeyPair.from_seed(VECTORS["seed_to_identity"][0]["seed"])
FIXED_DIGEST = bytes(range(32))
FIXED_SIG = FIXED.sign(FIXED_DIGEST)


@pytest.mark.parametrize("case", VECTORS["seed_to_identity"])
def test_seed_to_identity_vectors(case: dict) -> None:
    pair = KeyPair.from_seed(case["seed"])
    assert pair.identity == case["identity"]
    assert identity_from_public_key(pair.public_key) == case["identity"]
    if "public_key_hex" in case:
        assert pair.public_key.hex() == case["public_key_hex"]
    if "private_key_id_lower" in case:
        assert private_key_id(pair.private_key) == case["private_key_id_lower"]


def test_private_key_scalar_is_not_reduced_but_gives_the_same_point() -> None:
    # The vectors' private keys exceed N; [a]G and [a mod N]G agree since G has order N.
    a = int.from_bytes(FIXED.private_key, "little")
    assert a >= fourq.N
    assert fourq.mul_base(a % fourq.N).encode() == FIXED.public_key
    assert (fourq.GENERATOR * a).encode() == FIXED.public_key


@pytest.mark.parametrize("case", VECTORS["sign_deterministic"])
def test_sign_deterministic_vectors(case: dict) -> None:
    subseed = bytes.fromhex(case["subseed"])
    digest = bytes.fromhex(case["digest"])
    pair = KeyPair.from_subseed(subseed)
    signature = sign(subseed, pair.public_key, digest)
    assert signature.hex() == case["signature"]
    assert verify(pair.public_key, digest, signature)


@settings(max_examples=100, deadline=None)
@given(seeds, digests)
def test_sign_then_verify(seed: str, digest: bytes) -> None:
    pair, signature = _signed(seed, digest)
    assert len(signature) == 64
    assert pair.sign(digest) == signature  # deterministic
    assert verify(pair.public_key, digest, signature)
    assert pair.verify(digest, signature)


@settings(max_examples=100, deadline=None)
@given(seeds, digests, st.integers(0, 63), st.integers(0, 7))
def test_any_flipped_signature_bit_is_rejected(
    seed: str, digest: bytes, byte: int, bit: int
) -> None:
    pair, signature = _signed(seed, digest)
    tampered = bytearray(signature)
    tampered[byte] ^= 1 << bit
    assert not verify(pair.public_key, digest, bytes(tampered))


@settings(max_examples=100, deadline=None)
@given(digests, st.integers(0, 255))
def test_any_flipped_digest_bit_is_rejected(digest: bytes, bit: int) -> None:
    signature = FIXED.sign(digest)
    flipped = bytearray(digest)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert not verify(FIXED.public_key, bytes(flipped), signature)


@settings(max_examples=100, deadline=None)
@given(seeds, digests)
def test_signature_does_not_verify_under_another_key(seed: str, digest: bytes) -> None:
    pair, signature = _signed(seed, digest)
    if pair.public_key != FIXED.public_key:
        assert not verify(FIXED.public_key, digest, signature)


def test_s_at_or_above_the_group_order_is_rejected() -> None:
    s = int.from_bytes(FIXED_SIG[32:], "little")
    # s + N is the same scalar mod N, so only the range check can reject it.
    assert not verify(FIXED.public_key, FIXED_DIGEST, _with_s(FIXED_SIG, s + fourq.N))
    assert not verify(FIXED.public_key, FIXED_DIGEST, _with_s(FIXED_SIG, fourq.N))
    assert not verify(FIXED.public_key, FIXED_DIGEST, _with_s(FIXED_SIG, 2**256 - 1))
    top_nibble = bytearray(FIXED_SIG)
    top_nibble[63] |= 0xF0
    assert not verify(FIXED.public_key, FIXED_DIGEST, bytes(top_nibble))


def test_top_bit_of_byte_15_is_rejected_in_key_and_r() -> None:
    key = bytearray(FIXED.public_key)
    key[15] |= 0x80
    assert not verify(bytes(key), FIXED_DIGEST, FIXED_SIG)
    sig = bytearray(FIXED_SIG)
    sig[15] |= 0x80
    assert not verify(FIXED.public_key, FIXED_DIGEST, bytes(sig))


def test_undecodable_key_or_r_is_rejected() -> None:
    off_curve = next(
        y.to_bytes(16, "little") + bytes(16)
        for y in range(2, 100)
        if not _decodes(y.to_bytes(16, "little") + bytes(16))
    )
    assert not verify(off_curve, FIXED_DIGEST, FIXED_SIG)
    assert not verify(FIXED.public_key, FIXED_DIGEST, off_curve + FIXED_SIG[32:])


def _decodes(data: bytes) -> bool:
    try:
        fourq.decode_point(data)
    except fourq.InvalidPoint:
        return False
    return True


# (0, -1) has order 2: y = -1 = p - 1, x = 0.
ORDER_TWO = fourq.Point.from_affine((0, 0), (fourq.P - 1, 0))


def _forge_with_torsion_key(key_point: fourq.Point, order: int, s: int) -> tuple[bytes, bytes]:
    """A digest and signature (R = [s]G, s) satisfying the verification equation for key_point.

    [s]G + [h]T = [s]G whenever h ≡ 0 (mod order of T), so search digests until h hits that.
    """
    key = key_point.encode()
    encoded_r = fourq.mul_base(s).encode()
    for counter in range(1000):
        digest = counter.to_bytes(32, "little")
        h = schnorrq._scalar(schnorrq.k12(encoded_r + key + digest, 64))
        if h % order == 0:
            assert fourq.double_mul_base(s, h, key_point).encode() == encoded_r
            return digest, encoded_r + s.to_bytes(32, "little")
    raise AssertionError("no digest found")


def test_small_order_keys_are_refused_although_the_equation_holds() -> None:
    assert not ORDER_TWO.is_identity()
    assert (ORDER_TWO * 2).is_identity()
    for key_point, order in ((fourq.IDENTITY, 1), (ORDER_TWO, 2)):
        digest, forged = _forge_with_torsion_key(key_point, order, s=12345)
        assert not verify(key_point.encode(), digest, forged)


def test_mixed_order_key_is_refused_although_the_equation_holds() -> None:
    # A' = A + T (T of order 2): the holder of a signs for A'; [s]G + [h]A' = R + [h]T, which
    # equals R for every even h. Refuse such keys outright.
    mixed = fourq.decode_point(FIXED.public_key) + ORDER_TWO
    mixed_key = mixed.encode()
    for counter in range(1000):
        digest = counter.to_bytes(32, "little")
        signature = schnorrq.sign(FIXED.subseed, mixed_key, digest)
        h = schnorrq._scalar(schnorrq.k12(signature[:32] + mixed_key + digest, 64))
        if h % 2 == 0:
            break
    s = int.from_bytes(signature[32:], "little")
    assert fourq.double_mul_base(s, h, mixed).encode() == signature[:32]
    assert not verify(mixed_key, digest, signature)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((bytes(31), bytes(32), bytes(64)), ValueError, "public key must be 32 bytes"),
        ((bytes(32), bytes(33), bytes(64)), ValueError, "digest must be 32 bytes"),
        ((bytes(32), bytes(32), bytes(63)), ValueError, "signature must be 64 bytes"),
        (("00" * 32, bytes(32), bytes(64)), TypeError, "public key must be bytes"),
        ((bytes(32), bytes(32), None), TypeError, "signature must be bytes"),
    ],
)
def test_verify_raises_only_for_wrong_types_and_lengths(
    args: tuple, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        verify(*args)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64))
def test_verify_never_raises_on_garbage_of_the_right_size(key: bytes, signature: bytes) -> None:
    assert verify(key, FIXED_DIGEST, signature) is False


def test_sign_argument_checks() -> None:
    with pytest.raises(ValueError, match="subseed must be 32 bytes"):
        sign(bytes(31), FIXED.public_key, FIXED_DIGEST)
    with pytest.raises(ValueError, match="digest must be 32 bytes"):
        FIXED.sign(b"short")


@pytest.mark.parametrize(
    ("seed", "match"),
    [
        ("a" * 54, "55 letters"),
        ("a" * 56, "55 letters"),
        ("A" * 55, "lowercase"),
        ("a" * 54 + "1", "lowercase"),
        ("a" * 54 + "é", "lowercase"),
        (b"a" * 55, "string"),
        (None, "string"),
    ],
)
def test_invalid_seeds_raise_typed_error_without_echoing_the_seed(seed: object, match: str) -> None:
    with pytest.raises(InvalidSeed, match=match) as info:
        KeyPair.from_seed(seed)  # type: ignore[arg-type]
    assert "aaaa" not in str(info.value)
    with pytest.raises(InvalidSeed):
        validate_seed(seed)


def test_subseed_is_k12_of_letter_values() -> None:
    seed = VECTORS["seed_to_identity"][1]["seed"]
    assert subseed_from_seed(seed) == schnorrq.k12(bytes(ord(c) - 97 for c in seed), 32)
    assert KeyPair.from_seed(seed).private_key == schnorrq.k12(subseed_from_seed(seed), 32)


def test_keypair_repr_hides_secrets() -> None:
    text = repr(FIXED)
    assert FIXED.identity in text
    for secret in (FIXED.subseed, FIXED.private_key):
        assert secret.hex() not in text
        assert repr(secret) not in text

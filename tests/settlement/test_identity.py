"""K12 and Qubic identities against the public vectors, plus round-trip and rejection properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qubix_jupyter.settlement.identity import (
    IDENTITY_LENGTH,
    InvalidIdentity,
    identity_from_public_key,
    is_valid_identity,
    public_key_from_identity,
)
from qubix_jupyter.settlement.k12 import k12

VECTORS_COPY = Path(__file__).with_name("qubic-vectors.json")
VECTORS_SHARED = Path(__file__).parents[2].parent / "shared" / "qubic-vectors.json"
VECTORS = json.loads(VECTORS_COPY.read_text())

keys = st.binary(min_size=32, max_size=32)


@pytest.mark.skipif(not VECTORS_SHARED.exists(), reason="no shared/ folder beside this checkout")
def test_vector_copy_matches_shared_file() -> None:
    assert json.loads(VECTORS_SHARED.read_text()) == VECTORS


def test_k12_empty_input_standard_vector() -> None:
    assert k12(b"", 32).hex() == VECTORS["k12_empty_32"]


def test_k12_output_length_and_prefix_property() -> None:
    # K12 is an XOF: a longer output extends the shorter one.
    assert len(k12(b"abc", 3)) == 3
    assert k12(b"abc", 64)[:32] == k12(b"abc", 32)
    with pytest.raises(ValueError, match="at least 1"):
        k12(b"abc", 0)


@pytest.mark.parametrize("case", VECTORS["public_key_to_identity"])
def test_public_key_to_identity_vector(case: dict) -> None:
    key = bytes.fromhex(case["public_key_hex"])
    assert identity_from_public_key(key) == case["identity"]
    assert public_key_from_identity(case["identity"]) == key


@pytest.mark.parametrize("case", [c for c in VECTORS["seed_to_identity"] if "public_key_hex" in c])
def test_seed_vector_public_keys_encode_to_their_identity(case: dict) -> None:
    key = bytes.fromhex(case["public_key_hex"])
    assert identity_from_public_key(key) == case["identity"]
    assert public_key_from_identity(case["identity"]) == key


@pytest.mark.parametrize("identity", VECTORS["valid_identities"])
def test_valid_identity_vectors(identity: str) -> None:
    assert is_valid_identity(identity)
    assert identity_from_public_key(public_key_from_identity(identity)) == identity


@pytest.mark.parametrize("identity", VECTORS["invalid_identities"])
def test_invalid_identity_vectors(identity: str) -> None:
    assert not is_valid_identity(identity)
    with pytest.raises(InvalidIdentity):
        public_key_from_identity(identity)


@settings(max_examples=200, deadline=None)
@given(keys)
def test_identity_round_trip(key: bytes) -> None:
    identity = identity_from_public_key(key)
    assert len(identity) == IDENTITY_LENGTH
    assert identity.isascii()
    assert identity.isalpha()
    assert identity.isupper()
    assert is_valid_identity(identity)
    assert public_key_from_identity(identity) == key


@settings(max_examples=100, deadline=None)
@given(keys)
def test_lowercase_variant_is_the_same_letters(key: bytes) -> None:
    lower = identity_from_public_key(key, lowercase=True)
    assert lower == identity_from_public_key(key).lower()
    assert not is_valid_identity(lower)  # identities proper are uppercase only
    with pytest.raises(InvalidIdentity, match="uppercase"):
        public_key_from_identity(lower)


@settings(max_examples=100, deadline=None)
@given(keys, st.integers(0, IDENTITY_LENGTH - 1), st.integers(1, 25))
def test_any_single_letter_change_is_rejected(key: bytes, position: int, shift: int) -> None:
    identity = identity_from_public_key(key)
    letter = chr((ord(identity[position]) - ord("A") + shift) % 26 + ord("A"))
    mutated = identity[:position] + letter + identity[position + 1 :]
    # An 18-bit checksum cannot catch every change in principle, but a change inside the key
    # letters moves the K12 checksum pseudo-randomly; a change in the checksum letters is
    # always caught. Either way the identity must not decode to the original key.
    if is_valid_identity(mutated):
        assert public_key_from_identity(mutated) != key
    else:
        with pytest.raises(InvalidIdentity):
            public_key_from_identity(mutated)


def test_checksum_letter_change_always_rejected() -> None:
    identity = VECTORS["public_key_to_identity"][0]["identity"]
    for position in range(56, 60):
        for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            mutated = identity[:position] + letter + identity[position + 1 :]
            assert is_valid_identity(mutated) == (mutated == identity)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("A" * 59, "60 letters"),
        ("A" * 61, "60 letters"),
        ("", "60 letters"),
        ("A" * 55 + "1FXIB", "uppercase"),
        ("A" * 56 + "FXI ", "uppercase"),
        ("Ä" * 56 + "FXIB", "uppercase"),
        ("Z" * 14 + "A" * 46, "64 bits"),
        ("A" * 56 + "AAAA", "checksum"),
    ],
)
def test_malformed_identities_raise_typed_error(text: str, reason: str) -> None:
    assert not is_valid_identity(text)
    with pytest.raises(InvalidIdentity, match=reason):
        public_key_from_identity(text)


def test_non_canonical_group_rejected_even_with_matching_checksum() -> None:
    # 'ZZZZZZZZZZZZZZ' is 26^14 - 1 ≥ 2^64; give it the checksum its truncated value would have
    # so that only the canonical-group rule can reject it.
    group_value = 26**14 - 1
    key = (group_value % 2**64).to_bytes(8, "little") + bytes(24)
    tail = identity_from_public_key(key)[14:]
    assert not is_valid_identity("Z" * 14 + tail)
    with pytest.raises(InvalidIdentity, match="64 bits"):
        public_key_from_identity("Z" * 14 + tail)


@pytest.mark.parametrize("value", [None, 42, b"A" * 60])
def test_non_strings_are_invalid(value: object) -> None:
    assert not is_valid_identity(value)
    with pytest.raises(InvalidIdentity, match="string"):
        public_key_from_identity(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_encoding_requires_32_bytes(bad: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        identity_from_public_key(bad)
    with pytest.raises(TypeError):
        identity_from_public_key("not bytes")  # type: ignore[arg-type]

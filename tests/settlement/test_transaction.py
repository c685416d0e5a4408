"""Transactions: byte layout, strict parsing, signing, ids and field validation."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qubix_jupyter.settlement.identity import identity_from_public_key, public_key_from_identity
from qubix_jupyter.settlement.k12 import k12
from qubix_jupyter.settlement.keys import KeyPair
from qubix_jupyter.settlement.transaction import (
    MAX_AMOUNT,
    MAX_PAYLOAD,
    InvalidTransaction,
    Transaction,
)

VECTORS = json.loads(Path(__file__).with_name("qubic-vectors.json").read_text())
ALICE = KeyPair.from_seed(VECTORS["seed_to_identity"][0]["seed"])
BOB = public_key_from_identity(VECTORS["seed_to_identity"][1]["identity"])

keys = st.binary(min_size=32, max_size=32)
transactions = st.builds(
    Transaction,
    source_public_key=keys,
    destination_public_key=keys,
    amount=st.integers(0, MAX_AMOUNT),
    tick=st.integers(0, 2**32 - 1),
    input_type=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=MAX_PAYLOAD),
    signature=st.binary(min_size=64, max_size=64),
)


def _transfer(**overrides: object) -> Transaction:
    fields: dict = {
        "source_public_key": ALICE.public_key,
        "destination_public_key": BOB,
        "amount": 1_000_000,
        "tick": 15_000_000,
    }
    fields.update(overrides)
    return Transaction(**fields)


def test_header_layout_matches_the_documented_wire_format() -> None:
    tx = _transfer(input_type=7, payload=b"\x01\x02\x03")
    header = tx.header_and_payload()
    assert len(header) == 80 + 3
    assert header[:32] == ALICE.public_key
    assert header[32:64] == BOB
    assert struct.unpack_from("<qIHH", header, 64) == (1_000_000, 15_000_000, 7, 3)
    assert header[80:] == b"\x01\x02\x03"
    assert tx.digest() == k12(header, 32)


def test_signed_transaction_verifies_and_has_an_id() -> None:
    tx = _transfer().signed(ALICE.subseed)
    assert tx.signature is not None
    assert tx.verify_signature()
    assert ALICE.verify(tx.digest(), tx.signature)
    raw = tx.to_bytes()
    assert len(raw) == 80 + 64
    assert raw[-64:] == tx.signature
    assert tx.tx_id == identity_from_public_key(k12(raw, 32), lowercase=True)
    assert len(tx.tx_id) == 60
    assert tx.tx_id.islower()


def test_signing_with_someone_elses_subseed_is_refused() -> None:
    other = KeyPair.from_seed("b" * 55)
    with pytest.raises(InvalidTransaction, match="does not belong"):
        _transfer().signed(other.subseed)


def test_changed_fields_invalidate_the_signature() -> None:
    tx = _transfer().signed(ALICE.subseed)
    for change in (
        {"amount": 1_000_001},
        {"tick": 15_000_001},
        {"destination_public_key": bytes(32)},
        {"payload": b"x"},
        {"input_type": 1},
    ):
        altered = Transaction(**{**_fields(tx), **change})
        assert not altered.verify_signature()
        assert altered.tx_id != tx.tx_id


def _fields(tx: Transaction) -> dict:
    return {
        "source_public_key": tx.source_public_key,
        "destination_public_key": tx.destination_public_key,
        "amount": tx.amount,
        "tick": tx.tick,
        "input_type": tx.input_type,
        "payload": tx.payload,
        "signature": tx.signature,
    }


def test_unsigned_transaction() -> None:
    tx = _transfer()
    assert not tx.verify_signature()
    for action in (tx.to_bytes, tx.to_base64, lambda: tx.tx_id):
        with pytest.raises(InvalidTransaction, match="not signed"):
            action()


@settings(max_examples=150, deadline=None)
@given(transactions)
def test_bytes_and_base64_round_trip(tx: Transaction) -> None:
    raw = tx.to_bytes()
    assert len(raw) == 80 + len(tx.payload) + 64
    assert Transaction.from_bytes(raw) == tx
    assert Transaction.from_bytes(bytearray(raw)) == tx
    assert Transaction.from_base64(tx.to_base64()) == tx
    assert base64.b64decode(tx.to_base64()) == raw


@settings(max_examples=100, deadline=None)
@given(transactions, st.binary(min_size=1, max_size=8))
def test_trailing_or_missing_bytes_are_rejected(tx: Transaction, extra: bytes) -> None:
    raw = tx.to_bytes()
    with pytest.raises(InvalidTransaction, match="trailing"):
        Transaction.from_bytes(raw + extra)
    with pytest.raises(InvalidTransaction, match=r"missing|at least"):
        Transaction.from_bytes(raw[: -len(extra)])


def test_input_size_mismatch_is_rejected() -> None:
    raw = bytearray(_transfer(payload=b"abcd").signed(ALICE.subseed).to_bytes())
    struct.pack_into("<H", raw, 78, 5)  # claims one more payload byte than present
    with pytest.raises(InvalidTransaction, match="inputSize 5"):
        Transaction.from_bytes(bytes(raw))
    struct.pack_into("<H", raw, 78, 3)
    with pytest.raises(InvalidTransaction, match="inputSize 3"):
        Transaction.from_bytes(bytes(raw))


def test_parsing_enforces_field_bounds() -> None:
    raw = bytearray(_transfer().signed(ALICE.subseed).to_bytes())
    struct.pack_into("<q", raw, 64, -1)
    with pytest.raises(InvalidTransaction, match="amount"):
        Transaction.from_bytes(bytes(raw))
    struct.pack_into("<q", raw, 64, MAX_AMOUNT + 1)
    with pytest.raises(InvalidTransaction, match="amount"):
        Transaction.from_bytes(bytes(raw))
    too_long = _transfer().header_and_payload()[:78] + struct.pack("<H", MAX_PAYLOAD + 1)
    with pytest.raises(InvalidTransaction, match="payload"):
        Transaction.from_bytes(too_long + bytes(MAX_PAYLOAD + 1) + bytes(64))
    with pytest.raises(InvalidTransaction, match="at least 144"):
        Transaction.from_bytes(bytes(143))


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"amount": -1}, InvalidTransaction, "amount"),
        ({"amount": MAX_AMOUNT + 1}, InvalidTransaction, "amount"),
        ({"amount": 1.5}, TypeError, "amount"),
        ({"amount": True}, TypeError, "amount"),
        ({"tick": -1}, InvalidTransaction, "tick"),
        ({"tick": 2**32}, InvalidTransaction, "tick"),
        ({"input_type": 0x10000}, InvalidTransaction, "input type"),
        ({"payload": bytes(MAX_PAYLOAD + 1)}, InvalidTransaction, "payload"),
        ({"payload": "text"}, TypeError, "payload"),
        ({"source_public_key": bytes(31)}, InvalidTransaction, "source public key"),
        ({"destination_public_key": "B" * 60}, TypeError, "destination public key"),
        ({"signature": bytes(63)}, InvalidTransaction, "signature"),
    ],
)
def test_construction_validates_fields(overrides: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        _transfer(**overrides)


def test_bounds_themselves_are_accepted() -> None:
    _transfer(amount=0, tick=0)
    _transfer(amount=MAX_AMOUNT, tick=2**32 - 1, input_type=0xFFFF, payload=bytes(MAX_PAYLOAD))


@pytest.mark.parametrize("text", ["not base64!", "QUJD=", "QUJD\n" * 40])
def test_bad_base64_is_a_typed_error(text: str) -> None:
    with pytest.raises(InvalidTransaction):
        Transaction.from_base64(text)


def test_transaction_is_immutable() -> None:
    tx = _transfer()
    with pytest.raises(AttributeError):
        tx.amount = 5  # type: ignore[misc]

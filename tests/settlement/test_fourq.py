"""FourQ: curve constants, group laws, encoding, and rejection of bad and small-order points."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qubix_jupyter.settlement import fourq
from qubix_jupyter.settlement.fourq import (
    COFACTOR,
    GENERATOR,
    IDENTITY,
    InvalidPoint,
    N,
    P,
    Point,
    SubgroupPoint,
    decode_point,
    double_mul_base,
    mul_base,
)

scalars = st.integers(min_value=0, max_value=N - 1)
wide_scalars = st.integers(min_value=0, max_value=2**256 - 1)


def _is_probable_prime(n: int) -> bool:
    if n < 2:
        return False
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _fp2_pow(a: tuple[int, int], e: int) -> tuple[int, int]:
    result = (1, 0)
    while e:
        if e & 1:
            result = fourq._fp2_mul(result, a)
        a = fourq._fp2_sqr(a)
        e >>= 1
    return result


def _x_squared(y: tuple[int, int]) -> tuple[int, int]:
    """(y^2 - 1) / (d·y^2 + 1), the value whose square roots are the x of points with this y."""
    y2 = fourq._fp2_sqr(y)
    dy2 = fourq._fp2_mul(fourq.D, y2)
    return fourq._fp2_mul((y2[0] - 1, y2[1]), fourq._fp2_inv((dy2[0] + 1, dy2[1])))


def _small_order_points() -> list[Point]:
    """Points of order dividing 392, found as [N]·Q for points Q decoded from small y values."""
    found: dict[bytes, Point] = {}
    for y0 in range(2, 400):
        try:
            q = decode_point(y0.to_bytes(16, "little") + bytes(16))
        except InvalidPoint:
            continue
        t = q * N
        found[t.encode()] = t
        if len(found) >= 6:
            break
    return list(found.values())


SMALL_ORDER = _small_order_points()


def test_constants() -> None:
    assert P == 2**127 - 1
    assert _is_probable_prime(P)
    assert _is_probable_prime(N)
    assert N.bit_length() == 246
    # d must be a non-square in GF(p^2) for the addition law to be complete.
    assert _fp2_pow(fourq.D, (P * P - 1) // 2) == (P - 1, 0)


def test_generator_is_on_curve_and_has_order_n() -> None:
    assert GENERATOR.is_on_curve()
    assert not GENERATOR.is_identity()
    assert (GENERATOR * N).is_identity()
    for k in (1, 2, 3, 7, 8, 49, COFACTOR, N - 1, N + 1):
        assert not (GENERATOR * k).is_identity()
    assert GENERATOR.in_prime_subgroup()
    assert not GENERATOR.has_small_order()


def test_identity_behaves_as_neutral_element() -> None:
    assert IDENTITY.is_identity()
    assert IDENTITY.is_on_curve()
    assert GENERATOR + IDENTITY == GENERATOR
    assert GENERATOR - GENERATOR == IDENTITY
    assert mul_base(0) == IDENTITY
    assert mul_base(N) == IDENTITY
    assert decode_point(IDENTITY.encode()) == IDENTITY


@settings(max_examples=100, deadline=None)
@given(scalars, scalars)
def test_scalar_multiplication_is_compatible(a: int, b: int) -> None:
    ga = mul_base(a)
    assert ga == GENERATOR * a  # fixed-base table agrees with the generic wNAF ladder
    assert ga * b == mul_base(a * b)
    assert ga + mul_base(b) == mul_base(a + b)
    assert mul_base(a) + mul_base(N - a) == IDENTITY


@settings(max_examples=100, deadline=None)
@given(scalars, scalars, st.integers(min_value=1, max_value=N - 1))
def test_double_scalar_multiplication(s: int, h: int, a: int) -> None:
    point = mul_base(a)
    expected = mul_base(s + h * a)
    assert double_mul_base(s, h, point) == expected
    assert SubgroupPoint.decode(point.encode()).double_mul_base(s, h) == expected


@settings(max_examples=100, deadline=None)
@given(wide_scalars)
def test_encode_decode_round_trip(k: int) -> None:
    point = mul_base(k)
    encoded = point.encode()
    assert len(encoded) == 32
    decoded = decode_point(encoded)
    assert decoded == point
    assert decoded.encode() == encoded
    assert (-point).encode() != encoded or point.encode() == IDENTITY.encode()
    assert encoded[15] & 0x80 == 0  # y0 < 2^127: the byte-15 top bit is never set


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_decode_accepts_only_canonical_on_curve_encodings(data: bytes) -> None:
    try:
        point = decode_point(data)
    except InvalidPoint:
        return
    assert point.is_on_curve()
    assert point.encode() == data


def test_decode_rejections() -> None:
    g = GENERATOR.encode()
    with pytest.raises(InvalidPoint, match="32 bytes"):
        decode_point(g[:31])
    with pytest.raises(InvalidPoint, match="canonical"):
        decode_point(bytes(g[:15]) + bytes([g[15] | 0x80]) + g[16:])
    with pytest.raises(InvalidPoint, match="canonical"):  # y0 = p
        decode_point(P.to_bytes(16, "little") + g[16:])
    with pytest.raises(InvalidPoint, match="canonical"):  # y1 = p (sign bit clear)
        decode_point(g[:16] + P.to_bytes(16, "little"))
    with pytest.raises(InvalidPoint, match="x = 0"):  # identity with its sign bit set
        decode_point(IDENTITY.encode()[:31] + b"\x80")
    with pytest.raises(TypeError):
        decode_point("00" * 32)  # type: ignore[arg-type]
    # About half of all y values have no x on the curve.
    y0 = next(y0 for y0 in range(2, 200) if not fourq._fp2_is_square(_x_squared((y0, 0))))
    with pytest.raises(InvalidPoint, match="no point"):
        decode_point(y0.to_bytes(16, "little") + bytes(16))


def test_from_affine_rejects_points_off_the_curve() -> None:
    (x, y) = GENERATOR.affine()
    with pytest.raises(InvalidPoint):
        Point.from_affine(x, (y[0] + 1, y[1]))


def test_small_order_points_are_found_and_rejected() -> None:
    assert len(SMALL_ORDER) >= 4
    for t in SMALL_ORDER:
        assert t.is_on_curve()
        assert (t * COFACTOR).is_identity()
        assert t.has_small_order()
        with pytest.raises(InvalidPoint):
            SubgroupPoint.decode(t.encode())
    orders = {
        min(o for o in (1, 2, 4, 7, 8, 14, 28, 49, 56, 98, 196, 392) if (t * o).is_identity())
        for t in SMALL_ORDER
    }
    assert orders - {1, 2}  # more than the trivial points: genuine torsion of larger order


def test_mixed_order_point_is_rejected() -> None:
    # A subgroup point plus a torsion point decodes fine but is not of prime order.
    t = next(t for t in SMALL_ORDER if not t.is_identity())
    mixed = mul_base(12345) + t
    assert decode_point(mixed.encode()) == mixed
    assert not mixed.in_prime_subgroup()
    with pytest.raises(InvalidPoint, match="subgroup"):
        SubgroupPoint.decode(mixed.encode())
    with pytest.raises(InvalidPoint, match="identity"):
        SubgroupPoint.decode(IDENTITY.encode())


def test_point_equality_is_projective_and_hashable() -> None:
    a = mul_base(7)
    b = GENERATOR * 3 + GENERATOR * 4  # a different projective representative
    assert a._r1 != b._r1
    assert a == b
    assert hash(a) == hash(b)
    assert a != GENERATOR
    assert repr(a) == f"Point({a.encode().hex()})"
    assert GENERATOR * -5 == -(GENERATOR * 5)

"""Money rules. QU is an integer unit (Qubic has no decimals); nothing here ever touches a float.

Prices are integer QU per GPU-hour; durations are integer seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import AmountTooLarge, InvalidAmount

#: Largest amount a BIGINT column holds; every balance and amount stays within it.
INT64_MAX = 2**63 - 1
#: Basis points in one whole (a platform fee of 250 bps is 2.5 %).
BPS = 10_000
SECONDS_PER_HOUR = 3600


def require_amount(amount: object, *, name: str = "amount", allow_zero: bool = False) -> int:
    """Return ``amount`` if it is an integer QU amount > 0 (or ≥ 0) that fits int64, else raise.

    ``bool`` is rejected even though it is an ``int`` subclass: ``True`` QU is a bug, not a coin.
    """
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount(
            f"{name} must be an integer number of QU, got {type(amount).__name__}",
            field=name,
        )
    if amount < 0 or (amount == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise InvalidAmount(f"{name} must be {bound}, got {amount}", field=name, value=amount)
    if amount > INT64_MAX:
        raise AmountTooLarge(
            f"{name} {amount} exceeds the largest storable amount {INT64_MAX}",
            field=name,
            max=INT64_MAX,
        )
    return amount


def ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def cost_for(price_per_hour: int, seconds: int) -> int:
    """QU owed for ``seconds`` of GPU time at ``price_per_hour``: ceil(price × seconds / 3600)."""
    require_amount(price_per_hour, name="price_per_hour", allow_zero=True)
    require_amount(seconds, name="seconds", allow_zero=True)
    return ceil_div(price_per_hour * seconds, SECONDS_PER_HOUR)


@dataclass(frozen=True, slots=True)
class ChargeSplit:
    """How one job's escrow is settled. ``provider + fee + refund == escrow`` always."""

    cost: int
    provider: int
    fee: int
    refund: int


def split_charge(
    *, escrow: int, price_per_hour: int, seconds: int, platform_fee_bps: int
) -> ChargeSplit:
    """Split an escrow into provider pay, platform fee and refund.

    The cost is capped at the escrow: a job never costs more than the consumer locked. The fee is
    rounded down, so rounding always favours the provider, and the refund takes what is left.
    """
    require_amount(escrow, name="escrow", allow_zero=True)
    if not 0 <= platform_fee_bps <= BPS:
        raise InvalidAmount(
            f"platform fee must be between 0 and {BPS} basis points, got {platform_fee_bps}",
            field="platform_fee_bps",
        )
    cost = min(cost_for(price_per_hour, seconds), escrow)
    fee = cost * platform_fee_bps // BPS
    return ChargeSplit(cost=cost, provider=cost - fee, fee=fee, refund=escrow - cost)


def escrow_for(price_per_hour: int, budget_seconds: int) -> int:
    """Escrow to lock for a job: the most it can cost within its time budget."""
    return cost_for(price_per_hour, budget_seconds)

"""The marketplace listing: what a consumer may ask for, and what a provider registers.

:class:`MarketplaceQuery` is the seed's ``MarketplaceFilters`` plus ``sortBy`` and a page window,
validated once at the boundary. Its :meth:`~MarketplaceQuery.matches` and
:meth:`~MarketplaceQuery.sort_key` are the meaning of a search in plain Python; the database
query in ``db.marketplace`` must return exactly ``sorted(filter(matches, offers), key=sort_key)``
sliced to the page, and the tests hold it to that.

Matching rules (the seed leaves them open; these are what the listing's UI needs):

* only listed offers (``is_listed``) are ever shown;
* ``availability="available"``: online **and** available (not busy); ``"all"``: any listed offer;
* ``gpu_models``: any of the given models, case-insensitively for ASCII letters and otherwise
  exact (no trimming, no substrings), because the UI offers a list of the models on the market
  and "RTX 4090" and "rtx 4090" name the same card. GPU model names are ASCII; a non-ASCII
  letter compares as the database's ``lower()`` does;
* ``min_vram``: GB per GPU, at least; ``max_price``: integer QU per GPU-hour, at most;
* ``locations``: any of the given locations, exactly; an offer without a location matches no
  location filter.

Orders (every one ends in ``id``, so pages are deterministic and concatenate without repeats):

* ``price``: cheapest first, then higher measured TFLOP/s (unmeasured last), then id;
* ``performance``: higher TFLOP/s first, unmeasured last, then cheapest, then id;
* ``availability``: online and available first, then online (busy), then offline; then cheapest,
  then id.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeGuard, get_args

from .errors import QubixError
from .money import INT64_MAX, require_amount
from .states import ProviderType

Availability = Literal["available", "all"]
SortKey = Literal["price", "performance", "availability"]

AVAILABILITIES: tuple[str, ...] = get_args(Availability)
SORT_KEYS: tuple[str, ...] = get_args(SortKey)
MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50
#: More values than this in one list filter is not a person using the UI.
MAX_FILTER_VALUES = 50
#: Column widths of the providers table.
MAX_GPU_MODEL_LENGTH = 128
MAX_LOCATION_LENGTH = 100
MAX_NAME_LENGTH = 100
MAX_WORKER_ID_LENGTH = 128

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_model(model: str) -> str:
    """The form GPU models are compared in: ASCII letters lowered, as SQL ``lower()`` does."""
    return model.translate(_ASCII_LOWER)


# --------------------------------------------------------------------------------- errors


class InvalidMarketplaceQuery(QubixError):
    """A filter, sort key or page window the marketplace cannot serve."""

    code = "invalid_query"
    status = 422


class InvalidOffer(QubixError):
    """A provider registration or update with a value the listing cannot hold."""

    code = "invalid_offer"
    status = 422


class UnknownProvider(QubixError):
    code = "unknown_provider"
    status = 404


class Forbidden(QubixError):
    """The caller is authenticated but the record is not theirs."""

    code = "forbidden"
    status = 403


class WorkerIdTaken(QubixError):
    """A workerId registered by another user: one worker is one provider of one user."""

    code = "worker_id_taken"
    status = 409


# --------------------------------------------------------------------------------- the query


class Offer(Protocol):
    """What a search looks at: a provider row, or anything shaped like one."""

    @property
    def id(self) -> str: ...
    @property
    def gpu_model(self) -> str: ...
    @property
    def gpu_vram(self) -> float: ...
    @property
    def price_per_hour(self) -> int: ...
    @property
    def location(self) -> str | None: ...
    @property
    def performance_tflops(self) -> float | None: ...
    @property
    def is_online(self) -> bool: ...
    @property
    def is_available(self) -> bool: ...
    @property
    def is_listed(self) -> bool: ...


def _strings(value: object, *, name: str, max_length: int) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidMarketplaceQuery(f"{name} must be a list of strings", field=name)
    items = tuple(value)
    if len(items) > MAX_FILTER_VALUES:
        raise InvalidMarketplaceQuery(
            f"{name} takes at most {MAX_FILTER_VALUES} values, got {len(items)}",
            field=name,
            max=MAX_FILTER_VALUES,
        )
    for item in items:
        if not isinstance(item, str) or not item or len(item) > max_length:
            raise InvalidMarketplaceQuery(
                f"each {name} value must be a non-empty string of at most {max_length} "
                f"characters, got {item!r}",
                field=name,
            )
    return tuple(dict.fromkeys(items))  # duplicates change nothing; keep the first order


def _is_number(value: object) -> TypeGuard[int | float]:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _int(value: object, *, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidMarketplaceQuery(
            f"{name} must be an integer from {low} to {high}, got {value!r}",
            field=name,
            min=low,
            max=high,
        )
    return value


@dataclass(frozen=True, slots=True)
class MarketplaceQuery:
    """One validated marketplace search: filters, order and page. Invalid values raise
    :class:`InvalidMarketplaceQuery` (422) from the constructor, so an instance is always
    servable."""

    gpu_models: tuple[str, ...] = ()
    min_vram: float | None = None
    max_price: int | None = None
    locations: tuple[str, ...] = ()
    availability: Availability = "available"
    sort_by: SortKey = "price"
    offset: int = 0
    limit: int = DEFAULT_PAGE_SIZE
    #: ``gpu_models`` as compared: folded by :func:`fold_model`.
    folded_models: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        models = _strings(self.gpu_models, name="gpu_models", max_length=MAX_GPU_MODEL_LENGTH)
        locations = _strings(self.locations, name="locations", max_length=MAX_LOCATION_LENGTH)
        set_ = object.__setattr__
        set_(self, "gpu_models", models)
        set_(self, "locations", locations)
        set_(self, "folded_models", tuple(dict.fromkeys(fold_model(m) for m in models)))
        if self.min_vram is not None:
            vram = self.min_vram
            if (
                isinstance(vram, bool)
                or not isinstance(vram, int | float)
                or not math.isfinite(vram)
            ):
                raise InvalidMarketplaceQuery(
                    f"min_vram must be a finite number of GB, got {vram!r}", field="min_vram"
                )
            if vram < 0:
                raise InvalidMarketplaceQuery(
                    f"min_vram must be ≥ 0, got {vram!r}", field="min_vram", value=vram
                )
            set_(self, "min_vram", float(vram))
        if self.max_price is not None:
            _int(self.max_price, name="max_price", low=0, high=INT64_MAX)
        if self.availability not in AVAILABILITIES:
            raise InvalidMarketplaceQuery(
                f"availability must be one of {', '.join(AVAILABILITIES)}, "
                f"got {self.availability!r}",
                field="availability",
                allowed=list(AVAILABILITIES),
            )
        if self.sort_by not in SORT_KEYS:
            raise InvalidMarketplaceQuery(
                f"sort_by must be one of {', '.join(SORT_KEYS)}, got {self.sort_by!r}",
                field="sort_by",
                allowed=list(SORT_KEYS),
            )
        _int(self.offset, name="offset", low=0, high=INT64_MAX)
        _int(self.limit, name="limit", low=1, high=MAX_PAGE_SIZE)

    @classmethod
    def from_api(cls, params: Mapping[str, Any]) -> MarketplaceQuery:
        """A query from the API's JSON: the seed's ``MarketplaceFilters`` names (``gpuModel``,
        ``minVram``, ``maxPrice``, ``location``, ``availability``) plus ``sortBy``, ``offset``,
        ``limit``. Unknown names are an error, not silently ignored filters."""
        names = {
            "gpuModel": "gpu_models",
            "minVram": "min_vram",
            "maxPrice": "max_price",
            "location": "locations",
            "availability": "availability",
            "sortBy": "sort_by",
            "offset": "offset",
            "limit": "limit",
        }
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise InvalidMarketplaceQuery(
                f"unknown marketplace parameter(s): {', '.join(unknown)}",
                unknown=unknown,
                allowed=list(names),
            )
        return cls(**{names[k]: v for k, v in params.items() if v is not None})

    def matches(self, offer: Offer) -> bool:
        """Whether ``offer`` belongs in this search's results (on any page)."""
        if not offer.is_listed:
            return False
        if self.availability == "available" and not (offer.is_online and offer.is_available):
            return False
        if self.folded_models and fold_model(offer.gpu_model) not in self.folded_models:
            return False
        if self.min_vram is not None and not offer.gpu_vram >= self.min_vram:
            return False
        if self.max_price is not None and offer.price_per_hour > self.max_price:
            return False
        return not self.locations or offer.location in self.locations

    def sort_key(self, offer: Offer) -> tuple[Any, ...]:
        """The key that orders matching offers as the search returns them (ascending)."""
        perf = offer.performance_tflops
        unmeasured_last = (perf is None, -perf if perf is not None else 0.0)
        if self.sort_by == "price":
            return (offer.price_per_hour, *unmeasured_last, offer.id)
        if self.sort_by == "performance":
            return (*unmeasured_last, offer.price_per_hour, offer.id)
        return (availability_rank(offer), offer.price_per_hour, offer.id)

    def page(self, offers: Iterable[Offer]) -> list[Offer]:
        """This query's page of ``offers``, in plain Python (the oracle for the database)."""
        found = sorted((o for o in offers if self.matches(o)), key=self.sort_key)
        return found[self.offset : self.offset + self.limit]


def availability_rank(offer: Offer) -> int:
    """0 online and available, 1 online but busy, 2 offline."""
    if offer.is_online:
        return 0 if offer.is_available else 1
    return 2


# --------------------------------------------------------------------------------- registration


def _finite(value: object, *, name: str) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise InvalidOffer(f"{name} must be a finite number, got {value!r}", field=name)
    if value < 0:
        raise InvalidOffer(f"{name} must be ≥ 0, got {value!r}", field=name, value=value)
    return float(value)


def _count(value: object, *, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise InvalidOffer(f"{name} must be a non-negative integer, got {value!r}", field=name)
    return value


def _text(value: object, *, name: str, max_length: int, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise InvalidOffer(
            f"{name} must be a non-empty string of at most {max_length} characters",
            field=name,
            max_length=max_length,
        )
    if "\x00" in value:
        raise InvalidOffer(f"{name} must not contain NUL", field=name)
    return value


def require_worker_id(worker_id: object) -> str:
    value = _text(worker_id, name="worker_id", max_length=MAX_WORKER_ID_LENGTH, optional=False)
    assert value is not None
    if not value.isprintable():
        raise InvalidOffer("worker_id must be printable", field="worker_id")
    return value


def require_provider_type(value: object) -> ProviderType:
    try:
        return ProviderType(value)  # type: ignore[arg-type]  # any value: a bad one is the 422
    except ValueError:
        allowed = [t.value for t in ProviderType]
        raise InvalidOffer(
            f"provider type must be one of {', '.join(allowed)}, got {value!r}",
            field="provider_type",
            allowed=allowed,
        ) from None


def require_price(price_per_hour: object) -> int:
    """A listing price: integer QU per GPU-hour, ≥ 0 (an :class:`InvalidAmount` otherwise)."""
    return require_amount(price_per_hour, name="price_per_hour", allow_zero=True)


def require_name(name: object) -> str | None:
    return _text(name, name="name", max_length=MAX_NAME_LENGTH)


def require_location(location: object) -> str | None:
    return _text(location, name="location", max_length=MAX_LOCATION_LENGTH)


#: What ``GPUInfo.type`` may say (the seed's three detection paths).
GPU_INFO_TYPES = ("webgpu", "webgl", "native")
#: The listing's model when nothing better was detected (a CPU-only worker).
NO_GPU_MODEL = "CPU only"


def hardware_from_gpu_info(gpu: Mapping[str, Any]) -> dict[str, Any]:
    """The provider columns for the seed's ``GPUInfo`` plus ``count``, ``driver`` and
    ``cudaCapability``, validated.

    The model is the first of ``model``, ``renderer``, ``device``, ``description`` that is given
    (browser detection often knows only the renderer string); ``vram`` is GB per GPU.
    """
    if not isinstance(gpu, Mapping):
        raise InvalidOffer("gpu must be an object (GPUInfo)", field="gpu")
    kind = gpu.get("type")
    if kind not in GPU_INFO_TYPES:
        raise InvalidOffer(
            f"gpu.type must be one of {', '.join(GPU_INFO_TYPES)}, got {kind!r}",
            field="gpu.type",
            allowed=list(GPU_INFO_TYPES),
        )
    model = next(
        (gpu[k] for k in ("model", "renderer", "device", "description") if gpu.get(k)),
        NO_GPU_MODEL,
    )
    vram = gpu.get("vram")
    count = gpu.get("count")
    return {
        "gpu_vendor": _text(gpu.get("vendor"), name="gpu.vendor", max_length=64),
        "gpu_model": _text(model, name="gpu.model", max_length=MAX_GPU_MODEL_LENGTH),
        "gpu_vram": 0.0 if vram is None else _finite(vram, name="gpu.vram"),
        "gpu_count": (0 if model == NO_GPU_MODEL else 1)
        if count is None
        else _count(count, name="gpu.count"),
        "driver_version": _text(gpu.get("driver"), name="gpu.driver", max_length=64),
        "cuda_capability": _text(
            gpu.get("cudaCapability"), name="gpu.cudaCapability", max_length=16
        ),
    }


def host_fields(*, cpu_model: object, cpu_cores: object, ram_total: object) -> dict[str, Any]:
    """The host columns of a registration, validated."""
    cores = _count(cpu_cores, name="cpu_cores")
    if cores < 1:
        raise InvalidOffer("cpu_cores must be ≥ 1", field="cpu_cores", value=cores)
    return {
        "cpu_model": _text(cpu_model, name="cpu_model", max_length=128, optional=False),
        "cpu_cores": cores,
        "ram_total": _finite(ram_total, name="ram_total"),
    }

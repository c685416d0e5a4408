"""GPU detection: NVML first, then ``nvidia-smi``, then none.

"No GPU" is a normal answer, not an error: the machine becomes a clearly labelled CPU-only
provider, and the report says why (no driver, no device, an error from the driver) so the UI can
tell the provider what to do next.

Both probes talk to foreign code (a C library through ``pynvml``, a binary's text output) that
can fail in ways no signature documents, so each probe catches everything, records what went
wrong in ``notes`` and falls through to the next source. Detection never raises.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Any, Literal

Source = Literal["nvml", "nvidia-smi", "none"]

#: ``nvidia-smi`` fields, in order; memory in MiB (``nounits``).
SMI_FIELDS = ("index", "name", "memory.total", "driver_version", "compute_cap", "uuid")
SMI_COMMAND = (
    "nvidia-smi",
    f"--query-gpu={','.join(SMI_FIELDS)}",
    "--format=csv,noheader,nounits",
)
_SMI_MISSING = {"", "[n/a]", "n/a", "[not supported]", "[field not supported]", "[unknown error]"}
MAX_GPUS = 64  # beyond any real machine: a larger count is garbage, not hardware
MAX_VRAM_MB = 16 * 1024 * 1024  # 16 TiB per device, likewise


@dataclasses.dataclass(frozen=True, slots=True)
class GPUInfo:
    """One device, in the seed's GPUInfo terms (vram in GB)."""

    index: int
    model: str
    vram_mb: int
    vendor: str = "NVIDIA"
    driver: str | None = None
    cuda_capability: str | None = None  # "9.0"
    uuid: str | None = None

    @property
    def vram_gb(self) -> float:
        return round(self.vram_mb / 1024, 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "native",
            "index": self.index,
            "vendor": self.vendor,
            "model": self.model,
            "vram": self.vram_gb,
            "driver": self.driver,
            "cudaCapability": self.cuda_capability,
            "uuid": self.uuid,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class HardwareReport:
    source: Source
    gpus: tuple[GPUInfo, ...]
    notes: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.gpus)

    @property
    def cpu_only(self) -> bool:
        return not self.gpus

    @property
    def label(self) -> str:
        if self.cpu_only:
            reason = self.notes[-1] if self.notes else "no NVIDIA GPU found"
            return f"CPU only ({reason})"
        first = self.gpus[0]
        same = all(g.model == first.model for g in self.gpus)
        model = first.model if same else "mixed GPUs"
        return f"{self.count} × {model} ({first.vram_gb:g} GB)"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "count": self.count,
            "cpuOnly": self.cpu_only,
            "label": self.label,
            "gpus": [g.to_json() for g in self.gpus],
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------- value checks


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    cleaned = "".join(ch for ch in value if ch.isprintable()).strip()
    return cleaned[:128] or None


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_GPUS else None


def _vram_mb(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    mb = int(value)
    return mb if 0 < mb <= MAX_VRAM_MB else None


def _capability(value: object) -> str | None:
    if isinstance(value, tuple | list) and len(value) == 2:
        major, minor = value
        if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 100 for v in value):
            return f"{major}.{minor}"
        return None
    text = _text(value)
    if text is None:
        return None
    major, dot, minor = text.partition(".")
    if dot and major.isdigit() and minor.isdigit() and len(major) <= 2 and len(minor) <= 2:
        return f"{int(major)}.{int(minor)}"
    return None


# ---------------------------------------------------------------------------- NVML


def _import_nvml() -> Any:
    import pynvml  # nvidia-ml-py, from the `cuda` extra

    return pynvml


def _probe_nvml(nvml: Any, notes: list[str]) -> list[GPUInfo] | None:
    """The devices NVML reports, or None when NVML cannot answer."""
    try:
        nvml.nvmlInit()
    except Exception as exc:  # a foreign library; see the module docstring
        notes.append(f"NVML unavailable: {_describe(exc)}")
        return None
    try:
        count = _count(nvml.nvmlDeviceGetCount())
        if count is None:
            notes.append("NVML returned an impossible device count")
            return None
        driver = _safe(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
        gpus = []
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            model = _safe(lambda h=handle: _text(nvml.nvmlDeviceGetName(h)))
            vram = _safe(lambda h=handle: _vram_mb(nvml.nvmlDeviceGetMemoryInfo(h).total / 2**20))
            if vram is None:
                notes.append(f"GPU {index}: NVML gave no usable memory size")
            gpus.append(
                GPUInfo(
                    index=index,
                    model=model or "Unknown NVIDIA GPU",
                    vram_mb=vram or 0,
                    driver=driver,
                    cuda_capability=_safe(
                        lambda h=handle: _capability(nvml.nvmlDeviceGetCudaComputeCapability(h))
                    ),
                    uuid=_safe(lambda h=handle: _text(nvml.nvmlDeviceGetUUID(h))),
                )
            )
        return gpus
    except Exception as exc:  # same: a foreign library
        notes.append(f"NVML failed while listing devices: {_describe(exc)}")
        return None
    finally:
        _safe(nvml.nvmlShutdown)


def _safe(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception:  # one optional field of a foreign library's answer
        return None


def _describe(exc: BaseException) -> str:
    text = _text(str(exc)) or ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------- nvidia-smi

Runner = Callable[..., Any]


def parse_nvidia_smi(output: str, notes: list[str]) -> list[GPUInfo]:
    """Devices from ``nvidia-smi --query-gpu=… --format=csv,noheader,nounits`` output."""
    gpus: list[GPUInfo] = []
    for number, line in enumerate(output.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(SMI_FIELDS):
            notes.append(f"nvidia-smi line {number} not understood")
            continue
        index_text, name, memory, driver, capability, uuid = fields
        model = _text(name)
        if not index_text.isdigit() or model is None or model.lower() in _SMI_MISSING:
            notes.append(f"nvidia-smi line {number} not understood")
            continue
        vram = _vram_mb(int(memory)) if memory.isdigit() else None
        if vram is None:
            notes.append(f"GPU {index_text}: nvidia-smi gave no usable memory size")
        gpus.append(
            GPUInfo(
                index=int(index_text),
                model=model,
                vram_mb=vram or 0,
                driver=None if driver.lower() in _SMI_MISSING else _text(driver),
                cuda_capability=_capability(capability),
                uuid=None if uuid.lower() in _SMI_MISSING else _text(uuid),
            )
        )
        if len(gpus) > MAX_GPUS:
            notes.append("nvidia-smi listed an impossible number of devices")
            return []
    return gpus


def _probe_smi(
    run: Runner, which: Callable[[str], str | None], timeout: float, notes: list[str]
) -> list[GPUInfo] | None:
    binary = which("nvidia-smi")
    if binary is None:
        notes.append("nvidia-smi not found (no NVIDIA driver installed)")
        return None
    try:
        result = run([binary, *SMI_COMMAND[1:]], capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        notes.append(f"nvidia-smi did not answer within {timeout:g} s")
        return None
    except Exception as exc:  # exec can fail in many OS-specific ways
        notes.append(f"nvidia-smi could not run: {_describe(exc)}")
        return None
    stdout = result.stdout
    if isinstance(stdout, bytes):
        stdout = stdout.decode("utf-8", errors="replace")
    if result.returncode != 0 or not isinstance(stdout, str):
        notes.append(f"nvidia-smi failed (exit status {result.returncode})")
        return None
    return parse_nvidia_smi(stdout, notes)


# ---------------------------------------------------------------------------- detection


_IMPORT = object()


def detect_gpus(
    *,
    nvml: Any = _IMPORT,
    run: Runner = subprocess.run,
    which: Callable[[str], str | None] = shutil.which,
    timeout: float = 10.0,
    only: Sequence[int] | None = None,
) -> HardwareReport:
    """What GPUs this machine has: NVML, else ``nvidia-smi``, else a CPU-only report.

    ``nvml`` is the ``pynvml`` module (imported when not given; None means "not installed").
    ``only`` keeps just those device indexes (``qubix provide --gpus 0,2``).
    """
    notes: list[str] = []
    if nvml is _IMPORT:
        try:
            nvml = _import_nvml()
        except ImportError:
            nvml = None
    if nvml is None:
        notes.append("NVML bindings not installed (pip install 'qubix-jupyter[cuda]')")
    source: Source = "none"
    gpus = _probe_nvml(nvml, notes) if nvml is not None else None
    if gpus is not None:
        source = "nvml"
    else:
        gpus = _probe_smi(run, which, timeout, notes)
        if gpus is not None:
            source = "nvidia-smi"
    gpus = gpus or []
    if only is not None:
        wanted = set(only)
        gpus = [g for g in gpus if g.index in wanted]
        if not gpus:
            notes.append(f"none of the requested GPUs {sorted(wanted)} exist")
    if not gpus:
        if source != "none":
            notes.append("no NVIDIA GPU found")
        return HardwareReport("none", (), tuple(notes))
    return HardwareReport(source, tuple(gpus), tuple(notes))

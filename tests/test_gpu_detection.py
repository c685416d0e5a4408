"""GPU detection over random hardware: NVML answers, nvidia-smi outputs, errors and garbage."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qubix_jupyter.dask_provider.gpu import (
    MAX_GPUS,
    HardwareReport,
    detect_gpus,
    parse_nvidia_smi,
)


class NVMLError(Exception):
    """What pynvml raises (NVMLError and its many subclasses)."""


@dataclass
class Memory:
    total: Any


@dataclass
class Device:
    name: Any
    memory_bytes: Any
    capability: Any
    uuid: Any


def maybe_fail(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


@dataclass
class FakeNVML:
    """Speaks pynvml's API; every answer can be a value, garbage, or an exception."""

    init: Any = None
    count: Any = 0
    driver: Any = "560.35.03"
    devices: list[Device] = field(default_factory=list)
    shutdowns: int = 0

    def nvmlInit(self) -> None:
        maybe_fail(self.init)

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> Any:
        return maybe_fail(self.count)

    def nvmlSystemGetDriverVersion(self) -> Any:
        return maybe_fail(self.driver)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Device:
        return self.devices[index]  # IndexError when count lies: also a foreign failure

    def nvmlDeviceGetName(self, handle: Device) -> Any:
        return maybe_fail(handle.name)

    def nvmlDeviceGetMemoryInfo(self, handle: Device) -> Memory:
        return Memory(maybe_fail(handle.memory_bytes))

    def nvmlDeviceGetCudaComputeCapability(self, handle: Device) -> Any:
        return maybe_fail(handle.capability)

    def nvmlDeviceGetUUID(self, handle: Device) -> Any:
        return maybe_fail(handle.uuid)


garbage = st.one_of(
    st.none(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3).map(tuple),
    st.builds(NVMLError, st.text(max_size=10)),
    st.builds(OSError, st.text(max_size=10)),
)
good_names = st.sampled_from(["NVIDIA H200", "NVIDIA GeForce RTX 4090", "Tesla T4", "NVIDIA A100"])
good_device = st.builds(
    Device,
    name=st.one_of(good_names, good_names.map(str.encode)),
    memory_bytes=st.integers(1, 200 * 2**30).map(lambda b: b // 2**20 * 2**20 + 2**20),
    capability=st.tuples(st.integers(3, 12), st.integers(0, 9)),
    uuid=st.uuids().map(lambda u: f"GPU-{u}"),
)
any_device = st.one_of(
    good_device,
    st.builds(Device, name=garbage, memory_bytes=garbage, capability=garbage, uuid=garbage),
)


@st.composite
def nvml_configs(draw: st.DrawFn) -> FakeNVML | None:
    if draw(st.booleans()):
        return None  # bindings not installed
    devices = draw(st.lists(any_device, max_size=4))
    count = draw(st.one_of(st.just(len(devices)), garbage))
    init = draw(st.one_of(st.none(), st.builds(NVMLError, st.text(max_size=10))))
    return FakeNVML(init=init, count=count, driver=draw(st.one_of(st.just("560.35"), garbage)),
                    devices=devices)  # fmt: skip


def smi_line(index: int, name: str, memory: str, driver: str, cap: str, uuid: str) -> str:
    return ", ".join([str(index), name, memory, driver, cap, uuid])


good_smi_lines = st.lists(
    st.tuples(good_names, st.integers(1, 200_000), st.sampled_from(["9.0", "8.9", "[N/A]"])),
    min_size=1,
    max_size=4,
).map(
    lambda rows: "\n".join(
        smi_line(i, name, str(mb), "560.35.03", cap, f"GPU-{i}")
        for i, (name, mb, cap) in enumerate(rows)
    )
)
smi_outputs = st.one_of(
    good_smi_lines,
    st.text(max_size=200),
    st.binary(max_size=200),
    st.lists(st.text(alphabet=",0123456789abc []./", max_size=40), max_size=5).map("\n".join),
)


@dataclass
class SmiResult:
    returncode: int
    stdout: Any


@st.composite
def smi_configs(draw: st.DrawFn) -> tuple[Any, Any]:
    """(which, run) pairs: missing binary, failing exec, timeouts, exit codes, any output."""
    which = draw(st.sampled_from([lambda _: None, lambda _: "/usr/bin/nvidia-smi"]))
    outcome = draw(
        st.one_of(
            st.builds(SmiResult, st.sampled_from([0, 0, 0, 6, 9, 255]), smi_outputs),
            st.sampled_from(
                [
                    FileNotFoundError("nvidia-smi"),
                    PermissionError("denied"),
                    subprocess.TimeoutExpired("nvidia-smi", 10),
                    OSError(8, "Exec format error"),
                ]
            ),
        )
    )

    def run(*_args: Any, **_kwargs: Any) -> Any:
        return maybe_fail(outcome)

    return which, run


def _check_report(report: HardwareReport) -> None:
    assert isinstance(report, HardwareReport)
    assert report.count == len(report.gpus) <= MAX_GPUS + 1
    if report.cpu_only:
        assert report.source == "none"
        assert report.notes, "a CPU-only report always says why"
        assert report.label.startswith("CPU only (")
    else:
        assert report.source in ("nvml", "nvidia-smi")
        for gpu in report.gpus:
            assert isinstance(gpu.model, str)
            assert gpu.model.strip()
            assert isinstance(gpu.vram_mb, int)
            assert gpu.vram_mb >= 0
            assert gpu.cuda_capability is None or gpu.cuda_capability.count(".") == 1
            assert gpu.to_json()["type"] == "native"
    assert isinstance(report.to_json()["label"], str)


@settings(max_examples=300, deadline=None)
@given(nvml=nvml_configs(), smi=smi_configs())
def test_gpu_detection_completeness(nvml: FakeNVML | None, smi: tuple[Any, Any]) -> None:
    """**Feature: qubix-enterprise-upgrade, Property 1: For any provider registration attempt,
    the system should successfully detect GPU specifications or provide a clear fallback
    mechanism**"""
    which, run = smi
    report = detect_gpus(nvml=nvml, run=run, which=which)
    _check_report(report)
    if nvml is not None and nvml.init is None:
        assert nvml.shutdowns == 1  # NVML is always shut down again


@settings(max_examples=100, deadline=None)
@given(devices=st.lists(good_device, min_size=1, max_size=4))
def test_working_nvml_reports_exactly_its_devices(devices: list[Device]) -> None:
    nvml = FakeNVML(count=len(devices), devices=devices)
    report = detect_gpus(nvml=nvml, which=lambda _: None)
    assert report.source == "nvml"
    assert [g.index for g in report.gpus] == list(range(len(devices)))
    for gpu, device in zip(report.gpus, devices, strict=True):
        name = device.name.decode() if isinstance(device.name, bytes) else device.name
        assert gpu.model == name
        assert gpu.vram_mb == device.memory_bytes // 2**20
        assert gpu.cuda_capability == f"{device.capability[0]}.{device.capability[1]}"
        assert gpu.driver == "560.35.03"


@settings(max_examples=100, deadline=None)
@given(output=good_smi_lines)
def test_nvidia_smi_is_the_fallback_when_nvml_fails(output: str) -> None:
    report = detect_gpus(
        nvml=FakeNVML(init=NVMLError("Driver Not Loaded")),
        which=lambda _: "/usr/bin/nvidia-smi",
        run=lambda *a, **k: SmiResult(0, output.encode()),
    )
    lines = output.splitlines()
    assert report.source == "nvidia-smi"
    assert report.count == len(lines)
    assert any("NVML unavailable" in n for n in report.notes)
    for gpu, line in zip(report.gpus, lines, strict=True):
        index, name, memory, _, cap, _ = (f.strip() for f in line.split(","))
        assert (gpu.index, gpu.model, gpu.vram_mb) == (int(index), name, int(memory))
        assert gpu.cuda_capability == (None if cap == "[N/A]" else cap)


def test_no_driver_at_all_is_a_labelled_cpu_only_provider() -> None:
    report = detect_gpus(nvml=None, which=lambda _: None)
    assert report.cpu_only
    assert report.label == "CPU only (nvidia-smi not found (no NVIDIA driver installed))"
    assert report.to_json()["cpuOnly"] is True


def test_zero_devices_is_reported_as_no_gpu_found() -> None:
    report = detect_gpus(nvml=FakeNVML(count=0), which=lambda _: None)
    assert report.cpu_only
    assert report.notes[-1] == "no NVIDIA GPU found"


def test_only_keeps_the_requested_devices() -> None:
    devices = [Device(f"GPU{i}", 2**30, (9, 0), f"GPU-{i}") for i in range(3)]
    report = detect_gpus(nvml=FakeNVML(count=3, devices=devices), only=[0, 2])
    assert [g.index for g in report.gpus] == [0, 2]
    assert detect_gpus(nvml=FakeNVML(count=3, devices=devices), only=[7]).cpu_only


@pytest.mark.parametrize(
    "line",
    [
        "0, NVIDIA H200, 143771, 560.35.03",  # too few fields
        "x, NVIDIA H200, 143771, 560.35.03, 9.0, GPU-1",  # bad index
        "0, [N/A], 143771, 560.35.03, 9.0, GPU-1",  # no name
    ],
)
def test_unreadable_smi_lines_are_skipped_with_a_note(line: str) -> None:
    notes: list[str] = []
    assert parse_nvidia_smi(line, notes) == []
    assert notes == ["nvidia-smi line 1 not understood"]

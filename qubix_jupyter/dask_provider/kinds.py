"""The built-in job kinds (``modelType``): ``python``, ``cell`` and ``benchmark``.

Each is a function of the job's payload that runs inside the job's child process (see
:mod:`.runners`) and returns the result; they are registered under the ``qubix.job_kinds`` entry
point group like any third-party kind. The payload builders beside them are what the client
sends.
"""

from __future__ import annotations

import ast
import contextlib
import io
import time
from collections.abc import Callable, Sequence
from typing import Any

from .errors import InvalidPayload
from .progress import progress

# ---------------------------------------------------------------------------- python


def python_payload(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> bytes:
    """The payload of ``qubix.submit(function, *args, **kwargs)``: all three, cloudpickled."""
    import cloudpickle

    return bytes(cloudpickle.dumps((function, args, kwargs)))


def run_python(payload: Any) -> Any:
    """Call the cloudpickled function with its arguments; its return value is the result."""
    import pickle

    if not isinstance(payload, bytes | bytearray):
        raise InvalidPayload("a python job's payload is the cloudpickled (function, args, kwargs)")
    try:
        function, args, kwargs = pickle.loads(payload)
    except Exception as exc:  # unpickling runs foreign code: whatever it raises, say so
        raise InvalidPayload(f"the python job's payload could not be unpickled: {exc}") from exc
    if not callable(function) or not isinstance(args, tuple) or not isinstance(kwargs, dict):
        raise InvalidPayload("a python job's payload is the cloudpickled (function, args, kwargs)")
    return function(*args, **kwargs)


# ---------------------------------------------------------------------------- cell


def cell_payload(source: str, variables: Sequence[str] = ()) -> dict[str, Any]:
    """The payload of ``%%qubix submit``: the cell's source and the variables to bring back."""
    return {"source": source, "variables": list(variables)}


def run_cell(payload: Any) -> dict[str, Any]:
    """Run a cell's source in a fresh namespace, as IPython would run it.

    The result: ``stdout``, ``stderr``, ``output`` (the repr of the last expression, as a
    notebook shows it, or None), ``variables`` (the requested ones that exist) and ``missing``
    (the requested ones the cell did not define).
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("source"), str):
        raise InvalidPayload("a cell job's payload is {'source': str, 'variables': [str]}")
    names = payload.get("variables", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidPayload("a cell job's 'variables' is a list of names")
    try:
        tree = ast.parse(payload["source"], filename="<cell>", mode="exec")
    except SyntaxError as exc:
        raise InvalidPayload(f"the cell does not parse: {exc}") from exc
    last: ast.expr | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body.pop().value
    namespace: dict[str, Any] = {"__name__": "__main__", "progress": progress}
    stdout, stderr = io.StringIO(), io.StringIO()
    output: str | None = None
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        exec(compile(tree, "<cell>", "exec"), namespace)  # the consumer's code, by design
        if last is not None:
            value = eval(compile(ast.Expression(last), "<cell>", "eval"), namespace)
            if value is not None:
                output = repr(value)
    return {
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
        "output": output,
        "variables": {n: namespace[n] for n in names if n in namespace},
        "missing": [n for n in names if n not in namespace],
    }


# ---------------------------------------------------------------------------- benchmark

_DTYPES = ("float32", "float64", "float16")


def benchmark_payload(
    *, size: int = 2048, dtype: str = "float32", repeats: int = 3, device: str = "auto"
) -> dict[str, Any]:
    return {"size": size, "dtype": dtype, "repeats": repeats, "device": device}


def _cupy() -> Any:
    """CuPy with a usable device, or None: no GPU is a normal answer here."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # ImportError, or a CUDA runtime that cannot find a device or driver
        return None
    return cupy


def run_benchmark(payload: Any) -> dict[str, Any]:
    """GEMM throughput: ``size``² matrices multiplied ``repeats`` times, the best run counted.

    CuPy on the GPU when one is usable (``device`` "auto" or "gpu"), NumPy on the CPU otherwise.
    The result: ``tflops``, ``size``, ``dtype``, ``device`` ("gpu:<name>" or "cpu"), ``seconds``.
    """
    payload = payload if payload is not None else {}
    if not isinstance(payload, dict):
        raise InvalidPayload("a benchmark job's payload is {size, dtype, repeats, device}")
    size, dtype = payload.get("size", 2048), payload.get("dtype", "float32")
    repeats, device = payload.get("repeats", 3), payload.get("device", "auto")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 32768:
        raise InvalidPayload("benchmark size is an integer from 16 to 32768")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 100:
        raise InvalidPayload("benchmark repeats is an integer from 1 to 100")
    if dtype not in _DTYPES:
        raise InvalidPayload(f"benchmark dtype is one of {', '.join(_DTYPES)}")
    if device not in ("auto", "gpu", "cpu"):
        raise InvalidPayload("benchmark device is auto, gpu or cpu")
    cupy = _cupy() if device != "cpu" else None
    if device == "gpu" and cupy is None:
        raise InvalidPayload("a GPU benchmark needs CuPy and a CUDA device on this provider")
    if cupy is not None:
        xp: Any = cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        label = f"gpu:{name}"

        def sync() -> None:
            cupy.cuda.Stream.null.synchronize()

    else:
        import numpy

        xp, label = numpy, "cpu"

        def sync() -> None:
            pass

    rng = xp.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype="float32").astype(dtype)
    b = rng.standard_normal((size, size), dtype="float32").astype(dtype)
    xp.matmul(a, b)  # warm-up: kernels compiled, BLAS threads started
    sync()
    best = float("inf")
    for done in range(repeats):
        start = time.perf_counter()
        xp.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
        progress((done + 1) / repeats)
    best = max(best, 1e-9)
    return {
        "tflops": 2 * size**3 / best / 1e12,
        "size": size,
        "dtype": dtype,
        "device": label,
        "seconds": best,
    }

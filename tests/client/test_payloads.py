"""The JSON shapes of a python job's input and of a pickled result (market.payloads)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qubix_jupyter.api import decode_result, encode_python_job
from qubix_jupyter.dask_provider.kinds import run_python
from qubix_jupyter.market import payloads


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2048))
def test_bytes_round_trip_through_json_text(data: bytes):
    assert payloads.python_call_bytes(payloads.python_input(data)) == data
    assert payloads.pickled_result_bytes(payloads.pickled_result(data)) == data


def test_submit_encodes_a_call_the_python_runner_runs_and_results_decode():
    input_data = encode_python_job(divmod, (17, 5), {})
    assert input_data["kind"] == "python"
    assert run_python(payloads.python_call_bytes(input_data)) == (3, 2)
    assert decode_result(payloads.pickled_result(pickle.dumps({"x": 1}))) == {"x": 1}
    assert decode_result({"plain": "json"}) == {"plain": "json"}


@pytest.mark.parametrize(
    "bad",
    [
        None,
        b"raw",
        {"kind": "cell", "payload": ""},
        {"kind": "python"},
        {"kind": "python", "payload": "not base64!"},
    ],
)
def test_a_malformed_input_is_a_typed_422(bad: object):
    with pytest.raises(payloads.InvalidPayload) as refused:
        payloads.python_call_bytes(bad)
    assert refused.value.status == 422

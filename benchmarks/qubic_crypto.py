"""Throughput of the pure-Python Qubic cryptography, with baselines measured in the same run.

    python benchmarks/qubic_crypto.py [--seconds 1.0]

Prints one JSON line. ``verify_ms_median`` is the median wall time of single verifications of
distinct (key, digest, signature) triples, including public-key decoding and the subgroup check.
Baselines: pycryptodome's Ed25519 verify (native code) and raw K12 hashing of 32 bytes, so that
figures from different machines can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from qubix_jupyter.settlement import fourq
from qubix_jupyter.settlement.identity import is_valid_identity
from qubix_jupyter.settlement.k12 import k12
from qubix_jupyter.settlement.keys import KeyPair
from qubix_jupyter.settlement.schnorrq import verify
from qubix_jupyter.settlement.wallet import generate_seed


def _rate(operation: Callable[[int], object], seconds: float, items: int) -> float:
    """Operations per second: call operation(i) for i = 0, 1, … for at least ``seconds``."""
    done = 0
    start = time.perf_counter()
    while True:
        operation(done % items)
        done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measured operation")
    parser.add_argument("--keys", type=int, default=24, help="distinct key pairs to cycle through")
    args = parser.parse_args()

    setup_start = time.perf_counter()
    fourq.mul_base(1)  # build the fixed-base tables once, outside the timed loops
    fourq.double_mul_base(1, 1, fourq.GENERATOR)
    table_setup_ms = (time.perf_counter() - setup_start) * 1000

    pairs = [KeyPair.from_seed(generate_seed()) for _ in range(args.keys)]
    digests = [k12(i.to_bytes(4, "little"), 32) for i in range(args.keys)]
    signatures = [pair.sign(d) for pair, d in zip(pairs, digests, strict=True)]
    identities = [pair.identity for pair in pairs]

    signs = _rate(lambda i: pairs[i].sign(digests[i]), args.seconds, args.keys)

    verify_times = []
    verify_start = time.perf_counter()
    i = 0
    while time.perf_counter() - verify_start < args.seconds or i < args.keys:
        k = i % args.keys
        t0 = time.perf_counter()
        ok = verify(pairs[k].public_key, digests[k], signatures[k])
        verify_times.append(time.perf_counter() - t0)
        if not ok:
            raise SystemExit("benchmark signature failed to verify")
        i += 1
    verifies = len(verify_times) / sum(verify_times)

    identity_checks = _rate(lambda i: is_valid_identity(identities[i]), args.seconds, args.keys)
    keygens = _rate(lambda i: KeyPair.from_subseed(digests[i]), args.seconds, args.keys)

    ed_key = ECC.generate(curve="ed25519")
    ed_message = b"\x00" * 32
    ed_signature = eddsa.new(ed_key, "rfc8032").sign(ed_message)
    ed_verifier = eddsa.new(ed_key.public_key(), "rfc8032")
    ed_verifies = _rate(lambda _: ed_verifier.verify(ed_message, ed_signature), args.seconds, 1)
    k12_hashes = _rate(lambda i: k12(digests[i], 32), args.seconds, args.keys)

    result = {
        "benchmark": "qubic_crypto",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "signs_per_s": round(signs, 1),
        "verifies_per_s": round(verifies, 1),
        "verify_ms_median": round(statistics.median(verify_times) * 1000, 3),
        "verify_ms_max": round(max(verify_times) * 1000, 3),
        "keypairs_from_subseed_per_s": round(keygens, 1),
        "identity_validations_per_s": round(identity_checks, 1),
        "table_setup_ms": round(table_setup_ms, 1),
        "baseline_ed25519_verifies_per_s_pycryptodome": round(ed_verifies, 1),
        "baseline_k12_32b_hashes_per_s": round(k12_hashes, 1),
        "verify_target_ms": 50,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

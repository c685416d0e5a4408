"""The local wallet: seed generation, seed-file permissions, challenge signing, `wallet new`."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qubix_jupyter.settlement.identity import is_valid_identity
from qubix_jupyter.settlement.keys import InvalidSeed, KeyPair, validate_seed
from qubix_jupyter.settlement.wallet import (
    InsecureSeedFile,
    generate_seed,
    read_seed_file,
    sign_challenge,
    verify_challenge,
    wallet_new_command,
    write_seed_file,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
SEED = "nhtighfbfdvgxnxrwxnbfmisknawppoewsycodciozvqpeqegttwofg"
PAIR = KeyPair.from_seed(SEED)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_seeds_are_valid_and_distinct() -> None:
    seeds = {generate_seed() for _ in range(50)}
    assert len(seeds) == 50
    for seed in seeds:
        assert validate_seed(seed) == seed
    # All 26 letters show up across 50 × 55 draws unless the generator is badly skewed.
    assert set("".join(seeds)) == set("abcdefghijklmnopqrstuvwxyz")


@posix_only
def test_seed_file_is_created_0600_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "seed"
    write_seed_file(path, SEED)
    assert _mode(path) == 0o600
    assert path.read_text() == SEED + "\n"
    assert read_seed_file(path) == SEED
    assert read_seed_file(str(path)) == SEED


@posix_only
def test_seed_file_mode_survives_a_restrictive_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        write_seed_file(tmp_path / "seed", SEED)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "seed") == 0o600


def test_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "seed"
    path.write_text("precious\n")
    with pytest.raises(FileExistsError):
        write_seed_file(path, SEED)
    assert path.read_text() == "precious\n"


@posix_only
def test_symlink_at_the_path_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "seed").symlink_to(target)
    with pytest.raises(FileExistsError):
        write_seed_file(tmp_path / "seed", SEED)
    assert not target.exists()


def test_invalid_seed_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(InvalidSeed):
        write_seed_file(tmp_path / "seed", "tooshort")
    assert not (tmp_path / "seed").exists()


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666, 0o700 | 0o004])
def test_seed_file_accessible_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "seed"
    write_seed_file(path, SEED)
    path.chmod(mode)
    with pytest.raises(InsecureSeedFile, match="chmod 600") as info:
        read_seed_file(path)
    assert f"{mode:04o}" in str(info.value)
    assert SEED not in str(info.value)
    assert isinstance(info.value, PermissionError)


@posix_only
@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "seed"
    write_seed_file(path, SEED)
    path.chmod(mode)
    assert read_seed_file(path) == SEED


@posix_only
@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"short\n", "55 letters"),
        (SEED.upper().encode(), "lowercase"),
        (b"\xff" * 55, "ASCII"),
        ((SEED + "\n" + " " * 300 + "junk").encode(), "55 letters"),
        ((SEED + "\n").encode() + b" " * 2000, "too large"),
    ],
)
def test_seed_file_with_bad_content_is_refused(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "seed"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(InvalidSeed, match=match):
        read_seed_file(path)


def test_missing_seed_file() -> None:
    with pytest.raises(FileNotFoundError):
        read_seed_file("/nonexistent/qubix/seed")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_challenge_round_trip(challenge: str) -> None:
    signed = sign_challenge(SEED, challenge)
    assert signed["identity"] == PAIR.identity
    assert len(signed["signature"]) == 128
    assert verify_challenge(signed["identity"], challenge, signed["signature"])
    assert not verify_challenge(signed["identity"], challenge + "x", signed["signature"])


def test_challenge_rejections() -> None:
    challenge = "qubix-login:1234:nonce-abc"
    signed = sign_challenge(SEED, challenge)
    other = KeyPair.from_seed("b" * 55).identity
    sig = signed["signature"]
    flipped = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
    assert not verify_challenge(other, challenge, sig)
    assert not verify_challenge(PAIR.identity, challenge, flipped)
    for bad_identity in ("", PAIR.identity.lower(), PAIR.identity[:-1] + "A", None):
        assert not verify_challenge(bad_identity, challenge, sig)  # type: ignore[arg-type]
    for bad_signature in ("", sig[:-2], sig + "00", "zz" * 64, None, bytes.fromhex(sig)):
        assert not verify_challenge(PAIR.identity, challenge, bad_signature)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="challenge"):
        verify_challenge(PAIR.identity, b"bytes", sig)  # type: ignore[arg-type]


def test_wallet_new_without_path_prints_the_seed_once_with_a_warning() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert wallet_new_command(None, out=out, err=err) == 0
    text = out.getvalue()
    words = text.split()
    seed = next(w for w in words if len(w) == 55 and w.isalpha() and w.islower())
    identity = next(w for w in words if is_valid_identity(w))
    assert KeyPair.from_seed(seed).identity == identity
    assert text.count(seed) == 1
    assert "Anyone who sees this seed can spend" in text
    assert err.getvalue() == ""


@posix_only
def test_wallet_new_with_path_writes_0600_and_prints_only_the_identity(tmp_path: Path) -> None:
    path = tmp_path / "wallet.seed"
    out, err = io.StringIO(), io.StringIO()
    assert wallet_new_command(str(path), out=out, err=err) == 0
    seed = read_seed_file(path)
    assert _mode(path) == 0o600
    assert out.getvalue() == KeyPair.from_seed(seed).identity + "\n"
    assert seed not in out.getvalue() + err.getvalue()
    assert str(path) in err.getvalue()


def test_wallet_new_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "wallet.seed"
    path.write_text("precious\n")
    out, err = io.StringIO(), io.StringIO()
    assert wallet_new_command(str(path), out=out, err=err) == 1
    assert path.read_text() == "precious\n"
    assert out.getvalue() == ""
    assert "already exists" in err.getvalue()


def test_wallet_new_reports_unwritable_directory(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert wallet_new_command(str(tmp_path / "missing" / "seed"), out=out, err=err) == 1
    assert "cannot create seed file" in err.getvalue()
    assert out.getvalue() == ""


def test_wallet_new_defaults_to_the_process_streams(capsys: pytest.CaptureFixture[str]) -> None:
    assert wallet_new_command(None) == 0
    assert "Your new Qubic seed" in capsys.readouterr().out

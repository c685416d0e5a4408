"""The user's own Qubic wallet: seed generation, the seed file, and login challenges.

Seeds never reach the server. ``qubix wallet new`` creates one on the user's machine; to prove
ownership of an identity the user signs a server-issued challenge locally
(:func:`sign_challenge`) and the server checks it with :func:`verify_challenge`, which sees
only public data.

Signing here is not constant-time (see :mod:`.schnorrq`); on a personal machine the exposure
is to other code running as, or watching, the same user.
"""

from __future__ import annotations

import os
import secrets
import stat
import string
import sys
from pathlib import Path
from typing import TextIO

from .identity import InvalidIdentity, public_key_from_identity
from .k12 import k12
from .keys import SEED_LENGTH, InvalidSeed, KeyPair, validate_seed
from .schnorrq import SIGNATURE_LENGTH, verify

SEED_FILE_MODE = 0o600
_MAX_SEED_FILE_BYTES = 1024  # a seed, a newline and some stray whitespace; anything bigger is wrong


class InsecureSeedFile(PermissionError):
    """A seed file that users other than its owner may read or write."""


def generate_seed() -> str:
    """A fresh random seed: 55 letters a-z from the operating system's CSPRNG (~258 bits)."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(SEED_LENGTH))


def write_seed_file(path: str | os.PathLike[str], seed: str) -> None:
    """Create ``path`` holding ``seed`` with mode 0600; never overwrites an existing file.

    The file is created with O_CREAT|O_EXCL and mode 0600 in one system call, so no other user
    can open it in between and an existing file (or a symlink planted at ``path``) makes this
    raise FileExistsError instead of being replaced. A failed write removes the partial file.
    """
    validate_seed(seed)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SEED_FILE_MODE)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, SEED_FILE_MODE)  # a restrictive umask may have dropped owner bits
        os.write(fd, (seed + "\n").encode("ascii"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def read_seed_file(path: str | os.PathLike[str]) -> str:
    """Read and validate the seed in ``path``.

    Refuses (InsecureSeedFile) a file whose permissions let group or others read or write it —
    readable leaks the funds, writable lets someone swap in their own seed so that deposits go
    to them. The check is made on the opened file, not on the path. On systems without POSIX
    permissions (Windows) the check is skipped.
    """
    with open(path, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InsecureSeedFile(
                f"seed file {os.fspath(path)!r} is accessible by other users "
                f"(mode {stat.S_IMODE(mode):04o}); restrict it with: chmod 600 {os.fspath(path)}"
            )
        data = handle.read(_MAX_SEED_FILE_BYTES + 1)
    if len(data) > _MAX_SEED_FILE_BYTES:
        raise InvalidSeed(f"{os.fspath(path)!r} is too large to be a seed file")
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise InvalidSeed("the seed file is not plain ASCII text") from exc
    return validate_seed(text)


def challenge_digest(challenge: str) -> bytes:
    """K12(challenge as UTF-8, 32): what a login challenge signature covers."""
    if not isinstance(challenge, str):
        raise TypeError(f"challenge must be a string, not {type(challenge).__name__}")
    return k12(challenge.encode("utf-8"), 32)


def sign_challenge(seed: str, challenge: str) -> dict[str, str]:
    """Sign a server challenge locally: ``{"identity": ..., "signature": <128 hex chars>}``."""
    pair = KeyPair.from_seed(seed)
    return {"identity": pair.identity, "signature": pair.sign(challenge_digest(challenge)).hex()}


def verify_challenge(identity: str, challenge: str, signature_hex: str) -> bool:
    """Server side: True iff ``signature_hex`` signs ``challenge`` for ``identity``.

    Returns False — never raises — for a malformed identity or signature (wrong length, not
    hex, not a string): both arrive from the client. Only a non-string ``challenge``, which
    the server itself issued, raises TypeError.
    """
    digest = challenge_digest(challenge)
    try:
        public_key = public_key_from_identity(identity)
    except InvalidIdentity:
        return False
    if not isinstance(signature_hex, str) or len(signature_hex) != 2 * SIGNATURE_LENGTH:
        return False
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    return verify(public_key, digest, signature)


_SEED_WARNING = """\
Your new Qubic seed (shown only this once):

    {seed}

Anyone who sees this seed can spend everything in this wallet. Write it down on paper,
keep it offline, and never paste it into a notebook, chat or website. QUBIX never asks for it.
Identity: {identity}
"""


def wallet_new_command(
    path: str | None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """``qubix wallet new [--seed-file PATH]``; returns the process exit status.

    Without PATH the seed is printed once, with a warning, to ``out``. With PATH the seed is
    written to a new 0600 file and ``out`` receives only the identity (one line, for scripts);
    a note about the file goes to ``err``. An existing PATH is never overwritten (exit 1).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    seed = generate_seed()
    pair = KeyPair.from_seed(seed)
    if path is None:
        out.write(_SEED_WARNING.format(seed=seed, identity=pair.identity))
        return 0
    try:
        write_seed_file(path, seed)
    except FileExistsError:
        err.write(f"error: {path} already exists; refusing to overwrite a seed file\n")
        return 1
    except OSError as exc:
        err.write(f"error: cannot create seed file {path}: {exc.strerror or exc}\n")
        return 1
    out.write(pair.identity + "\n")
    err.write(f"seed written to {Path(path)} (mode 0600); back it up, it is the only copy\n")
    return 0

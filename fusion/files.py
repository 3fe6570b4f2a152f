"""Atomic file writes (a file on disk is always the old version or the new one), file digests, and the JSON /
safetensors readers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds.

    The file ends with the mode ``open`` gives new files (0666 less the umask), whatever the writer used (mkstemp
    and safetensors make 0600), so teammates on a shared cluster can read checkpoints, pages and plots.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0o077)  # the only way to read it is to set it; 077 is safe for the instant it is in force
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors write (contiguous, untied copies) through a temp file; an I/O failure is an ``OSError`` with
    its errno (safetensors reports it as a SafetensorError whose text ends in ``(os error N)``)."""
    with atomic_path(path) as tmp:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        except SafetensorError as e:
            code = re.search(r"\(os error (\d+)\)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), f"{os.strerror(int(code.group(1)))}: writing {path}") from e


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(path), device=str(device))


def file_record(path: str | os.PathLike) -> dict:
    """``{"bytes": size, "sha256": hex digest}`` of a file, read in chunks (checkpoint shards can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):  # hashlib.file_digest is Python 3.11+; the project supports 3.10
            digest.update(chunk)
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def first_present(directory: str | os.PathLike, *names: str, what: str) -> Path:
    """The first of ``names`` that exists in ``directory``; a FileNotFoundError naming all of them otherwise."""
    directory = Path(directory)
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory} has no {what}: expected {' or '.join(names)}")

"""Atomic writes keep the old or the new file, and give files the mode the umask asks for."""

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusion.document import Document
from fusion.files import atomic_path, file_record, load_tensors, save_tensors, write_json


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        save_tensors(tmp_path / "w.safetensors", {"w": torch.ones(2)})  # safetensors itself creates 0600 files
        Document.of("hello").to_html(tmp_path / "page.html")
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "a.json": mode, "w.safetensors": mode, "page.html": mode}
    assert torch.equal(load_tensors(tmp_path / "w.safetensors")["w"], torch.ones(2))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_file_record_is_the_size_and_sha256(tmp_path):
    (tmp_path / "f").write_bytes(b"abc" * 1000)
    assert file_record(tmp_path / "f") == {"bytes": 3000, "sha256": hashlib.sha256(b"abc" * 1000).hexdigest()}


def test_a_failed_tensor_write_is_an_oserror_with_its_errno(tmp_path):
    # a real write failure: a file-size limit makes the kernel refuse the write (EFBIG), inside safetensors
    script = (f"import errno, resource, signal, torch\n"
              f"from fusion.files import save_tensors\n"
              f"signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              f"resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
              f"try:\n"
              f"    save_tensors({str(tmp_path / 'w.safetensors')!r}, {{'w': torch.ones(10_000)}})\n"
              f"except OSError as e:\n"
              f"    assert e.errno == errno.EFBIG and 'w.safetensors' in str(e), e\n"
              f"    print('refused')\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "refused", out.stderr[-2000:]
    assert not list(tmp_path.iterdir())  # no temp file left behind

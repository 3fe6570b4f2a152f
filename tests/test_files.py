"""Atomic writes keep the old or the new file, and give files the mode the umask asks for."""

import hashlib
import os
import stat

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

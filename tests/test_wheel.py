"""The wheel users install: built from the committed sources (or taken from ``$FUSION_WHEEL_DIR``, where .ci/run
builds it), installed with pip into a folder of its own, and used from outside the checkout, so that neither the
source tree nor the editable install can stand in for it. It must hold every module of the source and the
playground page, import each module, run the ``fusion`` command and load a checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusion.api import Fusion
from fusion.data.synthetic import SyntheticWorld
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.tokenizers.text import TextTokenizer
from fusion.tokenizers.vq_config import VQConfig

from .model.conftest import make_model

ROOT = Path(__file__).resolve().parents[1]

# Run in the installed copy: the module list, each module imported, a checkpoint loaded and decoded.
PROBE = r"""
import importlib, json, pathlib, sys
import fusion
here = pathlib.Path(fusion.__file__).parent
modules = sorted(str(p.relative_to(here.parent)) for p in here.rglob("*.py"))
for name in modules:
    if not name.endswith("__main__.py"):  # running a command is not importing it
        importlib.import_module(name[:-3].replace("/", ".").removesuffix(".__init__"))
model = fusion.load(sys.argv[1], device="cpu")
doc = model.generate("a red circle", mode="text", max_new_tokens=4, seed=0)
print(json.dumps({"file": fusion.__file__, "modules": modules, "text": doc.texts,
                  "page": (here / "serve" / "static" / "playground.html").is_file()}))
"""


def wheel(tmp_path: Path) -> Path:
    """The wheel of $FUSION_WHEEL_DIR, else one built here from a copy of the committed tree."""
    given = os.environ.get("FUSION_WHEEL_DIR")
    if given:
        found = sorted(Path(given).glob("*.whl"))
        assert found, f"FUSION_WHEEL_DIR={given} holds no wheel"
        return found[-1]
    if subprocess.run(["git", "-C", str(ROOT), "status"], capture_output=True).returncode:
        pytest.skip("not a git checkout, and no FUSION_WHEEL_DIR")
    src = tmp_path / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    return next((tmp_path / "dist").glob("*.whl"))


def test_the_wheel_holds_every_module_and_works_installed_apart(tmp_path):
    target, away = tmp_path / "site", tmp_path / "elsewhere"
    away.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel(tmp_path))], check=True, capture_output=True)
    torch.manual_seed(0)
    text = TextTokenizer.train(SyntheticWorld(0).texts(300), 300)
    tokenizer = MixedTokenizer(text, ImageTokenizer(VQConfig.preset("tiny")).eval())
    checkpoint = tmp_path / "checkpoint"
    Fusion(make_model(0, vocab=tokenizer.vocab), tokenizer).save_pretrained(checkpoint)
    env = {**os.environ, "PYTHONPATH": str(target)}  # the installed copy first; dependencies from this venv

    probe = subprocess.run([sys.executable, "-c", PROBE, str(checkpoint)], cwd=away, env=env, capture_output=True,
                           text=True, timeout=600)
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).is_relative_to(target)  # neither the checkout nor the editable install
    source = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "fusion").rglob("*.py"))
    assert seen["modules"] == source and seen["page"]
    want = Fusion.from_pretrained(checkpoint, device="cpu").generate("a red circle", mode="text", max_new_tokens=4,
                                                                       seed=0)
    assert seen["text"] == want.texts

    for args in (["--help"], ["bench", "--help"]):
        run = subprocess.run([str(target / "bin" / "fusion"), *args], cwd=away, env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0 and "usage: fusion" in run.stdout, run.stderr[-2000:]

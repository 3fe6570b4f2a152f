"""The package's front door: lazy exports, and a ``fusion --help`` that does not import torch."""

import subprocess
import sys

import fusion


def test_lazy_exports_resolve():
    from fusion.api import Fusion
    from fusion.inference.config import GenerationConfig

    assert fusion.Fusion is Fusion and fusion.GenerationConfig is GenerationConfig
    assert {"Fusion", "Document", "Text", "Image", "load", "GenerationConfig", "ModelConfig"} <= set(fusion.__all__)


def test_help_does_not_import_torch():
    code = ("import sys, contextlib, io\nimport fusion.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
            "    fusion.cli.main(['--help'])\n"
            "print('torch' in sys.modules, 'generate' in out.getvalue())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]  # torch not imported; the commands were listed

"""The README's end-to-end example, small: prepare part of the Python standard library with
GPT-2's tokenizer (`hpcorch data prepare`), then `hpcorch submit gpt-tiny-gpt2` on the
embedded local profile; the loss falls."""
import os
import subprocess
import sys
import sysconfig

import pytest
from trainhelp import losses

pytestmark = pytest.mark.timeout(600)


def _hpcorch(*args, cwd, home):
    return subprocess.run([sys.executable, "-m", "hpcorch.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=400, env={**os.environ, "HPCORCH_HOME": str(home)})


def test_prepare_the_stdlib_with_gpt2_and_train_the_tiny_job(tmp_path):
    stdlib = sysconfig.get_paths()["stdlib"]
    home = tmp_path / "home"
    # The README prepares "$STDLIB/*.py"; three packages (about 250k tokens) keep this quick.
    prep = _hpcorch("data", "prepare", f"{stdlib}/email/*.py", f"{stdlib}/json/*.py", f"{stdlib}/logging/*.py",
                    "--out", "data/stdlib-gpt2", "--tokenizer", "gpt2", "--processes", "2", cwd=tmp_path, home=home)
    assert prep.returncode == 0, prep.stdout + prep.stderr
    show = _hpcorch("data", "show", "data/stdlib-gpt2", cwd=tmp_path, home=home)
    assert "gpt2" in show.stdout and "50257" in show.stdout.replace(",", "")
    run = tmp_path / "run"
    out = _hpcorch("submit", "gpt-tiny-gpt2", "--run-dir", str(run), cwd=tmp_path, home=home)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hpcorch: done at step 30" in out.stdout
    loss = losses(run)
    assert loss[1] > 10 and max(loss[s] for s in range(26, 31)) < loss[1] - 3, loss  # from ln(50257) = 10.8 down

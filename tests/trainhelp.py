"""Helpers for trainer tests: tiny runs through the real `hpcorch train` launcher."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = ["trainer.model.layers=1", "trainer.model.width=32", "trainer.model.heads=2",
        "trainer.model.seq_len=32", "trainer.global_batch=8", "trainer.micro_batch=2",
        "trainer.steps=24", "trainer.checkpoint.interval=6", "trainer.checkpoint.keep=2",
        "trainer.optimizer.warmup_steps=4", "trainer.data.max_bytes=400000", "trainer.eval_interval=0",
        "trainer.log_interval=100", "trainer.collective_timeout_s=60"]


def finish_ranks(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Wait for every rank started by a test (their stdout: text, stderr merged); kill (by pid)
    any rank still running when the wait ends, whatever ended it."""
    logs = []
    try:
        for p in procs:
            text, _ = p.communicate(timeout=timeout)
            logs.append(text)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return logs


def train_cmd(run_dir: Path, nproc: int, *extra: str, flags: tuple[str, ...] = (),
              job: str = "jobs/gpt-tiny.yaml") -> list[str]:
    """`hpcorch train` of the tiny job (``job``: another one, cut down by the same overrides);
    ``extra`` are more --set overrides, ``flags`` more options."""
    sets = [a for s in TINY + list(extra) for a in ("--set", s)]
    return [sys.executable, "-m", "hpcorch.cli.main", "train", job, "--nproc", str(nproc),
            "--run-dir", str(run_dir), *sets, *flags]


def train(run_dir: Path, nproc: int = 2, *extra: str, env: dict | None = None, timeout: float = 240,
          flags: tuple[str, ...] = (), job: str = "jobs/gpt-tiny.yaml"):
    return subprocess.run(train_cmd(run_dir, nproc, *extra, flags=flags, job=job), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def train_and_signal(run_dir: Path, at_step: int, nproc: int = 2, sig=signal.SIGTERM,
                     *extra: str, timeout: float = 240, job: str = "jobs/gpt-tiny.yaml") -> subprocess.CompletedProcess:
    """Start a run and send ``sig`` to the launcher once rank 0 reports ``at_step``."""
    proc = subprocess.Popen(train_cmd(run_dir, nproc, *extra, job=job), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    try:
        progress = run_dir / "progress.json"
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads(progress.read_text())["step"] >= at_step:
                    proc.send_signal(sig)
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=max(1, deadline - time.monotonic()))
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def losses(run_dir: Path) -> dict[int, float]:
    """Per-step losses from metrics.jsonl (a later line for the same step wins)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]
    return out


def traced_samples(trace_dir: Path) -> dict[int, list[int]]:
    """Step -> the sorted sample ids every rank traced for it (``HPCORCH_TRACE_SAMPLES`` files).
    A step trained again after a failure (a later Slurm attempt) counts as the later attempt's
    ranks trained it: the optimizer only kept that one."""
    per_step: dict[int, dict[int, list[int]]] = {}
    for path in trace_dir.glob("rank*.jsonl"):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            per_step.setdefault(rec["step"], {}).setdefault(rec.get("attempt", 0), []).extend(rec["samples"])
    return {s: sorted(by_attempt[max(by_attempt)]) for s, by_attempt in per_step.items()}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def check_reshard(ref: Path, tmp_path: Path, into: list[tuple[str, int, list[str]]],
                  continued: tuple[int, list[str]], resume_step: int, tolerance: float, *model: str,
                  job: str = "jobs/gpt-tiny.yaml") -> None:
    """``ref``'s checkpoints (a finished run) load into each layout of ``into`` (name, ranks,
    --set overrides): the same weights before any further step (the final checkpoint's); and a
    run on ``continued`` (ranks, overrides) goes on from step ``resume_step`` with ``ref``'s
    losses within ``tolerance`` (relative). ``model``: the overrides every run shares."""
    import shutil

    for name, nproc, sets in into:
        same = tmp_path / f"final-{name}"
        shutil.copytree(ref, same)
        (same / "summary.json").unlink()
        out = train(same, nproc, *model, *sets, timeout=400, job=job)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert summary(same)["weights_sha256"] == summary(ref)["weights_sha256"], name
    on = tmp_path / "continued"
    shutil.copytree(ref, on)
    (on / "summary.json").unlink()
    nproc, sets = continued
    out = train(on, nproc, *model, *sets, flags=("--resume-step", str(resume_step)), timeout=400, job=job)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    got, want = losses(on), losses(ref)
    after = [s for s in want if s > resume_step]
    assert after and max(abs(got[s] - want[s]) / want[s] for s in after) <= tolerance

"""What submitit runs on every task of a job: set up torch.distributed from submitit's
environment, train, and after a signal-driven checkpoint either requeue (within the job's
restart budgets) or stop.

This module is imported on compute nodes; it must not import torch at module level, because
the login node pickles :class:`TrainTask` without needing torch.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LOCAL_REQUEUE_EXIT = 144  # submitit's local controller restarts every task on this code


class NotRequeued(RuntimeError):
    """The run checkpointed but will not be requeued (budget spent, cancelled): resume it later."""


@dataclass
class TrainTask:
    job_file: str
    run_dir: str
    scheduler: str                 # "slurm" or "local"
    peak_tflops: float | None = None

    # ----- entry point on every task ------------------------------------------------------------
    def __call__(self) -> dict:
        import submitit

        from ..spec.job import load_job

        job = load_job(self.job_file)
        env = submitit.helpers.TorchDistributedEnvironment()
        env.export(set_cuda_visible_devices=False)
        os.environ["MASTER_ADDR"] = resolve_address(env.master_addr)
        budget = RestartBudget(Path(self.run_dir), job.requeue)
        if self.scheduler == "slurm" and env.rank == 0:
            budget.account_unplanned_restart()
        code, stop_signal = self._train(job)
        if code == 0:
            return json.loads((Path(self.run_dir) / "summary.json").read_text()) if env.rank == 0 else {}
        return self._after_checkpoint(job, budget, stop_signal, env.rank)

    def _train(self, job) -> tuple[int, int]:
        import signal

        from ..train.distributed import init_distributed, shutdown
        from ..train.loop import StopPolicy, Trainer

        dist_env = init_distributed(job.trainer.collective_timeout_s)
        trainer = Trainer(job, Path(self.run_dir), dist_env, peak_tflops=self.peak_tflops,
                          stop=StopPolicy(signals=(job.requeue.signum, signal.SIGTERM, signal.SIGINT)))
        code = trainer.run()
        shutdown()
        return code, trainer.agreed_signal

    def _after_checkpoint(self, job, budget: "RestartBudget", stop_signal: int, rank: int):
        import signal

        if stop_signal != job.requeue.signum or not job.requeue.enabled:  # a cancel: stop for good
            raise NotRequeued(f"stopped by {signal.Signals(stop_signal).name}; checkpoint committed. "
                              f"Continue with: hpcorch resume {self.run_dir}")
        if self.scheduler == "local":
            os._exit(LOCAL_REQUEUE_EXIT)  # submitit's controller starts every task again
        job_id = os.environ["SLURM_JOB_ID"]
        if rank != 0:
            # Rank 0 decides; a refusal makes it fail, and srun (--kill-on-bad-exit) ends us.
            # Slurm's own SIGTERM must end this process at once, not set a training flag.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            time.sleep(600)
            os._exit(3)
        kind = "timeout" if near_time_limit(job_id, job.requeue.signal_lead_s) else "preemption"
        refusal = budget.spend(kind)
        if refusal:
            budget.note_refusal(refusal)
            raise NotRequeued(refusal)
        from ..cluster.slurm import Slurm

        Slurm().run("scontrol", "requeue", job_id)
        # The requeue is registered: leaving now (without a result) lets Slurm end the other
        # ranks and queue the job again.
        os._exit(3)

    def checkpoint(self, *args, **kwargs):
        """submitit calls this only if its own handler still holds the signal (before training
        started): nothing is lost then, so requeue the same task."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def resolve_address(host: str) -> str:
    """``host`` if it resolves, else the NodeAddr Slurm knows it by (emulated nodes, or
    clusters whose node names are not in DNS)."""
    try:
        socket.gethostbyname(host)
        return host
    except OSError:
        pass
    from ..cluster.slurm import Slurm

    address = Slurm().show("node", host).get("NodeAddr")
    if not address:
        raise RuntimeError(f"cannot resolve {host} and Slurm knows no NodeAddr for it")
    return address


def near_time_limit(job_id: str, lead_s: int) -> bool:
    """Whether the signal came because the time limit is near (rather than preemption)."""
    from ..cluster.slurm import Slurm
    from ..spec.units import parse_time

    out = Slurm().run("squeue", "-h", "-j", job_id, "-o", "%L", check=False).strip()

    try:
        left = parse_time(out) if out and out not in ("INVALID", "NOT_SET") else None
    except ValueError:
        left = None
    return left is not None and left <= lead_s + 60


class RestartBudget:
    """Requeues by cause, counted in the run directory so that they survive every restart."""

    def __init__(self, run_dir: Path, policy):
        self.path, self.policy = run_dir / "restarts.json", policy

    def load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {"preemption": 0, "timeout": 0, "node_failure": 0, "refused": ""}

    def _save(self, data: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    def spend(self, kind: str) -> str:
        """Count one requeue of ``kind``; a non-empty reason if its budget is spent."""
        data = self.load()
        limit = {"preemption": self.policy.max_preemptions, "timeout": self.policy.max_timeouts,
                 "node_failure": self.policy.max_node_failures}[kind]
        if data[kind] >= limit:
            return f"{kind} budget spent ({data[kind]} of {limit}); checkpoint committed, not requeued"
        data[kind] += 1
        data["refused"] = ""
        self._save(data)
        return ""

    def account_unplanned_restart(self) -> None:
        """A restart that no signal of ours asked for (Slurm requeued after a node failure)."""
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        data = self.load()
        planned = data["preemption"] + data["timeout"] + data["node_failure"]
        if restarts > planned:
            refusal = self.spend("node_failure")
            if refusal:
                self.note_refusal(refusal)
                print(f"hpcorch: {refusal}", file=sys.stderr, flush=True)
                raise NotRequeued(refusal)

    def note_refusal(self, reason: str) -> None:
        data = self.load()
        data["refused"] = reason
        self._save(data)

    def refused(self) -> str:
        return self.load().get("refused", "")

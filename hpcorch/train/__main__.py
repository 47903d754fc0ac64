"""One rank of a training run: ``python -m hpcorch.train --job JOB.yaml --run-dir DIR``.

Started by ``hpcorch train`` (local processes), by srun, or by submitit; the environment says
which rank this is. Exit 0: done; 3: checkpointed on a signal, start again; 2: a clear error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcorch.train", description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="job YAML (the resolved copy in the run dir)")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume-step", type=int, help="resume from this committed step, not the latest")
    parser.add_argument("--peak-tflops", type=float, help="per-rank peak for MFU (default: none)")
    args = parser.parse_args(argv)

    from ..errors import HpcorchError
    from ..spec.job import load_job
    from .checkpoint import CheckpointError
    from .distributed import init_distributed, shutdown
    from .loop import Trainer

    try:
        job = load_job(args.job, args.overrides)
        env = init_distributed(job.trainer.collective_timeout_s)
        trainer = Trainer(job, Path(args.run_dir), env, peak_tflops=args.peak_tflops,
                          resume_step=args.resume_step)
        code = trainer.run()
    except (HpcorchError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())

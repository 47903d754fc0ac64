"""One rank of a training run: ``python -m hpcorch.train --job JOB.yaml --run-dir DIR``; or, with
``--nproc N``, this node's N ranks forked from one process that imports torch once
(:mod:`hpcorch.train.forked`).

Started by ``hpcorch train``'s launcher, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT for a single rank (the node launcher sets them for each rank it forks; the submitit
task calls :func:`hpcorch.train.rank.run_rank` itself). Exit 0: done; 3: checkpointed on a
signal, start again; 2: a clear error.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from hpcorch.train.startup import StartupClock

    clock = StartupClock()
    clock.mark("interpreter")
    parser = argparse.ArgumentParser(prog="python -m hpcorch.train", description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="job YAML (the resolved copy in the run dir)")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume-step", type=int, help="resume from this committed step, not the latest")
    parser.add_argument("--peak-tflops", type=float, help="per-rank peak for MFU (default: none)")
    parser.add_argument("--nproc", type=int, help="fork this many local ranks from one process (a node launcher)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)

    def rank_main(clock: StartupClock) -> int:
        from hpcorch.train.rank import run_rank

        return run_rank(args.job, args.run_dir, "process", peak_tflops=args.peak_tflops,
                        resume_step=args.resume_step, overrides=args.overrides, clock=clock).exit_code

    if args.nproc is None:
        return rank_main(clock)
    if args.nproc < 1:
        parser.error(f"--nproc: expected a positive number of ranks, got {args.nproc}")
    from hpcorch.train.forked import launch_forked

    rank_argv = [a for i, a in enumerate(argv)
                 if a != "--nproc" and not a.startswith("--nproc=") and (i == 0 or argv[i - 1] != "--nproc")]
    return launch_forked(args.nproc, rank_main, rank_argv, clock, job_file=args.job, run_dir=args.run_dir)


if __name__ == "__main__":
    code = main()
    if code != 0:
        # After a clear error the peers may have left mid-collective; gloo's destructors can then
        # abort the interpreter at exit (134), hiding the exit code the launcher acts on.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)

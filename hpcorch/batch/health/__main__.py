"""``python -m hpcorch.batch.health preflight --run-dir DIR [options] <criteria>``: the Slurm step
that checks every node before training (one task per node).

Options besides the criteria (:mod:`hpcorch.batch.health.criteria`): ``--root`` (the system root;
default ``$HPCORCH_SYSTEM_ROOT`` or ``/``), ``--no-allreduce`` (local checks only),
``--port`` and ``--addr`` (override the rendezvous derived from Slurm's variables).

Exit status: 0 healthy; 4 (:data:`hpcorch.protocol.HEALTH_FAILED`) this node failed a check
(its report in ``RUN/health/attempt-N/NODE.json`` names it); 2 a malformed option (one line).
"""
from __future__ import annotations

import logging
import sys

from hpcorch.batch.health.criteria import _Parser, add_arguments, from_namespace
from hpcorch.errors import HpcorchError
from hpcorch.protocol import CLEAR_ERROR

log = logging.getLogger("hpcorch.batch.health")


def _parser() -> _Parser:
    p = _Parser(prog="python -m hpcorch.batch.health preflight", add_help=False, allow_abbrev=False)
    p.add_argument("command", choices=["preflight"])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--root", default=None)
    p.add_argument("--no-allreduce", action="store_true")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--addr", default=None)
    add_arguments(p)
    return p


def _check_version(run_dir: str) -> None:
    """The hpcorch here (inside the image) against the one that submitted the job (its
    ``manifests/submission.json``): another major.minor is a clear error, not a node's fault."""
    import json
    from pathlib import Path

    from hpcorch import __version__

    try:
        planned = json.loads((Path(run_dir) / "manifests" / "submission.json").read_text()).get("hpcorch_version")
    except (OSError, ValueError, AttributeError):
        return  # no record (a run submitted before the field existed): nothing to compare
    if isinstance(planned, str) and planned.split(".")[:2] != __version__.split(".")[:2]:
        raise HpcorchError(f"hpcorch {__version__} runs here, but hpcorch {planned} submitted the job; "
                           f"install hpcorch {planned} where the ranks run (launch.python / the image)")


def main(argv: list[str] | None = None) -> int:
    """Run the pre-flight on this node; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="hpcorch health: %(message)s", stream=sys.stderr)
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
        criteria = from_namespace(args)
        _check_version(args.run_dir)
    except HpcorchError as exc:
        print(f"error: python -m hpcorch.batch.health: {exc}", file=sys.stderr)
        return CLEAR_ERROR
    from hpcorch.batch.health.preflight import exit_code, run_preflight

    report = run_preflight(criteria, args.run_dir, root=args.root, allreduce=not args.no_allreduce,
                           port=args.port, addr=args.addr)
    for check in report.checks:
        if not check.ok:
            log.error("%s: %s", report.node, check.line())
    (log.info if report.ok else log.error)("%s", report.summary())
    return exit_code(report)


if __name__ == "__main__":
    sys.exit(main())

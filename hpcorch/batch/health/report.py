"""One node's pre-flight result, as the JSON file ``RUN/health/attempt-N/NODE.json``.

Schema (every key always present)::

    {"node": "node2", "ok": false, "attempt": 0, "job_id": "123" | null,
     "started": 1718000000.0, "wall_s": 1.9, "root": "/",
     "gpu_source": "nvml" | "device files" | null,
     "checks": [{"name": "ib.mlx5_0/1.state", "ok": false, "detail": "1: DOWN, expected 4: ACTIVE",
                 "value": "1: DOWN", "floor": "4: ACTIVE"}, ...],
     "failed": ["ib.mlx5_0/1.state"],
     "notes": ["NVML not used: pynvml is not importable (pip install nvidia-ml-py)"],
     "peers": {"node1": true, "node2": false},
     "criteria": ["--gpus", "4", ...]}

``value`` and ``floor`` are what was measured and what was required (numbers in the unit the
check's name or detail gives: GB, GB/s, Gb/s, a count), or null where a check has none.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcorch.util.fileio import atomic_write, read_json

SCHEMA_KEYS = ("node", "ok", "attempt", "job_id", "started", "wall_s", "root", "gpu_source", "checks",
               "failed", "notes", "peers", "criteria")
CHECK_KEYS = ("name", "ok", "detail", "value", "floor")


@dataclass
class Check:
    """One check's verdict. ``detail`` is the line a person reads."""

    name: str
    ok: bool
    detail: str
    value: Any = None
    floor: Any = None

    def line(self) -> str:
        """``ok    name  detail`` / ``FAIL  name  detail``: what ``hpcorch health`` prints."""
        return f"{'ok' if self.ok else 'FAIL':<5} {self.name:<24} {self.detail}"


@dataclass
class NodeReport:
    node: str
    started: float = field(default_factory=time.time)
    attempt: int = 0
    job_id: str | None = None
    root: str = "/"
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gpu_source: str | None = None
    peers: dict[str, bool] = field(default_factory=dict)
    criteria: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Healthy when every check passed (no check at all is healthy: nothing was asked)."""
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def add(self, checks: list[Check] | Check) -> None:
        self.checks.extend([checks] if isinstance(checks, Check) else checks)

    def finish(self) -> NodeReport:
        """Stamp the wall time since ``started``."""
        self.wall_s = round(time.time() - self.started, 3)
        return self

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(ok=self.ok, failed=self.failed)
        return {key: data[key] for key in SCHEMA_KEYS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def summary(self) -> str:
        """One line: ``node2: FAILED ib.mlx5_0/1.state, host.disk (1.9 s)``."""
        verdict = "healthy" if self.ok else "FAILED " + ", ".join(self.failed)
        return f"{self.node}: {verdict} ({self.wall_s:.1f} s)"

    def write(self, path: Path) -> Path:
        """Write the report atomically (a reader never sees half a report)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, self.to_json())
        return path

    @classmethod
    def from_dict(cls, data: dict) -> NodeReport:
        checks = [Check(**{k: c.get(k) for k in CHECK_KEYS}) for c in data.get("checks", [])]
        fields = {k: data[k] for k in ("node", "started", "attempt", "job_id", "root", "notes", "gpu_source",
                                       "peers", "criteria", "wall_s") if k in data}
        return cls(checks=checks, **fields)


def read_reports(folder: Path) -> list[NodeReport]:
    """Every node's report in ``folder`` (a ``RunDir.health_dir``), by node name; unreadable
    files are left out (a node killed mid-write leaves none: the writes are atomic)."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        data = read_json(path)
        if data.get("node"):
            out.append(NodeReport.from_dict(data))
    return out

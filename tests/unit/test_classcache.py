"""The cache of compiled dataclass methods is only a shortcut: a process that takes its methods
from it gets the code a compile gives, the same dry-run script, and a damaged or unwritable
cache costs only the compiles."""
import json
import marshal
import os
import subprocess
import sys
from dataclasses import dataclass

from hpcorch.spec import classcache

# A cold process: the dry run, then every hpcorch dataclass's generated methods as comparable
# tuples, and what the cache did.
PROBE = """
import contextlib, dataclasses, io, json, sys, types
if sys.argv[1:] == ["off"]:  # the cache never installed: dataclasses' own exec of every source text
    sys.modules["hpcorch.spec.classcache"] = types.SimpleNamespace(install=lambda: None, _used=(), _added=None)
from hpcorch.cli.main import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(["submit", "jobs/gpt-tiny.yaml", "--profile", "devcluster", "--dry-run"], prog_name="hpcorch")
    except SystemExit:
        pass
from hpcorch.spec import classcache
def sig(code):
    return repr((code.co_code, code.co_consts, code.co_names, code.co_varnames, code.co_filename,
                 code.co_firstlineno, code.co_flags, code.co_linetable, code.co_exceptiontable))
methods = {}
for name, module in sorted(sys.modules.items()):
    if not name.startswith("hpcorch."):
        continue
    for cls in vars(module).values():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == name:
            for attr, fn in sorted(vars(cls).items()):
                if attr.startswith("__") and hasattr(fn, "__code__") and fn.__code__.co_filename == "<string>":
                    methods[f"{name}.{cls.__qualname__}.{attr}"] = sig(fn.__code__)
print(json.dumps({"script": out.getvalue(), "methods": methods, "used": len(classcache._used),
                  "added": classcache._added}))
"""


def probe(repo, cache_home, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(repo), "XDG_CACHE_HOME": str(cache_home)}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stderr == ""
    return json.loads(done.stdout)


def methods_file(cache_home):
    found = list((cache_home / "hpcorch").glob("classes-*/methods"))
    assert len(found) <= 1
    return found[0] if found else None


def test_cached_methods_are_what_a_compile_gives(repo, tmp_path):
    off = probe(repo, tmp_path / "off", "off")  # no cache at all: dataclasses' exec of the texts
    assert off["added"] is None and methods_file(tmp_path / "off") is None and len(off["methods"]) > 100
    (tmp_path / "file").write_text("")
    plain = probe(repo, tmp_path / "file")  # no cache folder can be made: every method compiled
    assert plain["added"] and methods_file(tmp_path / "file") is None
    first = probe(repo, tmp_path / "cache")  # compiles and fills the cache at exit
    assert first["added"] and methods_file(tmp_path / "cache") is not None
    warm = probe(repo, tmp_path / "cache")
    assert not warm["added"] and warm["used"] > 100, "a second process compiles nothing"
    assert off["methods"] == plain["methods"] == first["methods"] == warm["methods"]
    assert off["script"] == plain["script"] == first["script"] == warm["script"]


def test_a_damaged_file_is_ignored_and_rewritten(repo, tmp_path):
    probe(repo, tmp_path / "cache")
    path = methods_file(tmp_path / "cache")
    good = path.read_bytes()
    texts = set(marshal.loads(good))
    for damage in (b"", b"garbage", good[: len(good) // 2], b"\x00" * 64,
                   marshal.dumps(["not", "a", "dict"]), marshal.dumps({"text": 1})):
        path.write_bytes(damage)
        got = probe(repo, tmp_path / "cache")
        assert got["added"] and got["script"].startswith("#!/bin/bash")
        assert set(marshal.loads(path.read_bytes())) >= texts  # written whole again at exit


def test_other_modules_classes_are_compiled_as_always():
    before = len(classcache._codes)
    namespace = {"__name__": "not_hpcorch_module"}
    exec("from dataclasses import dataclass\n@dataclass(frozen=True)\nclass Point:\n    x: int = 1\n", namespace)
    assert namespace["Point"](2) == namespace["Point"](2) and len(classcache._codes) == before

    @dataclass
    class Local:  # defined in a test module: not hpcorch's either
        a: int = 3

    assert Local() == Local(3) and len(classcache._codes) == before

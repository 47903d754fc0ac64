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
    sys.modules["hpcorch.spec.classcache"] = types.SimpleNamespace(install=lambda: None, _used={}, _added=None)
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
print(json.dumps({"script": out.getvalue(), "methods": methods, "used": sum(map(len, classcache._used.values())),
                  "added": None if classcache._added is None else sorted(classcache._added)}))
"""


def probe(repo, cache_home, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(repo), "XDG_CACHE_HOME": str(cache_home)}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stderr == ""
    return json.loads(done.stdout)


def method_files(cache_home) -> list:
    return sorted((cache_home / "hpcorch").glob("classes-*/*"))


def test_cached_methods_are_what_a_compile_gives(repo, tmp_path):
    off = probe(repo, tmp_path / "off", "off")  # no cache at all: dataclasses' exec of the texts
    assert off["added"] is None and not method_files(tmp_path / "off") and len(off["methods"]) > 100
    (tmp_path / "file").write_text("")
    plain = probe(repo, tmp_path / "file")  # no cache folder can be made: every method compiled
    assert plain["added"] and not method_files(tmp_path / "file")
    first = probe(repo, tmp_path / "cache")  # compiles and fills the cache at exit, a file per module
    files = method_files(tmp_path / "cache")
    assert [f.name for f in files] == first["added"] and len(files) > 10
    warm = probe(repo, tmp_path / "cache")
    assert not warm["added"] and warm["used"] > 100, "a second process compiles nothing"
    assert off["methods"] == plain["methods"] == first["methods"] == warm["methods"]
    assert off["script"] == plain["script"] == first["script"] == warm["script"]


def test_damaged_files_are_ignored_and_rewritten(repo, tmp_path):
    want = probe(repo, tmp_path / "cache")
    files = method_files(tmp_path / "cache")
    good = {f: f.read_bytes() for f in files}
    for damage in (lambda b: b"", lambda b: b"garbage", lambda b: b[: len(b) // 2], lambda b: b"\x00" * 64,
                   lambda b: marshal.dumps(["not", "a", "dict"]), lambda b: marshal.dumps({"text": 1})):
        for f in files:
            f.write_bytes(damage(good[f]))
        got = probe(repo, tmp_path / "cache")
        assert got["added"] == want["added"] and got["script"] == want["script"] and got["methods"] == want["methods"]
        for f in files:  # each written whole again at exit
            assert set(marshal.loads(f.read_bytes())) == set(marshal.loads(good[f]))


def test_other_modules_classes_are_compiled_as_always():
    before = len(classcache._codes)
    namespace = {"__name__": "not_hpcorch_module"}
    exec("from dataclasses import dataclass\n@dataclass(frozen=True)\nclass Point:\n    x: int = 1\n", namespace)
    assert namespace["Point"](2) == namespace["Point"](2) and len(classcache._codes) == before

    @dataclass
    class Local:  # defined in a test module: not hpcorch's either
        a: int = 3

    assert Local() == Local(3) and len(classcache._codes) == before


def test_other_modules_methods_keep_real_annotations(tmp_path):
    """Routed through the cache's exec, another module's generated methods must not inherit its
    ``from __future__ import annotations`` (their annotations would become strings)."""
    probe = ("import typing\nfrom hpcorch.spec import classcache\nclasscache.install()\n"
             "from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int = 1\n"
             "assert typing.get_type_hints(P.__init__) == {'x': int, 'return': type(None)}, P.__init__.__annotations__\n")
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60,
                   env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})


def test_a_module_file_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(classcache, "MAX_ENTRIES", 3)
    codes = {f"x = {i}\n": compile(f"x = {i}\n", "<string>", "exec", dont_inherit=True) for i in range(5)}
    texts = list(codes)
    monkeypatch.setattr(classcache, "_codes", {"hpcorch.fake": dict(list(codes.items())[:2])})
    monkeypatch.setattr(classcache, "_used", {"hpcorch.fake": set(texts[:2])})
    monkeypatch.setattr(classcache, "_added", {"hpcorch.fake"})
    classcache._save()
    assert set(classcache._load("hpcorch.fake")) == set(texts[:2])
    classcache._codes["hpcorch.fake"] = dict(list(codes.items())[2:])  # another process, other texts
    classcache._used["hpcorch.fake"] = set(texts[2:])
    classcache._save()  # 5 entries with the stored ones: past the bound, only the texts used are kept
    assert set(classcache._load("hpcorch.fake")) == set(texts[2:])
    unwritable = tmp_path / "file"
    unwritable.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(unwritable))
    classcache._save()  # no folder: nothing written, no error

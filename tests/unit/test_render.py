"""Golden scripts for every shipped profile x job, and hostile inputs that must never reach a shell."""
import os
import subprocess

import pytest

from hpcorch.errors import ConfigError, PlanError, RenderError
from hpcorch.plan.plan import make_plan
from hpcorch.render.sbatch import render_sbatch
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import list_profiles, load_profile

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden")
JOBS = ["gpt-tiny", "gpt2-124m", "gpt-1.3b"]
# Which shipped job fits which shipped profile; the rest must fail with a plan error.
SHIPPED = ["local", "devcluster", "h100-ndr", "a100-hdr", "a100-slingshot", "mi250x-slingshot"]
FITS = {("gpt-tiny", p) for p in SHIPPED} | {("gpt2-124m", p) for p in SHIPPED if p != "local"} | {
    ("gpt-1.3b", "h100-ndr")}


def _render(repo, job, profile, **kw):
    plan = make_plan(load_job(repo / "jobs" / f"{job}.yaml", kw.pop("overrides", ())),
                     load_profile(profile), run_dir=f"/scratch/runs/{job}", python="python3")
    return render_sbatch(plan, **kw)


@pytest.mark.parametrize("profile", SHIPPED)
@pytest.mark.parametrize("job", JOBS)
def test_golden(repo, job, profile):
    assert set(list_profiles()) >= {profile}
    if (job, profile) not in FITS:
        with pytest.raises(PlanError):
            _render(repo, job, profile)
        return
    text = _render(repo, job, profile)
    path = os.path.join(GOLDEN, f"{profile}__{job}.sbatch")
    if os.environ.get("HPCORCH_UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read()
    subprocess.run(["bash", "-n"], input=text, text=True, check=True, timeout=30)


def test_user_template_dir_overrides_and_falls_back(repo, tmp_path):
    (tmp_path / "sbatch.sh.j2").write_text(
        '{% extends "base.sh.j2" %}{% block launch %}echo custom {{ job.name|q }}\n{% endblock %}')
    # "base.sh.j2" is not ours: the user's folder can hold their own bases too.
    (tmp_path / "base.sh.j2").write_text("#!/bin/bash\n#SBATCH --job-name={{ job.name|directive }}\n"
                                         "{% block launch %}{% endblock %}")
    text = _render(repo, "gpt-tiny", "devcluster", template_dir=tmp_path)
    assert text == "#!/bin/bash\n#SBATCH --job-name=gpt-tiny\necho gpt-tiny\n".replace("echo", "echo custom")
    # A folder without sbatch.sh.j2 falls back to ours.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _render(repo, "gpt-tiny", "devcluster", template_dir=empty) == _render(repo, "gpt-tiny", "devcluster")


def test_template_that_forgets_to_quote_fails_closed(repo, tmp_path):
    (tmp_path / "sbatch.sh.j2").write_text("#!/bin/bash\necho {{ plan.environment.EVIL }}\n")
    with pytest.raises(RenderError, match="without the \\|q"):
        _render(repo, "gpt-tiny", "devcluster", template_dir=tmp_path,
                overrides=["environment.EVIL=`touch /tmp/pwned`"])


def test_template_undefined_is_an_error(repo, tmp_path):
    (tmp_path / "sbatch.sh.j2").write_text("{{ plan.no_such_thing }}")
    with pytest.raises(RenderError, match="no_such_thing"):
        _render(repo, "gpt-tiny", "devcluster", template_dir=tmp_path)


HOSTILE_VALUES = [
    "$(touch {marker})", "`touch {marker}`", "a'b\"c", "x; touch {marker}", "${{IFS}}touch${{IFS}}{marker}",
    "#SBATCH --uid=0", "--exclusive", "*", "a\\\\b", " leading space",
]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_hostile_environment_values_are_inert(repo, tmp_path, value):
    """Run the rendered script's setup for real (srun replaced by a function) and check that the
    value arrives byte for byte and that nothing ran."""
    marker = tmp_path / "pwned"
    value = value.format(marker=marker)
    # '$' starts a reference that expands when the job runs; '$$' is a literal '$'.
    text = _render(repo, "gpt-tiny", "devcluster",
                   overrides=[f"environment.HOSTILE={value.replace('$', '$$')}"])
    out = tmp_path / "env.out"
    harness = (f"srun() {{ printf '%s' \"$HOSTILE\" > {out}; }}; scontrol() {{ :; }}; module() {{ :; }}\n"
               f"source /dev/stdin")
    subprocess.run(["bash", "-c", harness], input=text, text=True, timeout=30, check=True)
    assert out.read_text() == value
    assert not marker.exists()
    assert not any(line.startswith("#SBATCH") and "uid" in line for line in text.splitlines())


@pytest.mark.parametrize("override, key", [
    ("name=x\n#SBATCH --uid=0", "name"),
    ("name=ok --uid=0", "name"),
    ("resources.partition=batch\n#SBATCH --uid=0", "resources.partition"),
    ("resources.account=a;b", "resources.account"),
    ("resources.qos=q b", "resources.qos"),
    ("resources.constraint=x y", "resources.constraint"),
    ("resources.exclude=n1 --uid=0", "resources.exclude"),
    ("environment.BAD\nNAME=1", "environment.BAD\nNAME"),
    ("environment.X=line1\nline2", "environment.X"),
])
def test_hostile_job_fields_are_rejected(repo, override, key):
    with pytest.raises(ConfigError) as info:
        _render(repo, "gpt-tiny", "devcluster", overrides=[override])
    assert info.value.key == key


@pytest.mark.parametrize("patch", [
    ("  variables:\n    OMP_NUM_THREADS: 1", "  modules: ['cuda; touch /tmp/x']"),
    ("  variables:\n    OMP_NUM_THREADS: 1", "  variables:\n    'X=1 Y': 1"),
    ("name: devcluster", "name: 'dev\\n#SBATCH --uid=0'"),
    ("    max_time: \"1-00:00:00\"\n    default: true",
     "    max_time: \"1-00:00:00 #\"\n    default: true"),
    ("{nodes: \"node[1-2]\", node_type: emu-a}", "{nodes: \"node[1-2] --uid=0\", node_type: emu-a}"),
])
def test_hostile_profile_fields_are_rejected(repo, tmp_path, patch):
    text = (repo / "cluster_profiles/devcluster.yaml").read_text()
    assert patch[0] in text
    path = tmp_path / "evil.yaml"
    path.write_text(text.replace(patch[0], patch[1]))
    with pytest.raises(ConfigError):
        load_profile(path)


def test_compiled_template_cache_is_only_a_cache(repo, tmp_path, monkeypatch):
    """Compiled templates are kept across processes; a damaged entry or a cache folder that
    cannot be made only costs a compile, never a different script or an error."""
    from hpcorch.render import sbatch

    def render_as_a_new_process() -> str:
        # The shipped environment is made once per process (it keeps its compiled templates);
        # a new process starts with none and finds only the on-disk cache.
        sbatch._shipped_environment.cache_clear()
        return _render(repo, "gpt-tiny", "devcluster")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with open(os.path.join(GOLDEN, "devcluster__gpt-tiny.sbatch")) as f:
        golden = f.read()
    assert render_as_a_new_process() == golden
    entries = list((tmp_path / "cache" / "hpcorch").glob("templates-*/*.cache"))
    assert entries, "the first render fills the cache"
    assert render_as_a_new_process() == golden  # from the cache
    for damage in (b"", b"garbage", entries[0].read_bytes()[:40]):
        for entry in entries:
            entry.write_bytes(damage)
        assert render_as_a_new_process() == golden
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # the folder cannot be made
    assert render_as_a_new_process() == golden
    sbatch._shipped_environment.cache_clear()  # the next test's environment uses the real cache

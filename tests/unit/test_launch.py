"""`launch:` (python, wrappers, srun options), extra #SBATCH directives, and environment values
that expand: what each renders, that hostile values are refused or inert, and a real launch
through the `command` wrapper (a stub that records its argv and execs the rest).

No container runtime can be installed here: apptainer, pyxis, uenv and edf are checked by the
script they render and by running that script's srun line through stubs.
"""
import os
import shlex
import subprocess
import sys

import pytest

from hpcorch.errors import ConfigError, PlanError, RenderError
from hpcorch.plan.plan import make_plan
from hpcorch.render.sbatch import render_sbatch
from hpcorch.spec.expand import UnsetVariable, expand_with, prepend_word, shell_word, split_refs
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile
from hpcorch.spec.yamlio import dump_yaml, read_yaml

pytestmark = pytest.mark.timeout(300)
FOLDER = "/scratch/runs/gpt-tiny/submitit/%j"


def _profile(repo, tmp_path, name="devcluster", **extra):
    data = read_yaml(repo / "hpcorch/profiles" / f"{name}.yaml")
    data.update(extra)
    path = tmp_path / f"{name}-x.yaml"
    path.write_text(dump_yaml(data))
    return load_profile(path)


def _job(repo, tmp_path, **extra):
    data = read_yaml(repo / "jobs/gpt-tiny.yaml")
    for key, value in extra.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "job.yaml"
    path.write_text(dump_yaml(data))
    return load_job(path)


def _plan(repo, tmp_path, profile=None, python="python3", job=None, **job_keys):
    profile = profile or _profile(repo, tmp_path)
    return make_plan(job or _job(repo, tmp_path, **job_keys), profile, run_dir="/scratch/runs/gpt-tiny",
                     python=python)


def _script(repo, tmp_path, **kw):
    text = render_sbatch(_plan(repo, tmp_path, **kw))
    subprocess.run(["bash", "-n"], input=text, text=True, check=True, timeout=30)
    return text


def _srun_line(text):
    """The training step's srun line and its command."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if "training step starts" in line) + 1
    return lines[i] + "\n" + lines[i + 1].removesuffix(" \\")


HOST = ("srun --unbuffered --kill-on-bad-exit=1 --output /scratch/runs/gpt-tiny/submitit/%j/%j_%t_log.out "
        "--error /scratch/runs/gpt-tiny/submitit/%j/%j_%t_log.err")


# ----- wrappers: what each renders ------------------------------------------------------------
@pytest.mark.parametrize("wrapper, gpus, srun, prefix", [
    ({"kind": "apptainer", "image": "docker://nvcr.io/nvidia/pytorch:24.05-py3",
      "binds": ["/scratch", "/data:/data:ro"]}, 1, "",
     "apptainer exec --nv --bind /scratch,/data:/data:ro docker://nvcr.io/nvidia/pytorch:24.05-py3 "),
    ({"kind": "apptainer", "image": "/sw/images/torch.sif", "executable": "singularity",
      "options": ["--cleanenv", "--writable-tmpfs"]}, 0, "",
     "singularity exec --cleanenv --writable-tmpfs /sw/images/torch.sif "),
    ({"kind": "apptainer", "image": "/sw/torch.sif", "gpu": "rocm"}, 0, "", "apptainer exec --rocm /sw/torch.sif "),
    ({"kind": "pyxis", "image": "nvcr.io#nvidia/pytorch:24.05-py3", "mounts": ["/scratch:/scratch"],
      "workdir": "/scratch", "options": ["--no-container-mount-home"]}, 1,
     " '--container-image=nvcr.io#nvidia/pytorch:24.05-py3' --container-mounts=/scratch:/scratch "
     "--container-workdir=/scratch --no-container-mount-home", ""),
    ({"kind": "uenv", "image": "prgenv-gnu/24.11:v1", "view": "default"}, 1,
     " --uenv=prgenv-gnu/24.11:v1 --view=default", ""),
    ({"kind": "edf", "environment": "/users/me/.edf/torch.toml"}, 1, " --environment=/users/me/.edf/torch.toml", ""),
    ({"kind": "edf", "environment": "pytorch"}, 1, " --environment=pytorch", ""),
    ({"kind": "command", "argv": ["/usr/bin/numactl", "--interleave=all"]}, 0, "", "/usr/bin/numactl --interleave=all "),
])
def test_wrapper_renders(repo, tmp_path, wrapper, gpus, srun, prefix):
    text = _script(repo, tmp_path, python=None, **{"launch.wrapper": wrapper, "resources.gpus_per_node": gpus,
                                                   "resources.tasks_per_node": gpus or 2})
    # Inside a container the image's python3 runs, not this machine's interpreter.
    python = shlex.quote(sys.executable) if wrapper["kind"] == "command" else "python3"
    step, command = _srun_line(text).split("\n")
    # One node launcher per node (it forks the node's ranks), started through the wrapper.
    assert step.startswith("srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --cpus-per-task=")
    assert step.endswith(f" --unbuffered --kill-on-bad-exit=1{srun} \\")
    assert command == (f"  {prefix}{python} -u -m hpcorch.batch.nodelaunch {FOLDER} --tasks-per-node {gpus or 2} "
                       f"--output {FOLDER}/%j_%t_log.out --error {FOLDER}/%j_%t_log.err")


def test_apptainer_gpu_auto_follows_the_vendor(repo, tmp_path):
    wrapper = {"kind": "apptainer", "image": "/sw/torch.sif"}
    profile = _profile(repo, tmp_path)
    plan = _plan(repo, tmp_path, profile=profile, **{"launch.wrapper": wrapper, "resources.gpus_per_node": 1,
                                                     "resources.tasks_per_node": 1})
    assert plan.launch.prefix == ["apptainer", "exec", "--nv", "/sw/torch.sif"]
    for node_type in profile.node_types.values():
        node_type.gpus.vendor = "amd"
    plan = _plan(repo, tmp_path, profile=profile, **{"launch.wrapper": wrapper, "resources.gpus_per_node": 1,
                                                     "resources.tasks_per_node": 1})
    assert plan.launch.prefix == ["apptainer", "exec", "--rocm", "/sw/torch.sif"]
    plan = _plan(repo, tmp_path, profile=profile, **{"launch.wrapper": wrapper})
    assert plan.launch.prefix == ["apptainer", "exec", "/sw/torch.sif"]  # no GPUs asked for


def test_python_profile_wins_over_sys_executable_and_job_over_profile(repo, tmp_path):
    assert _plan(repo, tmp_path, python=None).python == sys.executable
    profile = _profile(repo, tmp_path, launch={"python": "/sw/venvs/torch/bin/python"})
    assert _plan(repo, tmp_path, profile=profile, python=None).python == "/sw/venvs/torch/bin/python"
    plan = _plan(repo, tmp_path, profile=profile, python=None, **{"launch.python": "/home/me/venv/bin/python3"})
    assert plan.python == "/home/me/venv/bin/python3"
    assert plan.submitit_command.startswith("/home/me/venv/bin/python3 -u -m submitit.core._submit ")
    assert "  /home/me/venv/bin/python3 -u -m hpcorch.batch.nodelaunch " in render_sbatch(plan)
    # A container's interpreter unless launch.python names one (which then wins there too).
    apptainer = {"kind": "apptainer", "image": "/sw/torch.sif"}
    assert _plan(repo, tmp_path, python=None, **{"launch.wrapper": apptainer}).python == "python3"
    plan = _plan(repo, tmp_path, profile=profile, python=None, **{"launch.wrapper": apptainer})
    assert plan.python == "/sw/venvs/torch/bin/python"


def test_job_wrapper_replaces_the_profile_one_and_none_drops_it(repo, tmp_path):
    profile = _profile(repo, tmp_path, launch={"wrapper": {"kind": "uenv", "image": "pytorch/v2.6:v1"},
                                               "srun_options": ["--cpu-bind=cores", "--hint=nomultithread"]})
    plan = _plan(repo, tmp_path, profile=profile)
    assert plan.launch.srun_options == ["--uenv=pytorch/v2.6:v1", "--cpu-bind=cores", "--hint=nomultithread"]
    plan = _plan(repo, tmp_path, profile=profile, **{"launch.wrapper": {"kind": "none"},
                                                     "launch.srun_options": ["--cpu-bind=none", "--gpu-bind=closest"]})
    assert plan.launch.srun_options == ["--cpu-bind=none", "--hint=nomultithread", "--gpu-bind=closest"]
    assert plan.launch.prefix == [] and plan.launch.wrapper == "none"


@pytest.mark.parametrize("wrapper, key", [
    ({"kind": "docker", "image": "x"}, "launch.wrapper.kind"),
    ({"image": "/x.sif"}, "launch.wrapper.kind"),
    ({"kind": "apptainer", "image": "/x.sif", "bind": ["/a"]}, "launch.wrapper.bind"),
    ({"kind": "apptainer", "image": "x.sif"}, "launch.wrapper.image"),
    ({"kind": "apptainer", "image": "/x.sif; id"}, "launch.wrapper.image"),
    ({"kind": "apptainer", "image": "docker://x$(id)"}, "launch.wrapper.image"),
    ({"kind": "apptainer", "image": "/x.sif", "binds": ["/a:/b:rx"]}, "launch.wrapper.binds[0]"),
    ({"kind": "apptainer", "image": "/x.sif", "binds": ["/a,/etc"]}, "launch.wrapper.binds[0]"),
    ({"kind": "apptainer", "image": "/x.sif", "binds": ["relative"]}, "launch.wrapper.binds[0]"),
    ({"kind": "apptainer", "image": "/x.sif", "binds": ["/a b"]}, "launch.wrapper.binds[0]"),
    ({"kind": "apptainer", "image": "/x.sif", "binds": ["/$(id)"]}, "launch.wrapper.binds[0]"),
    ({"kind": "apptainer", "image": "/x.sif", "options": ["--bind=/etc"]}, "launch.wrapper.options[0]"),
    ({"kind": "apptainer", "image": "/x.sif", "options": ["--nv"]}, "launch.wrapper.options[0]"),
    ({"kind": "apptainer", "image": "/x.sif", "options": ["--env=A=`id`"]}, "launch.wrapper.options[0]"),
    ({"kind": "apptainer", "image": "/x.sif", "executable": "/bin/sh"}, "launch.wrapper.executable"),
    ({"kind": "pyxis", "image": "nvcr.io#x y"}, "launch.wrapper.image"),
    ({"kind": "pyxis", "image": "nvcr.io#x", "options": ["--export=ALL"]}, "launch.wrapper.options[0]"),
    ({"kind": "pyxis", "image": "nvcr.io#x", "options": ["--container-image=y"]}, "launch.wrapper.options[0]"),
    ({"kind": "pyxis", "image": "nvcr.io#x", "workdir": "tmp"}, "launch.wrapper.workdir"),
    ({"kind": "uenv", "image": "a b"}, "launch.wrapper.image"),
    ({"kind": "uenv", "image": "a", "view": "v;id"}, "launch.wrapper.view"),
    ({"kind": "edf", "environment": "/x/env.sh"}, "launch.wrapper.environment"),
    ({"kind": "edf", "environment": "--help"}, "launch.wrapper.environment"),
    ({"kind": "command", "argv": []}, "launch.wrapper.argv"),
    ({"kind": "command", "argv": ["--x"]}, "launch.wrapper.argv[0]"),
    ({"kind": "command", "argv": ["/bin/env", "$(id)"]}, "launch.wrapper.argv[1]"),
    ({"kind": "command", "argv": ["/bin/env", "${X:-y}"]}, "launch.wrapper.argv[1]"),
])
def test_hostile_wrappers_are_refused(repo, tmp_path, wrapper, key):
    with pytest.raises(ConfigError) as info:
        _job(repo, tmp_path, **{"launch.wrapper": wrapper})
    assert info.value.key == key
    assert "\n" not in str(info.value)


def test_wrapper_paths_expand_in_srun_options_and_words(repo, tmp_path):
    pyxis = {"kind": "pyxis", "image": "/scratch/$USER/torch.sqsh", "mounts": ["/scratch/$USER:/scratch"]}
    text = _script(repo, tmp_path, **{"launch.wrapper": pyxis})
    assert '"--container-image=/scratch/${USER}/torch.sqsh" "--container-mounts=/scratch/${USER}:/scratch"' in text
    out = tmp_path / "srun.args"
    harness = f"srun() {{ printf '%s\\n' \"$@\" > {out}; }}; scontrol() {{ :; }}; module() {{ :; }}\nsource /dev/stdin"
    subprocess.run(["bash", "-c", harness], input=text, text=True, timeout=30, check=True,
                   env={"PATH": os.environ["PATH"], "USER": "alice"})
    args = out.read_text().splitlines()
    assert "--container-image=/scratch/alice/torch.sqsh" in args and "--container-mounts=/scratch/alice:/scratch" in args
    apptainer = {"kind": "apptainer", "image": "${HOME}/img.sif", "binds": ["$SCRATCH:/scratch:ro"]}
    assert ' apptainer exec --bind "${SCRATCH}:/scratch:ro" "${HOME}/img.sif" python3 ' in \
        _script(repo, tmp_path, python=None, **{"launch.wrapper": apptainer})


@pytest.mark.parametrize("python", ["python-x", "./venv/bin/python", "/a b/python", "/x;id", "/x$(id)", "/x\n"])
def test_python_must_be_an_absolute_plain_path_or_a_python_name(repo, tmp_path, python):
    """A bare python3 / python3.11 is looked up on PATH where the ranks run (the image's)."""
    with pytest.raises(ConfigError) as info:
        _job(repo, tmp_path, **{"launch.python": python})
    assert info.value.key == "launch.python"


# ----- srun options ---------------------------------------------------------------------------
def test_srun_options_render_quoted_after_hpcorchs(repo, tmp_path):
    text = _script(repo, tmp_path, **{"launch.srun_options": ["--gpu-bind=closest", "--cpu-bind=map_cpu:0,1",
                                                              "--distribution=*:block", "--hint=nomultithread"]})
    assert _srun_line(text).startswith(f"{HOST} --gpu-bind=closest --cpu-bind=map_cpu:0,1 '--distribution=*:block' "
                                       "--hint=nomultithread \\\n")


@pytest.mark.parametrize("option, says", [
    ("--output=/tmp/x", "written by hpcorch itself"),
    ("--ntasks=8", "resources.tasks_per_node"),
    ("--ntasks-per-node=8", "resources.tasks_per_node"),
    ("--nodes=2", "resources.nodes"),
    ("--kill-on-bad-exit=0", "written by hpcorch itself"),
    ("--unbuf", "an abbreviation of --unbuffered"),
    ("--nt=8", "an abbreviation of --ntasks"),
    ("--container-image=x", "launch.wrapper (kind: pyxis)"),
    ("--export=ALL", "environment"),
    ("-N2", "expected --name"),
    ("--cpu-bind=cores;id", "expected --name"),
    ("--cpu-bind=$(id)", "expected --name"),
    ("--cpu-bind=cores --pty", "expected --name"),
    ("--gpu-bind='x'", "expected --name"),
])
def test_srun_options_refused(repo, tmp_path, option, says):
    with pytest.raises(ConfigError) as info:
        _job(repo, tmp_path, **{"launch.srun_options": [option]})
    assert info.value.key == "launch.srun_options[0]" and says in info.value.message


# ----- extra directives -----------------------------------------------------------------------
def test_extra_directives_profile_partition_job_in_order(repo, tmp_path):
    data = read_yaml(repo / "hpcorch/profiles/devcluster.yaml")
    data["partitions"][0]["extra_directives"] = ["--reservation=part", "--mail-type=END"]
    profile = _profile(repo, tmp_path, extra_directives=["--reservation=site", "--licenses=scratch:1",
                                                         "--comment=x&y|z"], partitions=data["partitions"])
    text = _script(repo, tmp_path, profile=profile,
                   **{"resources.partition": data["partitions"][0]["name"],
                      "resources.extra_directives": ["--mail-type=ALL", "--dependency=afterok:12"]})
    lines = text.splitlines()
    own = lines.index(next(line for line in lines if line.startswith("#SBATCH --error=")))
    assert lines[own + 1:own + 6] == ["#SBATCH --reservation=part", "#SBATCH --licenses=scratch:1",
                                      "#SBATCH --comment=x&y|z", "#SBATCH --mail-type=ALL",
                                      "#SBATCH --dependency=afterok:12"]
    assert lines[own + 6] == ""


@pytest.mark.parametrize("option, says", [
    ("--partition=other", "resources.partition"),
    ("--part=other", "an abbreviation of --partition"),
    ("--time=1", "resources.time"),
    ("--gres=gpu:2", "resources.gpus_per_node"),
    ("--mem=0", "resources.mem"),
    ("--exclusive", "resources.exclusive"),
    ("--requeue", "requeue.enabled"),
    ("--signal=B:USR1@60", "requeue.signal"),
    ("--output=/tmp/x", "run directory"),
    ("--switches=1", "placement.switches"),
    ("--uid=0", "submitting user"),
    ("--reservation=a b", "expected --name"),
    ("--reservation=a\n#SBATCH --uid=0", "single line"),
    ("--comment=#SBATCH", "expected --name"),
    ("--comment=\"x\"", "expected --name"),
    ("--comment=$(id)", "expected --name"),
    ("#SBATCH --uid=0", "expected --name"),
    ("reservation=x", "expected --name"),
    ("--Reservation=x", "expected --name"),
])
def test_extra_directives_refused(repo, tmp_path, option, says):
    with pytest.raises(ConfigError) as info:
        _job(repo, tmp_path, **{"resources.extra_directives": [option]})
    assert info.value.key == "resources.extra_directives[0]" and says in info.value.message
    with pytest.raises(ConfigError) as info:
        _profile(repo, tmp_path, extra_directives=[option])
    assert info.value.key == "extra_directives[0]"


# ----- environment values that expand ---------------------------------------------------------
def _run_setup(text, tmp_path, names, env=None):
    """Run the rendered script for real with srun/module/scontrol as shell functions; return
    each name's value as the rank step would see it."""
    out = tmp_path / "env.out"
    show = "; ".join(f"printf '%s\\0' \"${name}\"" for name in names)
    harness = (f"srun() {{ {{ {show}; }} > {out}; }}; scontrol() {{ :; }}; module() {{ :; }}\n"
               "source /dev/stdin")
    subprocess.run(["bash", "-c", harness], input=text, text=True, timeout=30, check=True,
                   env={"PATH": os.environ["PATH"], "USER": "alice", "SLURM_JOB_ID": "4242", **(env or {})})
    return out.read_text().split("\0")[:-1]


def test_environment_values_expand_at_run_time(repo, tmp_path):
    profile = _profile(repo, tmp_path, environment={
        "variables": {"CACHE": "/scratch/$USER/cache", "LITERAL": "cost: $$5 `not run` \"q\" 'q' \\"},
        "prepend": {"PATH": ["/opt/tool/bin", "$HOME/bin"], "LD_LIBRARY_PATH": ["/opt/tool/lib"]}})
    text = _script(repo, tmp_path, profile=profile, **{"environment": {"JOBDIR": "${SLURM_JOB_ID}-${USER}x"}})
    assert 'export CACHE="/scratch/${USER}/cache"' in text
    assert 'export PATH="/opt/tool/bin:${HOME}/bin${PATH:+:$PATH}"' in text
    assert "export LITERAL='cost: $5 `not run` \"q\" '\"'\"'q'\"'\"' \\'" in text
    got = _run_setup(text, tmp_path, ["CACHE", "JOBDIR", "LITERAL", "PATH", "LD_LIBRARY_PATH"], {"HOME": "/h"})
    assert got[:3] == ["/scratch/alice/cache", "4242-alicex", "cost: $5 `not run` \"q\" 'q' \\"]
    assert got[3] == f"/opt/tool/bin:/h/bin:{os.environ['PATH']}"
    assert got[4] == "/opt/tool/lib"  # unset before: no empty entry (which would mean '.')


EXPANDING_HOSTILE = ["$USER\"; touch {marker}; \"", "${{USER}}`touch {marker}`", "$USER'$(touch {marker})'",
                     "$USER\\\"$(touch {marker})", "$USER\n#SBATCH --uid=0", "$USER;touch {marker}",
                     "$USER #SBATCH --uid=0"]


@pytest.mark.parametrize("value", EXPANDING_HOSTILE)
def test_hostile_expanding_values_are_inert_or_refused(repo, tmp_path, value):
    marker = tmp_path / "pwned"
    value = value.format(marker=marker)
    try:
        text = _script(repo, tmp_path, **{"environment": {"HOSTILE": value}})
    except ConfigError as exc:
        assert ("\n" in value or "$(" in value) and exc.key == "environment.HOSTILE"
        return
    got = _run_setup(text, tmp_path, ["HOSTILE"])
    assert got == [value.replace("${USER}", "alice").replace("$USER", "alice")]
    assert not marker.exists()
    assert [line for line in text.splitlines() if line.startswith("#SBATCH") and "uid" in line] == []


@pytest.mark.parametrize("value", ["$(id)", "${USER:-root}", "${USER/a/b}", "${#USER}", "$1", "$@", "$?",
                                   "${!x}", "a$", "$((1+1))", "${USER", "${}", "$ x", "\x1b[31m"])
def test_other_expansions_are_refused_with_one_line(repo, tmp_path, value):
    with pytest.raises(ConfigError) as info:
        _job(repo, tmp_path, **{"environment": {"X": value}})
    assert info.value.key == "environment.X" and "\n" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        _profile(repo, tmp_path, environment={"variables": {"X": value}})
    assert info.value.key == "environment.variables.X"


@pytest.mark.parametrize("prepend, key", [
    ({"PYTHONPATH": ["/x"]}, "environment.prepend.PYTHONPATH"),
    ({"LD_PRELOAD": ["/x"]}, "environment.prepend.LD_PRELOAD"),
    ({"SLURM_CONF": ["/x"]}, "environment.prepend.SLURM_CONF"),
    ({"PATH": []}, "environment.prepend.PATH"),
    ({"PATH": ["bin"]}, "environment.prepend.PATH[0]"),
    ({"PATH": ["/a:/b"]}, "environment.prepend.PATH[0]"),
    ({"PATH": ["/a$(id)"]}, "environment.prepend.PATH[0]"),
    ({"PATH": ["/a\n/b"]}, "environment.prepend.PATH[0]"),
    ({"BAD NAME": ["/a"]}, "environment.prepend.BAD NAME"),
])
def test_hostile_prepend_refused(repo, tmp_path, prepend, key):
    with pytest.raises(ConfigError) as info:
        _profile(repo, tmp_path, environment={"prepend": prepend})
    assert info.value.key == key


def test_prepend_quotes_what_it_does_not_expand(repo, tmp_path):
    profile = _profile(repo, tmp_path, environment={"prepend": {"PATH": ["/opt/a b/\"`$$x`\"/bin"]}})
    text = _script(repo, tmp_path, profile=profile)
    assert 'export PATH="/opt/a b/\\"\\`\\$x\\`\\"/bin${PATH:+:$PATH}"' in text
    assert _run_setup(text, tmp_path, ["PATH"])[0].startswith('/opt/a b/"`$x`"/bin:')


def test_expansion_helpers():
    assert split_refs("a$B${C}$$d") == [("a", False), ("B", True), ("C", True), ("$d", False)]
    assert shell_word("plain,value") == "plain,value"  # unchanged from |q: goldens stay
    assert shell_word("a b$$") == "'a b$'"
    assert shell_word('$A"b') == '"${A}\\"b"'
    assert prepend_word("PATH", ["/x"]) == '"/x${PATH:+:$PATH}"'
    assert expand_with("/s/$USER/${N}$$", {"USER": "u", "N": ""}) == "/s/u/$"
    # Unset: refused as the script's `set -u` refuses it, not expanded to nothing.
    with pytest.raises(UnsetVariable, match=r"names \$N, which is unset"):
        expand_with("/s/$USER/${N}", {"USER": "u"})


def test_expand_filter_placement_is_checked(repo, tmp_path):
    """|expand has |q's rule: never inside quotes or a here-document, where its own quotes stop
    protecting it."""
    for body in ('echo "{{ plan.environment.X|expand }}"', "echo '{{ plan.environment.X|expand }}'",
                 "cat <<EOF\n{{ plan.environment.X|expand }}\nEOF", "echo ${{ plan.environment.X|expand }}"):
        folder = tmp_path / str(abs(hash(body)))
        folder.mkdir()
        (folder / "sbatch.sh.j2").write_text("#!/bin/bash\n" + body + "\n")
        plan = _plan(repo, tmp_path, **{"environment": {"X": "$USER"}})
        with pytest.raises(RenderError):
            render_sbatch(plan, template_dir=folder)
    (tmp_path / "sbatch.sh.j2").write_text("#!/bin/bash\necho {{ plan.environment.X|expand }} "
                                           "{{ plan.prepend.get('P', ['/x'])|prepend('P') }}\n")
    assert render_sbatch(_plan(repo, tmp_path, **{"environment": {"X": "$USER"}}), template_dir=tmp_path) == \
        '#!/bin/bash\necho "${USER}" "/x${P:+:$P}"\n'


# ----- the local profile ----------------------------------------------------------------------
def test_local_profile_refuses_srun_only_wrappers_and_ignores_srun_options(repo, tmp_path):
    local = load_profile("local")
    with pytest.raises(PlanError, match="without srun"):
        _plan(repo, tmp_path, profile=local, **{"launch.wrapper": {"kind": "pyxis", "image": "nvcr.io#x"}})
    plan = _plan(repo, tmp_path, profile=local, **{"launch.srun_options": ["--cpu-bind=cores"]})
    assert any("srun_options are ignored" in w for w in plan.warnings)


# ----- running the composition ----------------------------------------------------------------
STUB = """#!/bin/bash
# A wrapper stub: record the argv it was given (a NUL-separated file per call: ranks run it
# at the same time), then run what follows its own arguments' closing '--'.
printf '%s\\0' "$0" "$@" > "{record}.$(date +%s%N).$$"
while [[ $# -gt 0 && $1 != -- ]]; do shift; done
shift
exec "$@"
"""


def _stub(tmp_path, name, record):
    path = tmp_path / name
    path.write_text(STUB.format(record=record))
    path.chmod(0o755)
    return path


def _records(path):
    """Every recorded argv, oldest first."""
    files = sorted(path.parent.glob(path.name + ".*"), key=lambda f: int(f.name.split(".")[-2]))
    return [f.read_text().split("\0")[:-1] for f in files]


def test_script_launch_line_runs_wrapper_then_python(repo, tmp_path):
    """The rendered srun line, run with srun as a function that drops its own options: the
    wrapper stub gets its argv (with $USER expanded, odd characters intact) and execs a python stub."""
    record = tmp_path / "argv.rec"
    wrapper, python = _stub(tmp_path, "wrap", record), _stub(tmp_path, "python", record)
    # The python stub only records (what it would run is not here).
    python.write_text(STUB.format(record=record).split("\nwhile")[0] + "\n")
    argv = [str(wrapper), "--tag=$USER", "a b", "'q'", "$$HOME", "`id`;", "--"]
    plan = _plan(repo, tmp_path, python=str(python),
                 **{"launch.wrapper": {"kind": "command", "argv": argv},
                    "launch.srun_options": ["--cpu-bind=cores"]})
    text = render_sbatch(plan)
    harness = ('srun() { while [[ $# -gt 0 && $1 == --* ]]; do case $1 in --output|--error) shift;; esac; '
               'shift; done; "$@"; }; scontrol() { :; }; module() { :; }\nsource /dev/stdin')
    subprocess.run(["bash", "-c", harness], input=text, text=True, timeout=30, check=True,
                   env={"PATH": os.environ["PATH"], "USER": "alice", "HOME": "/h"})
    wrapped = [str(wrapper), "--tag=alice", "a b", "'q'", "$HOME", "`id`;", "--"]
    preflight = [str(python), "-u", "-m", *plan.preflight_args]  # the same wrapper runs the pre-flight
    train = [str(python), "-u", "-m", "submitit.core._submit", FOLDER]
    assert _records(record) == [wrapped + preflight, preflight, wrapped + train, train]


@pytest.mark.slow
def test_local_submit_through_a_command_wrapper(repo, tmp_path):
    """A real job through submitit's local controller: every rank starts through the stub
    wrapper (which records its argv and execs the rest), and the run completes."""
    record = tmp_path / "argv.rec"
    wrapper = _stub(tmp_path, "wrap", record)
    job = tmp_path / "job.yaml"
    data = read_yaml(repo / "jobs/gpt-tiny.yaml")
    data["launch"] = {"wrapper": {"kind": "command", "argv": [str(wrapper), "--run-as=$USER",
                                                                   "--cache=${HPCORCH_TEST_CACHE}", "--"]}}
    data["environment"] = {"HPCORCH_TEST_CACHE": "/tmp/$USER/cache"}
    job.write_text(dump_yaml(data))
    from trainhelp import TINY

    sets = [a for s in TINY + ["trainer.steps=4", "trainer.checkpoint.interval=4"] for a in ("--set", s)]
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "hpcorch.cli.main", "submit", str(job), "-p", "local",
                          "--run-dir", str(run), *sets], cwd=repo, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "HPCORCH_HOME": str(tmp_path / "home"), "USER": "alice"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hpcorch: done at step 4" in out.stdout
    folder = str(run / "submitit" / "%j")
    assert _records(record) == [[str(wrapper), "--run-as=alice", "--cache=/tmp/alice/cache", "--", sys.executable, "-u", "-m",
                                 "submitit.core._submit", folder]] * 2

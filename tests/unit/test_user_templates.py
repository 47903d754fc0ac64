"""User templates that extend ours, and user templates that try to break the render's rules."""
import subprocess

import pytest
from conftest import run_cli

from hpcorch.errors import RenderError
from hpcorch.plan.plan import make_plan
from hpcorch.render.sbatch import render_sbatch
from hpcorch.render.shell import _MARKERS
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile


def _render(repo, tmp_path, source=None, run_dir="/scratch/runs/gpt-tiny", **extra):
    """Render gpt-tiny on devcluster with ``source`` as the user's sbatch.sh.j2 (or ours)."""
    if source is not None:
        (tmp_path / "sbatch.sh.j2").write_text(source)
    plan = make_plan(load_job(repo / "jobs" / "gpt-tiny.yaml"), load_profile("devcluster"),
                     run_dir=run_dir, python="python3")
    return render_sbatch(plan, template_dir=tmp_path, **extra)


def _refused(repo, tmp_path, source, match, **extra):
    with pytest.raises(RenderError, match=match) as info:
        _render(repo, tmp_path, source, **extra)
    assert "\n" not in str(info.value)
    return str(info.value)


OURS_HEADER_PLUS = ("{% block header %}\n{{ super() }}#SBATCH --reservation=x\n{% endblock %}\n")


@pytest.mark.parametrize("base", ["sbatch.sh.j2", "hpcorch/sbatch.sh.j2"])
def test_extending_ours_replaces_one_block(repo, tmp_path, base):
    """Both spellings reach the shipped template; the self-named one must not load itself."""
    ours = _render(repo, tmp_path)
    text = _render(repo, tmp_path, f"{{% extends '{base}' %}}\n" + OURS_HEADER_PLUS)
    error_line = next(line for line in ours.splitlines() if line.startswith("#SBATCH --error="))
    assert text == ours.replace(error_line + "\n", error_line + "\n#SBATCH --reservation=x\n")
    subprocess.run(["bash", "-n"], input=text, text=True, check=True, timeout=30)


def test_replacing_the_launch_block(repo, tmp_path):
    text = _render(repo, tmp_path, "{% extends 'sbatch.sh.j2' %}\n"
                                   "{% block launch %}\nsrun hostname {{ job.name|q }}\n{% endblock %}\n")
    assert text.endswith("export HPCORCH_RUN_DIR=/scratch/runs/gpt-tiny\nsrun hostname gpt-tiny\n")
    assert "#SBATCH --job-name=gpt-tiny\n" in text and not any(m in text for m in _MARKERS)


def test_a_user_folder_cannot_shadow_the_prefix(repo, tmp_path):
    (tmp_path / "hpcorch").mkdir()
    (tmp_path / "hpcorch" / "sbatch.sh.j2").write_text("#!/bin/bash\necho shadow\n")
    ours = _render(repo, tmp_path)
    assert _render(repo, tmp_path, "{% extends 'hpcorch/sbatch.sh.j2' %}") == ours
    assert "shadow" not in ours


@pytest.mark.parametrize("where", ["/nonexistent-template-dir", "FILE"])
def test_a_missing_template_dir_is_one_error_line(repo, tmp_path, where):
    if where == "FILE":
        where = tmp_path / "a-file"
        where.write_text("")
    result = run_cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--dry-run", "--template-dir", where)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    what = "does not exist" if "nonexistent" in str(where) else "is not a folder"
    assert lines == [f"error: template folder {str(where)!r} {what}"]


@pytest.mark.parametrize("source, match", [
    ("{{ ''.__class__.__mro__ }}", "not allowed to do that: access to attribute '__class__'"),
    ("{{ run.create() }}", "attribute 'create' of 'RunDir' object is unsafe"),
    ("{{ run.batch_log('out').write_text('x') }}", "attribute 'write_text' of 'PosixPath' object is unsafe"),
    ("{{ plan.modules.append('x') }}", "attribute 'append' of 'list' object is unsafe"),
    ("{{ plan.environment.clear() }}", "attribute 'clear' of 'dict' object is unsafe"),
])
def test_the_sandbox_refuses_python(repo, tmp_path, source, match):
    run_dir = tmp_path / "run"
    _refused(repo, tmp_path, source, match, run_dir=run_dir)
    assert not run_dir.exists() and not (tmp_path / "logs").exists()


def test_what_our_template_calls_still_works_in_the_sandbox(repo, tmp_path):
    text = _render(repo, tmp_path, "{% for k, v in plan.environment.items() %}{{ k }} {% endfor %}"
                                   "{{ run.batch_log('out') }} {{ run.rank_log_pattern('err') }} "
                                   "{% for x in [1, 2] %}{{ loop.cycle('a', 'b') }}{% endfor %}\n")
    assert "/scratch/runs/gpt-tiny/logs/%j.out /scratch/runs/gpt-tiny/submitit/%j/%j_%t_log.err ab" in text


@pytest.mark.parametrize("source", ["echo {{ evil }}\n", "#SBATCH --comment={{ evil|directive }}\n",
                                    "echo {{ evil|upper }}\n"])
def test_a_trailing_newline_is_refused(repo, tmp_path, source):
    """``^...$`` would let 'abc\\n' through: the value must match as a whole."""
    message = _refused(repo, tmp_path, source, "refusing to write|without the", evil="abc\n")
    assert "'abc\\n'" in message or "'ABC\\n'" in message


def test_a_directive_value_on_a_command_line_is_refused(repo, tmp_path):
    source = "#SBATCH --constraint={{ c|directive }}\n# note: {{ c|directive }}\nsrun -C {{ c|directive }} true\n"
    message = _refused(repo, tmp_path, source, "only stand on an #SBATCH or comment line", c="h100&ndr")
    assert message.startswith("line 3: ") and message.endswith("'srun -C h100&ndr true'")


@pytest.mark.parametrize("source", [
    "srun true \\\n  #{{ c|directive }}\n",  # same line as srun once the backslash-newline joins them
    "srun true\\\n#{{ c|directive }}\n",       # glued to 'true': not a comment at all
    "echo \"\n# {{ c|directive }}\"\n",          # a line starting with '#' inside a string
    "echo ok # {{ c|directive }}\n",             # a trailing comment is not a comment line
])
def test_a_directive_value_only_on_real_comment_lines(repo, tmp_path, source):
    if source.startswith("srun true \\"):
        assert "h100" in _render(repo, tmp_path, source, c="h100&ndr")  # bash reads a comment there
        return
    _refused(repo, tmp_path, source, "only stand on an #SBATCH or comment line", c="h100&ndr")


@pytest.mark.parametrize("source, where", [
    ("echo \"{{ x|q }}\"\n", "double quotes"),
    ("echo \"run: {{ x|q }}\"\n", "double quotes"),
    ("bash -c 'echo {{ x|q }}'\n", "single quotes"),
    ("echo $'a {{ x|q }}'\n", "\\$'...' quotes"),
    ("echo \"multi\nline {{ x|q }}\"\n", "double quotes"),
    ("cat <<EOF\n{{ x|q }}\nEOF\n", "here-document body"),
    ("cat <<-'END' >f\n\t{{ x|q }}\n\tEND\n", "here-document body"),
    ("echo \\{{ x|q }}\n", "follows '\\\\\\\\'"),
    ("echo ${{ x|q }}\n", "follows '\\$'"),
])
def test_a_quoted_value_inside_quotes_is_refused(repo, tmp_path, source, where):
    _refused(repo, tmp_path, source, where, x="$(touch /tmp/pwned)")


@pytest.mark.parametrize("source", [
    "echo {{ x|q }}\n", "export X={{ x|q }}\n", "echo a{{ x|q }}b {{ x|q }}\n", "echo 'it''s' {{ x|q }}\n",
    "echo \"a\\\"b\" {{ x|q }}\n", "cat <<EOF\nplain $HOME\nEOF\necho {{ x|q }}\n", "cat <<< {{ x|q }}\n",
    "echo $(cat {{ x|q }}) # {{ x|q }}\n", "echo \"#\" {{ x|q }}\n",
])
def test_a_quoted_value_as_an_unquoted_word_is_accepted(repo, tmp_path, source):
    marker = tmp_path / "pwned"
    value = f"$(touch {marker}) ' \" `x` \\"
    text = _render(repo, tmp_path, source, x=value)
    assert not any(m in text for m in _MARKERS)
    subprocess.run(["bash", "-n"], input=text, text=True, check=True, timeout=30)
    if source == "echo {{ x|q }}\n":
        out = subprocess.run(["bash"], input=text, text=True, capture_output=True, check=True, timeout=30).stdout
        assert out == value + "\n" and not marker.exists()


def test_marker_characters_in_a_template_or_value_are_refused(repo, tmp_path):
    _refused(repo, tmp_path, "echo \ue001 {{ x|q }}\n", "private marker characters", x="a")
    _refused(repo, tmp_path, "echo {{ x|q }}\n", "already filtered", x="a\ue000")
    _refused(repo, tmp_path, "echo {{ x|q|q }}\n", "already filtered", x="a")


def test_a_syntax_error_is_one_line_naming_the_line(repo, tmp_path):
    _refused(repo, tmp_path, "{% extends 'hpcorch/sbatch.sh.j2' %}\n{% block x %}\n{{ oops(\n",
             r"template sbatch.sh.j2, line 3: unexpected 'end of template'")


def test_templates_extending_each_other_in_a_cycle_are_one_error(repo, tmp_path):
    (tmp_path / "base.sh.j2").write_text("{% extends 'sbatch.sh.j2' %}\n")
    _refused(repo, tmp_path, "{% extends 'base.sh.j2' %}\n", "extend or include each other in a cycle")


@pytest.mark.parametrize("source, match", [
    ("{{ 1/0 }}\n", "ZeroDivisionError"),
    ("{{ [1][5] }}\n", "list object has no element 5"),
    ("{{ 'a' + 1 }}\n", "TypeError"),
])
def test_a_template_that_raises_is_one_error(repo, tmp_path, source, match):
    _refused(repo, tmp_path, source, match)

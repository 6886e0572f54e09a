"""ran / skipped / restored comes from DVC's records (``dvc status --json``, the run-cache,
``dvc.lock``), not from DVC's printed sentences: a real tiny DVC repo proves each case, including
a restore from the run-cache, and that the printed words play no part."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from visionops.orchestrate import dvc_state
from visionops.orchestrate import stages as orchestrate

pytestmark = [pytest.mark.unit, pytest.mark.slow]

PY = sys.executable
# A stage that prints DVC's own sentences, to prove they no longer decide anything.
LIAR = "print('Stage x is cached - skipping run, checking out outputs')"
DVC_YAML = {
    "stages": {
        "echo": {
            "cmd": f"{PY} -c \"import yaml; v = yaml.safe_load(open('params.yaml'))['a']['value'];"
            f" open('out.txt', 'w').write(str(v)); {LIAR}\"",
            "params": ["a.value"],
            "outs": ["out.txt"],
        },
    }
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text("a:\n  value: 1\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    env = orchestrate.subprocess_env()
    dvc = orchestrate.dvc_executable()
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True, env=env)
    return tmp_path


def _set(repo: Path, value: int) -> None:
    (repo / "params.yaml").write_text(f"a:\n  value: {value}\n")


def test_ran_skipped_restored_forced(repo: Path) -> None:
    assert orchestrate.run_stage(repo, "echo").status == "ran"
    assert orchestrate.run_stage(repo, "echo").status == "skipped"
    _set(repo, 2)
    assert orchestrate.run_stage(repo, "echo").status == "ran"
    _set(repo, 1)  # these inputs ran before: DVC checks the outputs out of its run-cache
    result = orchestrate.run_stage(repo, "echo")
    assert result.status == "restored", result
    assert (repo / "out.txt").read_text() == "1"
    assert orchestrate.run_stage(repo, "echo", force=True).status == "ran"


def test_status_json_reads_dvc_data(repo: Path) -> None:
    query = orchestrate._dvc_query(repo, "echo")
    assert dvc_state.stage_changed(dvc_state.status_json(query, "echo"), "echo")
    orchestrate.run_stage(repo, "echo")
    assert dvc_state.status_json(query, "echo") == {}
    assert dvc_state.lock_entry(repo, "echo")["params"]["params.yaml"] == {"a.value": 1}


LOCK_1 = {"cmd": "c", "deps": [{"path": "d", "md5": "1"}], "outs": [{"path": "o", "md5": "a"}]}
LOCK_2 = {"cmd": "c", "deps": [{"path": "d", "md5": "2"}], "outs": [{"path": "o", "md5": "b"}]}


def _entry(lock: dict) -> str:
    key = dvc_state.run_cache_key(lock)
    return f"{key[:2]}/{key}/value"


@pytest.mark.parametrize(
    ("changed", "forced", "before", "after", "lock_after", "expected"),
    [
        (False, False, set(), set(), LOCK_1, "skipped"),
        (True, True, set(), set(), LOCK_2, "ran"),
        (False, True, set(), set(), LOCK_1, "ran"),
        (True, False, set(), {"x/y/z"}, LOCK_2, "ran"),  # a new run-cache entry: it ran
        (True, False, {"x/y/z"}, {"x/y/z"}, LOCK_2, "ran"),  # no entry for LOCK_2's key
        (True, False, {"x/y/z", "LOCK_2"}, {"x/y/z", "LOCK_2"}, LOCK_2, "restored"),
        (True, False, {"LOCK_1"}, {"LOCK_1"}, LOCK_1, "ran"),  # lock unchanged: no restore
    ],
)
def test_classify_table(changed, forced, before, after, lock_after, expected) -> None:
    def real(names: set[str]) -> set[str]:
        named = {"LOCK_1": _entry(LOCK_1), "LOCK_2": _entry(LOCK_2)}
        return {named.get(n, n) for n in names}

    got = dvc_state.classify(changed, forced, real(before), real(after), LOCK_1, lock_after)
    assert got == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", {}),
        ('{"train": [{"changed deps": {"x": "n"}}]}', {"train": [{"changed deps": {"x": "n"}}]}),
        ('Update available!\n{"a": []}', {"a": []}),
    ],
)  # fmt: skip
def test_parse_status_json(text: str, expected: dict) -> None:
    assert dvc_state.parse_status_json(text) == expected


def test_parse_status_json_without_json_is_one_line_error() -> None:
    from visionops.errors import VisionOpsError

    with pytest.raises(VisionOpsError, match="printed no JSON"):
        dvc_state.parse_status_json("ERROR: something")

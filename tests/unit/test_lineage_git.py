"""Lineage in git: what counts as dirty, the flow's lineage commit, and what `reproduce` refuses.

Real git repositories and a real MLflow SQLite registry in tmp (model versions created with the
client, no training); nothing is mocked. The full rebuild of a trained version is in
``tests/e2e/test_dvc_repro.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from visionops.config import load_config
from visionops.errors import VisionOpsError
from visionops.orchestrate.commit_lineage import commit_lineage
from visionops.orchestrate.reproduce import check_commit, parse_out_hashes, reproduce
from visionops.tracking import git_commit, git_state, lineage_tags

pytestmark = pytest.mark.unit

OLD_MD5, NEW_MD5 = "0" * 32 + ".dir", "1" * 32 + ".dir"


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def write_dvc_file(root: Path, md5: str) -> None:
    outs = [{"md5": md5, "size": 1, "nfiles": 1, "hash": "md5", "path": "data"}]
    (root / "data.dvc").write_text(yaml.safe_dump({"outs": outs}, sort_keys=False))


def make_repo(root: Path) -> Path:
    """A committed project: params.yaml, data.dvc, dvc.lock and a source file."""
    root.mkdir(parents=True)
    (root / "params.yaml").write_text("base:\n  seed: 1\n")
    write_dvc_file(root, OLD_MD5)
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (root / "code.py").write_text("x = 1\n")
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "test")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    return root


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "proj")


# --- git_state / git_commit / lineage_tags ------------------------------------------------


def test_clean_tree_and_not_a_repo(repo: Path, tmp_path: Path) -> None:
    sha, dirty = git_state(repo)
    assert sha == git(repo, "rev-parse", "HEAD") and dirty == []
    assert git_commit(repo) == sha
    (tmp_path / "plain").mkdir()
    assert git_state(tmp_path / "plain") == ("unknown", [])
    assert git_commit(tmp_path / "plain") == "unknown"


def test_dvc_lock_and_untracked_files_are_not_dirty(repo: Path) -> None:
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {split: {}}\n")  # mid-run rewrite
    (repo / "new_untracked.txt").write_text("x")
    sha, dirty = git_state(repo)
    assert dirty == [] and git_commit(repo) == sha


def test_modified_staged_and_renamed_files_are_listed(repo: Path) -> None:
    write_dvc_file(repo, NEW_MD5)
    (repo / "params.yaml").write_text("base:\n  seed: 2\n")
    git(repo, "add", "params.yaml")  # staged counts too
    git(repo, "mv", "code.py", "renamed.py")
    sha, dirty = git_state(repo)
    assert sorted(dirty) == ["code.py", "data.dvc", "params.yaml", "renamed.py"]
    assert git_commit(repo) == f"{sha}-dirty"


def test_project_in_a_subfolder_ignores_only_its_own_dvc_lock(tmp_path: Path) -> None:
    top = make_repo(tmp_path / "mono")
    sub = top / "vision"
    sub.mkdir()
    (sub / "dvc.lock").write_text("a\n")
    git(top, "add", "-A")
    git(top, "commit", "-qm", "sub")
    (sub / "dvc.lock").write_text("b\n")
    (top / "dvc.lock").write_text("c\n")  # another project's lock: an input here
    assert git_state(sub)[1] == ["dvc.lock"]


def test_lineage_tags_name_the_dirty_paths(repo: Path) -> None:
    config = load_config(repo / "params.yaml")
    assert lineage_tags(config)["git_dirty"] == ""
    (repo / "code.py").write_text("x = 2\n")
    write_dvc_file(repo, NEW_MD5)
    tags = lineage_tags(config)
    assert tags["git_commit"].endswith("-dirty") and tags["git_dirty"] == "code.py,data.dvc"
    assert tags["data_version"] == NEW_MD5


def test_git_dirty_is_cut_near_1000_characters(repo: Path) -> None:
    for i in range(120):
        (repo / f"module_with_a_long_name_{i:03d}.py").write_text("a\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "many")
    for i in range(120):
        (repo / f"module_with_a_long_name_{i:03d}.py").write_text("b\n")
    value = lineage_tags(load_config(repo / "params.yaml"))["git_dirty"]
    assert len(value) <= 1000 and value.endswith("(120 paths)")


# --- commit_lineage ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def register_version(store: str, name: str, tags: dict[str, str]) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    client.create_registered_model(name)
    version = client.create_model_version(name, source="file:///nowhere/model", tags=tags)
    client.set_registered_model_alias(name, "champion", version.version)
    return str(version.version)


def version_tags(store: str, name: str, version: str = "1") -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(
        MlflowClient(tracking_uri=store, registry_uri=store).get_model_version(name, version).tags
    )


def write_decision(repo: Path, store: str, name: str, version: str) -> None:
    path = repo / "artifacts" / "register" / "decision.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model_name": name, "version": version, "tracking_uri": store}))


def a_run_that_changed_data(repo: Path, store: str, name: str, dirty: str) -> str:
    """What a flow run leaves: new data.dvc + dvc.lock, a version registered while dirty."""
    base = git(repo, "rev-parse", "HEAD")
    write_dvc_file(repo, NEW_MD5)
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {train: {}}\n")
    tags = {"git_commit": f"{base}-dirty", "git_dirty": dirty, "data_version": NEW_MD5}
    write_decision(repo, store, name, register_version(store, name, tags))
    return base


def test_commit_takes_only_the_lineage_files_and_moves_the_tag(repo: Path, store: str) -> None:
    base = a_run_that_changed_data(repo, store, "m-ok", dirty="data.dvc")
    (repo / "code.py").write_text("x = 3\n")  # someone's uncommitted edit
    (repo / "staged.txt").write_text("s\n")
    git(repo, "add", "staged.txt")  # ... and a staged file: neither may be committed
    result = commit_lineage(load_config(repo / "params.yaml"), flow_run="happy-fox")
    assert result.status == "committed" and result.files == ["data.dvc", "dvc.lock"]
    assert git(repo, "show", "--name-only", "--format=", "HEAD").split() == result.files
    assert git(repo, "rev-parse", "HEAD^") == base
    message = git(repo, "log", "-1", "--format=%B")
    assert "happy-fox" in message and NEW_MD5 in message and "models:/m-ok/1" in message
    status = git(repo, "status", "--porcelain", "--untracked-files=no").splitlines()
    assert sorted(line.strip() for line in status) == ["A  staged.txt", "M code.py"]
    assert result.still_dirty == ["code.py", "staged.txt"]
    assert "lineage stays dirty" in result.summary()
    tags = version_tags(store, "m-ok")
    assert tags["git_commit"] == result.sha == git(repo, "rev-parse", "HEAD")
    assert tags["git_commit.at_register"] == f"{base}-dirty" and tags["git_dirty"] == ""
    assert tags["git_dirty.at_register"] == "data.dvc" and result.tagged


@pytest.mark.parametrize(
    ("dirty", "why"),
    [
        ("data.dvc,code.py", "uncommitted changes to code.py"),  # built with an edit of code
        ("", "git_dirty"),  # "-dirty" without a git_dirty tag: what was dirty is unknown
    ],
)
def test_tag_stays_when_the_commit_does_not_complete_the_lineage(
    repo: Path, store: str, dirty: str, why: str
) -> None:
    name = f"m-keep-{len(dirty)}"
    a_run_that_changed_data(repo, store, name, dirty=dirty)
    if not dirty:  # registered before git_dirty existed
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=store, registry_uri=store).delete_model_version_tag(
            name, "1", "git_dirty"
        )
    result = commit_lineage(load_config(repo / "params.yaml"))
    assert result.status == "committed" and not result.tagged and why in result.tag_note
    assert version_tags(store, name)["git_commit"].endswith("-dirty")


def test_version_registered_on_another_commit_is_not_retagged(repo: Path, store: str) -> None:
    a_run_that_changed_data(repo, store, "m-moved", dirty="data.dvc")
    (repo / "code.py").write_text("x = 9\n")
    git(repo, "commit", "-qam", "someone committed in between")  # takes data.dvc along
    (repo / "params.yaml").write_text("base:\n  seed: 5\n")
    result = commit_lineage(load_config(repo / "params.yaml"))
    assert result.files == ["params.yaml"] and not result.tagged
    assert "not on the parent commit" in result.tag_note


def test_nothing_to_commit_and_not_a_repo(repo: Path, tmp_path: Path) -> None:
    assert commit_lineage(load_config(repo / "params.yaml")).status == "nothing to commit"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "params.yaml").write_text("base:\n  seed: 1\n")
    lines: list[str] = []
    result = commit_lineage(load_config(plain / "params.yaml"), on_line=lines.append)
    assert result.status == "skipped" and "not a git repository" in lines[0]


def test_no_git_identity_is_one_line_naming_the_fix(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git(repo, "config", "--unset", "user.email")
    git(repo, "config", "--unset", "user.name")
    git(repo, "config", "user.useConfigOnly", "true")  # never guess one from the host name
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "empty-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL", "EMAIL", "GIT_AUTHOR_NAME"):
        monkeypatch.delenv(var, raising=False)
    head = git(repo, "rev-parse", "HEAD")
    write_dvc_file(repo, NEW_MD5)
    with pytest.raises(VisionOpsError) as err:
        commit_lineage(load_config(repo / "params.yaml"))
    assert "git config user.email" in str(err.value) and "\n" not in str(err.value)
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "status", "--porcelain", "-uno") == "M data.dvc"  # not staged by the attempt


def test_a_failing_hook_leaves_the_files_uncommitted_and_unstaged(repo: Path) -> None:
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'lint: data.dvc looks odd' >&2\nexit 1\n")
    hook.chmod(0o755)
    head = git(repo, "rev-parse", "HEAD")
    write_dvc_file(repo, NEW_MD5)
    with pytest.raises(VisionOpsError, match="hook") as err:
        commit_lineage(load_config(repo / "params.yaml"))
    assert "data.dvc looks odd" in str(err.value)
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "status", "--porcelain", "-uno") == "M data.dvc"


# --- reproduce: what it refuses before any checkout -----------------------------------------


def test_parse_out_hashes() -> None:
    text = "train.csv:aa val.csv:bb test.csv:cc counts.json:dd"
    assert parse_out_hashes(text) == {
        "train.csv": "aa",
        "val.csv": "bb",
        "test.csv": "cc",
        "counts.json": "dd",
    }
    assert parse_out_hashes("") == {}


@pytest.mark.parametrize(
    ("tags", "allow", "expected"),
    [
        ({"git_commit": "abc"}, False, ("abc", [])),
        (
            {"git_commit": "abc-dirty", "git_dirty": "data.dvc,a.py"},
            True,
            ("abc", ["data.dvc", "a.py"]),
        ),
        ({"git_commit": "abc-dirty"}, True, ("abc", ["?"])),
    ],
)
def test_check_commit_accepts(tags: dict, allow: bool, expected: tuple) -> None:
    assert check_commit(tags, "models:/m/1", allow) == expected


@pytest.mark.parametrize(
    ("tags", "needles"),
    [
        ({"git_commit": "unknown"}, ["outside a git repository"]),
        ({}, ["no git commit"]),
        (
            {"git_commit": "abc-dirty", "git_dirty": "data.dvc,src/x.py"},
            ["data.dvc, src/x.py", "--allow-dirty"],
        ),
        ({"git_commit": "abc-dirty"}, ["not recorded", "--allow-dirty"]),
    ],
)
def test_check_commit_refuses(tags: dict, needles: list[str]) -> None:
    with pytest.raises(VisionOpsError) as err:
        check_commit(tags, "models:/m/1", allow_dirty=False)
    assert all(n in str(err.value) for n in needles), str(err.value)


def test_reproduce_refuses_a_dirty_version_without_touching_git(
    repo: Path, store: str, capsys: pytest.CaptureFixture
) -> None:
    head = git(repo, "rev-parse", "HEAD")
    tags = {"git_commit": f"{head}-dirty", "git_dirty": "data.dvc,code.py"}
    register_version(store, "m-dirty", tags)
    with pytest.raises(VisionOpsError, match="dirty work tree") as err:
        reproduce("models:/m-dirty@champion", project=repo, tracking_uri=store)
    assert "data.dvc, code.py" in str(err.value) and "--allow-dirty" in str(err.value)
    assert len(git(repo, "worktree", "list").splitlines()) == 1

    from visionops.cli.main import main

    args = ["reproduce", "models:/m-dirty@champion", "--project", str(repo)]
    assert main([*args, "--tracking-uri", store]) == 1
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error: models:/m-dirty@champion")


def test_reproduce_refuses_a_commit_the_repository_lacks(repo: Path, store: str) -> None:
    register_version(store, "m-elsewhere", {"git_commit": "f" * 40})
    with pytest.raises(VisionOpsError, match="git fetch"):
        reproduce("models:/m-elsewhere/1", project=repo, tracking_uri=store)
    assert len(git(repo, "worktree", "list").splitlines()) == 1
    assert not os.environ.get("MLFLOW_TRACKING_URI")


# --- restoring the recorded data version in a worktree (real DVC) ---------------------------


def dvc(root: Path, *args: str) -> str:
    from visionops.orchestrate.stages import dvc_executable, subprocess_env

    return subprocess.run(
        [dvc_executable(), *args],
        cwd=root,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Commit 1 holds data v1; data v2 was `dvc add`-ed (and pushed) but never committed.
    Returns (project, commit 1, md5 of v2)."""
    root = make_repo(tmp_path_factory.mktemp("dvcdata") / "proj")
    (root / "data.dvc").unlink()
    (root / "data").mkdir()
    (root / "data" / "a.txt").write_text("v1\n")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    dvc(root, "remote", "add", "-d", "storage", "../storage")  # relative: as the repo's default
    dvc(root, "add", "-q", "data")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "data v1")
    (root / "data" / "a.txt").write_text("v2\n")
    dvc(root, "add", "-q", "data")
    dvc(root, "push", "-q")
    v2 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    return root, git(root, "rev-parse", "HEAD"), v2


@pytest.mark.slow
def test_worktree_gets_the_recorded_data_version_from_cache_then_remote(
    dvc_project: tuple[Path, str, str], tmp_path: Path
) -> None:
    from visionops.orchestrate.lineage_checkout import restore_data, temporary_worktree

    root, commit, v2 = dvc_project
    lines: list[str] = []
    with temporary_worktree(root, commit, lines.append) as tree:
        md5, source, _ = restore_data(root, tree, v2, tmp_path, lines.append)
        assert md5 == v2 and source.startswith("DVC cache")
        assert (tree / "data" / "a.txt").read_text() == "v2\n"
        assert any("using the recorded" in line for line in lines)
        with pytest.raises(VisionOpsError, match="nor pullable from remote 'storage'"):
            restore_data(root, tree, "f" * 32 + ".dir", tmp_path, lines.append)
    assert not tree.exists() and len(git(root, "worktree", "list").splitlines()) == 1

    cache = root / ".dvc" / "cache"
    moved = root.parent / "cache-aside"
    cache.rename(moved)  # the cache lost it: the remote (a relative URL in .dvc/config) has it
    try:
        with temporary_worktree(root, commit, lines.append) as tree:
            md5, source, _ = restore_data(root, tree, v2, tmp_path, lines.append)
            assert source == "DVC remote 'storage'"
            assert (tree / "data" / "a.txt").read_text() == "v2\n"
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        moved.rename(cache)
    assert git(root, "status", "--porcelain", "-uno") == "M data.dvc"  # the user's, untouched

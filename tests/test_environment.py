"""What a run records of its environment: git.dirty counts only the stages' inputs, and the env tags."""

from __future__ import annotations

import hashlib
import platform

from pipeline.environment import environment_tags, git_state
from tests.helpers import make_repo, run


def test_dirty_counts_the_stages_inputs_not_their_outputs_nor_other_files(tmp_path):
    repo = make_repo(tmp_path / "repo", {})
    for name, text in {"README.md": "# notes\n", "metrics/train.json": "{}\n", "dvc.lock": "{}\n"}.items():
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_text(text)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "outputs and notes"], repo)
    assert git_state(repo)["git.dirty"] == "false"

    (repo / "README.md").write_text("# other notes\n")  # not read by any stage
    (repo / "metrics/train.json").unlink()  # what `dvc repro` does to an output before a stage
    (repo / "dvc.lock").write_text("{'rewritten': true}\n")
    assert git_state(repo)["git.dirty"] == "false"

    for edit in ("pipeline/model.py", "params.yaml", "uv.lock", "sweep/dvc.yaml"):
        run(["git", "checkout", "-q", "--", "."], repo)
        with open(repo / edit, "a") as handle:
            handle.write("\n# an edit\n")
        assert git_state(repo)["git.dirty"] == "true", edit
    commit = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert git_state(repo)["git.commit"] == git_state(repo)["mlflow.source.git.commit"] == commit


def test_environment_tags_name_the_versions_the_lock_and_the_machine(tmp_path):
    lock = tmp_path / "uv.lock"
    lock.write_text("version = 1\n")
    tags = environment_tags(lock)
    assert tags["env.python"] == platform.python_version()
    assert tags["env.lock_sha256"] == hashlib.sha256(b"version = 1\n").hexdigest()
    assert {f"env.{p}" for p in ("tensorflow", "keras", "mlflow", "dvc", "optuna", "numpy")} <= set(tags)
    assert all(value and value != "not installed" for value in tags.values()), tags
    assert int(tags["env.cores"]) >= int(tags["env.cores_usable"]) >= 1
    missing = tmp_path / "missing.lock"
    assert environment_tags(missing)["env.lock_sha256"] == f"no {missing}"

"""Where a run's code came from, as MLflow's standard source tags (the UI's Source column and
run page): the spec file, and inside a git checkout its commit, branch, remote and whether
tracked files had uncommitted changes. `gentrain submit` describes its checkout and hands the
description to the job (SOURCE_ENV), so that a job on a cluster, which runs from a copy of the
working directory without its git history, reports the checkout it was submitted from."""

import json
import os
from pathlib import Path

SOURCE_ENV = "GENTRAIN_SOURCE"
PREFIX = "mlflow.source."  # of every tag here
TYPE, NAME = "mlflow.source.type", "mlflow.source.name"
COMMIT, BRANCH = "mlflow.source.git.commit", "mlflow.source.git.branch"
DIRTY, REPO_URL = "mlflow.source.git.dirty", "mlflow.source.git.repoURL"


def describe(spec_file: str | Path | None, *, kind: str = "LOCAL") -> dict[str, str]:
    """The source tags of `spec_file` (None: the working directory), run as `kind` (LOCAL, or
    JOB for a submitted one)."""
    place = Path(spec_file).resolve() if spec_file else Path.cwd()
    tags = {TYPE: kind, NAME: str(spec_file) if spec_file else "gentrain"}
    try:
        from git import Repo

        repo = Repo(place.parent if place.is_file() else place, search_parent_directories=True)
        commit = repo.head.commit.hexsha
    except Exception:  # not a checkout, an empty one, or no git executable: no git tags
        return tags
    tags[COMMIT] = commit
    tags[DIRTY] = str(repo.is_dirty(untracked_files=False)).lower()
    if not repo.head.is_detached:
        tags[BRANCH] = repo.active_branch.name
    if spec_file and place.is_relative_to(repo.working_tree_dir):
        tags[NAME] = str(place.relative_to(repo.working_tree_dir))
    url = next((remote.url for remote in repo.remotes), None)
    if url:
        from mlflow.utils.git_utils import _strip_credentials_from_url

        tags[REPO_URL] = _strip_credentials_from_url(url)
    return tags


def of_spec(spec_file: str | Path | None) -> dict[str, str]:
    """The source tags a submitter handed on (SOURCE_ENV), else those of `spec_file`'s checkout
    (None: the working directory's)."""
    handed = os.environ.get(SOURCE_ENV)
    return json.loads(handed) if handed else describe(spec_file)

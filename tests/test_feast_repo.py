"""The generated Feast repo: opening a store leaves its files alone unless they changed."""

from __future__ import annotations

from pathlib import Path

from skewless.core.config import load_config
from skewless.features.repo import FeastRepo
from tests.conftest import ETTH_CONFIG, MakeRepo

REPO_FILES = ("feature_store.yaml", "skewless.yaml", "repo.py")


def _identities(folder: Path) -> dict[str, tuple[int, int]]:
    return {name: _identity(folder / name) for name in REPO_FILES}


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def test_opening_the_store_again_leaves_the_repo_files_untouched(make_repo: MakeRepo) -> None:
    repo = make_repo()
    assert repo.store.project == repo.config.project
    before = _identities(repo.folder)
    reopened = FeastRepo(repo.config, repo.home)  # another server or replica opening it
    assert reopened.store.project == repo.config.project
    assert _identities(repo.folder) == before


def test_a_changed_config_replaces_only_the_files_that_differ(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    repo = make_repo()
    repo.write()
    before = _identities(repo.folder)
    moved = tmp_path / "elsewhere.db"
    changed = load_config(
        ETTH_CONFIG,
        [
            f"feature_store.project={repo.config.project}",
            f"feature_store.online_store.path={moved}",
        ],
        environ={},
    )
    FeastRepo(changed, repo.home).write()
    after = _identities(repo.folder)
    assert str(moved) in (repo.folder / "feature_store.yaml").read_text()
    assert after["feature_store.yaml"][0] != before["feature_store.yaml"][0]  # replaced whole
    assert after["skewless.yaml"] != before["skewless.yaml"]
    assert after["repo.py"] == before["repo.py"]
    assert sorted(p.name for p in repo.folder.iterdir()) == sorted(REPO_FILES)  # no temporaries

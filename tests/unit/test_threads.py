"""Threads per fit: the available cores shared by the fits running at once, never more."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path

import pytest

from skewless.compute import threads


@pytest.fixture
def cores(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    return 8


@pytest.mark.parametrize("fits", [1, 2, 3, 5, 8, 12])
def test_fits_at_once_never_take_more_than_their_share(cores: int, fits: int) -> None:
    with ExitStack() as running:
        for _ in range(fits):
            running.enter_context(threads.sharing_cores())
        assert threads.share() == max(1, cores // fits)
        assert threads.share() * fits <= max(cores, fits)  # one thread each at the least
    assert threads.share() == cores  # all ended: a new fit gets every core


def test_fits_in_other_threads_count_too(cores: int) -> None:
    started, finish = threading.Barrier(4), threading.Event()

    def fit() -> None:
        with threads.sharing_cores():
            started.wait()
            finish.wait()

    workers = [threading.Thread(target=fit) for _ in range(3)]
    for worker in workers:
        worker.start()
    started.wait()
    with threads.sharing_cores():
        assert threads.share() == cores // 4
    finish.set()
    for worker in workers:
        worker.join()
    assert threads.share() == cores


def test_available_cores_follow_affinity_and_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    assert 1 <= threads.available_cores() <= len(os.sched_getaffinity(0))
    uncached = threads.available_cores.__wrapped__  # the cached value is this machine's
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    for quota, cores in ((None, 4), (8.0, 4), (2.5, 2), (0.5, 1)):
        monkeypatch.setattr(threads, "cgroup_quota", lambda quota=quota: quota)
        assert uncached() == cores, f"quota {quota}"


@pytest.mark.parametrize(
    ("v2", "v1", "quota"),
    [
        ("150000 100000\n", None, 1.5),
        ("max 100000\n", None, None),
        (None, ("200000", "100000"), 2.0),
        (None, ("-1", "100000"), None),
        (None, None, None),
        ("garbled\n", None, None),
    ],
)
def test_cgroup_quota_in_cores(
    tmp_path: Path, v2: str | None, v1: tuple[str, str] | None, quota: float | None
) -> None:
    v2_file, v1_files = tmp_path / "cpu.max", (tmp_path / "quota_us", tmp_path / "period_us")
    if v2 is not None:
        v2_file.write_text(v2)
    if v1 is not None:
        for path, text in zip(v1_files, v1, strict=True):
            path.write_text(text)
    assert threads.cgroup_quota(v2_file, v1_files) == quota

"""SafeCacheDataset: the cache of MONAI's CacheDataset, with no worker thread left running after an error."""

from __future__ import annotations

import threading
import time

import pytest
from monai.data import CacheDataset
from monai.transforms import Lambda

from mtreg_monai.data import SafeCacheDataset


class _Recorder:
    """A transform that fails on item 0 and sleeps on the others, recording when each one ends."""

    def __init__(self, sleep: float = 0.5) -> None:
        self.sleep = sleep
        self.started: list[int] = []
        self.ended: dict[int, float] = {}
        self.lock = threading.Lock()

    def __call__(self, x: int) -> int:
        with self.lock:
            self.started.append(x)
        if x == 0:
            raise ValueError("item 0 is corrupt")
        time.sleep(self.sleep)
        self.ended[x] = time.monotonic()
        return x


@pytest.mark.parametrize("num_workers", [0, 1, 3, None])
def test_same_cache_as_monai(num_workers):
    data = list(range(7))
    xform = Lambda(lambda x: 10 * x)
    ours = SafeCacheDataset(data, transform=xform, cache_rate=1.0, num_workers=num_workers, progress=False)
    ref = CacheDataset(data, transform=xform, cache_rate=1.0, num_workers=num_workers, progress=False)
    assert [ours[i] for i in range(7)] == [ref[i] for i in range(7)] == [10 * x for x in data]
    assert SafeCacheDataset(data, transform=xform, cache_rate=0.5, num_workers=2)._cache == [0, 10, 20]


def test_monai_cache_dataset_leaves_a_worker_running():
    """The root cause of the SIGABRT: MONAI's ThreadPool keeps running the next item after the error has left.

    If this fails, MONAI now finishes its workers and ``SafeCacheDataset`` is no longer needed."""
    rec = _Recorder()
    with pytest.raises(RuntimeError, match="applying transform") as info:  # MONAI's Compose wraps the error
        CacheDataset([0, 1, 2], transform=Lambda(rec), cache_rate=1.0, num_workers=1, progress=False)
    assert str(info.value.__cause__) == "item 0 is corrupt"
    left = time.monotonic()
    time.sleep(2 * rec.sleep)
    assert rec.ended and min(rec.ended.values()) > left  # item 1 ended after the error had left the constructor


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_error_leaves_no_thread_running(num_workers):
    rec = _Recorder()
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="applying transform") as info:
        SafeCacheDataset(list(range(6)), transform=Lambda(rec), num_workers=num_workers, progress=False)
    assert str(info.value.__cause__) == "item 0 is corrupt"  # the transform's error, unchanged
    left = time.monotonic()
    assert set(threading.enumerate()) <= before  # every worker thread has ended
    assert all(t <= left for t in rec.ended.values())  # no item ran on after the error
    # the items not started when the error came were cancelled: one per worker, plus the one a worker may take
    # between the error and its cancellation (all 6 would take 2.5 s of sleeping)
    assert len(rec.started) <= (1 if num_workers <= 1 else num_workers + 1)

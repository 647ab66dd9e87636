"""A MONAI ``CacheDataset`` whose cache-filling threads never outlive an error.

MONAI's ``CacheDataset`` fills its cache in a ``multiprocessing.pool.ThreadPool`` used as a context manager. When a
transform raises (a corrupt image, a path outside ``base_dir``), the exception leaves the ``with`` block, whose
``terminate()`` does not stop or join the worker threads: a worker is still running the transforms of the next item
(torch operations that release the GIL) while the exception unwinds to the top and the interpreter shuts down. At
shutdown that daemon thread is killed with ``pthread_exit`` inside a C++ frame of ``libtorch_python`` (pybind11's
``gil_scoped_release`` destructor, which is ``noexcept``), so ``std::terminate`` aborts the process: the clear error is
printed, then ``terminate called without an active exception`` and exit status 134 (SIGABRT) instead of 1.

:class:`SafeCacheDataset` fills the cache in the calling thread when one worker is asked for (the bundle's
``num_workers: 0``) and otherwise in a ``concurrent.futures.ThreadPoolExecutor`` that is shut down with
``wait=True, cancel_futures=True`` before the error propagates: no item is started after the first error and every
running item finishes, so no thread is left when the process exits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from monai.data import CacheDataset
from monai.utils import min_version, optional_import

tqdm, has_tqdm = optional_import("tqdm", "4.47.0", min_version, "tqdm")

__all__ = ["SafeCacheDataset"]


class SafeCacheDataset(CacheDataset):
    """MONAI ``CacheDataset`` whose cache-filling threads are finished before an error leaves it.

    Same arguments and behaviour as ``monai.data.CacheDataset`` (deterministic transforms cached at construction,
    random ones at every access), except how the cache is filled (see the module docstring): with
    ``num_workers`` 0 or 1 the items are loaded one after the other in the calling thread (no thread at all); with
    more, in a thread pool that is always shut down, waiting for the running items and cancelling the pending ones,
    before the first error propagates. The error itself is the transform's, unchanged (for the bundle's
    preprocessing it names the key and the file). So a corrupt training or validation pair ends ``monai.bundle run``
    with the error and exit status 1, not with a SIGABRT (status 134) at interpreter shutdown.

    Args:
        data: input data to load and transform to generate the dataset.
        transform: transforms to execute on the input data.
        cache_num, cache_rate, num_workers, progress, copy_cache, as_contiguous, hash_as_key, hash_func,
        runtime_cache: as ``monai.data.CacheDataset``; ``num_workers=None`` means ``os.cpu_count()`` threads.
        kwargs: other ``CacheDataset`` arguments.

    Example::

        ds = SafeCacheDataset(pairs, transform=registration_pair_transforms(), cache_rate=1.0, num_workers=0)
        ds[0]["fixed_image"].shape  # (1, H, W, D)
    """

    def _fill_cache(self, indices: Sequence[int] | None = None) -> list:
        """Compute and fill the cache content from the data source.

        Args:
            indices: indices in ``self.data`` to cache; ``None``: the first ``cache_num`` items.

        Returns:
            the transformed items, in the order of ``indices``.

        Raises:
            Exception: the first error of a transform, after every worker thread has finished.
        """
        if self.cache_num <= 0:
            return []
        if indices is None:
            indices = list(range(self.cache_num))
        indices = list(indices)
        show = self.progress and has_tqdm
        workers = self.num_workers if self.num_workers is not None else (os.cpu_count() or 1)
        if workers <= 1:
            items = tqdm(indices, desc="Loading dataset") if show else indices
            return [self._load_cache_item(i) for i in items]
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="SafeCacheDataset")
        try:
            futures = [executor.submit(self._load_cache_item, i) for i in indices]
            pending = tqdm(futures, total=len(futures), desc="Loading dataset") if show else futures
            return [f.result() for f in pending]
        finally:
            # on success every future is done; on an error (or KeyboardInterrupt) cancel what has not started and
            # wait for what is running, so that no worker thread outlives this call
            executor.shutdown(wait=True, cancel_futures=True)

"""A uint8 N×3×H×W image set read from its raw file on demand, so host memory does not grow with the pool.

Indexing it as a tensor is indexed (a slice, an int, a tensor or array of positions) returns a tensor holding
only those rows, read with `pread` into fresh memory. A memory map would do the same with less code, but every
page it touches counts in the process's resident set until the kernel reclaims it: evaluating a 10k-image slice
each epoch would make a 224-px run look 1.5 GB larger than it is. Page-cache reads are the kernel's to keep.
"""

from __future__ import annotations

import os
import stat
import weakref
from pathlib import Path

import numpy as np
import torch


class DiskImages:
    device = torch.device("cpu")
    dtype = torch.uint8

    def __init__(self, path: Path, count: int, shape: tuple[int, int, int]) -> None:
        self.path = Path(path)
        self._count = count
        self._item_shape = shape
        self._row = int(np.prod(shape))
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        weakref.finalize(self, os.close, self._fd)
        info = os.fstat(self._fd)  # the file opened, not the one checked a moment before
        if not stat.S_ISREG(info.st_mode) or info.st_size != count * self._row:
            raise OSError(f"{self.path} does not hold {count} images of {shape}")

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._count, *self._item_shape))

    def __len__(self) -> int:
        return self._count

    def numel(self) -> int:
        return self._count * self._row

    def element_size(self) -> int:
        return 1

    def __getitem__(self, key: int | slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(key, int):
            return self[np.asarray([key])][0]
        if isinstance(key, slice):
            start, stop, step = key.indices(self._count)
            if step == 1:
                return self._read_span(start, max(start, stop))
            key = np.arange(start, stop, step)
        rows = torch.as_tensor(key).cpu().long().reshape(-1).numpy()
        rows = np.where(rows < 0, rows + self._count, rows)
        if rows.size and (rows.min() < 0 or rows.max() >= self._count):
            raise IndexError(f"image position out of range for {self._count} images")
        return self._read_rows(rows)

    def _read_span(self, start: int, stop: int) -> torch.Tensor:
        """Consecutive rows in one read (evaluation walks the set in order)."""
        out = np.empty((stop - start, *self._item_shape), dtype=np.uint8)
        self._read_into(out, start * self._row)
        return torch.from_numpy(out)

    def _read_rows(self, rows: np.ndarray) -> torch.Tensor:
        """Rows in the order asked (a shuffled batch): one read each, straight into the batch's memory."""
        out = np.empty((len(rows), *self._item_shape), dtype=np.uint8)
        for slot, row in enumerate(rows):
            self._read_into(out[slot], int(row) * self._row)
        return torch.from_numpy(out)

    def _read_into(self, out: np.ndarray, offset: int) -> None:
        view = memoryview(out.reshape(-1))
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got == 0:
                raise OSError(f"{self.path} is shorter than its record says (was it changed during the run?)")
            done += got


ImageRows = torch.Tensor | DiskImages  # what the trainer indexes: a tensor (small sets, GPU) or the file

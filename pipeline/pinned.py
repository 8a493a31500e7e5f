"""Host <-> GPU transfer for extraction: a ring of pinned host buffers reused batch after batch.

Allocating pinned memory (cudaHostAlloc) is slow, and a fresh allocation per batch and field made a one-shot
extraction spend seconds page-locking memory (a second extraction in the same process, served by torch's caching host
allocator, ran 3x faster). Each batch takes a slot (waiting while the writer holds all of them), stages its padded
inputs there for the host->device copy and receives its outputs there by non-blocking device->host copies; the
writer releases the slot after writing the batch. The outputs land over the inputs' bytes: the stream runs the
device->host copies after the forward, which runs after the host->device copies. A slot grows (doubling) when a
batch needs more room. On the CPU, `to_host` hands the tensors over as numpy views.
"""

from __future__ import annotations

import queue
import time

import numpy as np
import torch

from pipeline.cache.codec import host_array


def to_host(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], None]:
    """CPU tensors -> numpy arrays (no copy). On a GPU, `PinnedRing.download` does this job."""
    return {name: host_array(t) for name, t in tensors.items()}, None


class HostCopy:
    """One batch's device->host copies in flight: `synchronize()` returns once they landed in the pinned buffer;
    `release()` hands the buffer back to the ring (the writer thread calls it once the batch is written)."""

    def __init__(self, event: torch.cuda.Event, ring: PinnedRing, slot: int):
        self.event, self.ring, self.slot = event, ring, slot

    def synchronize(self) -> None:
        self.event.synchronize()

    def release(self) -> None:
        if self.ring is not None:
            self.ring.release(self.slot)
            self.ring = None


class PinnedRing:
    """A few pinned host buffers reused batch after batch, for a GPU teacher's inputs and outputs."""

    ALIGN = 64

    def __init__(self, slots: int, initial_bytes: int = 16 << 20):
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.initial_bytes = initial_bytes
        self.free: queue.Queue = queue.Queue()
        for i in range(slots):
            self.free.put(i)
        self.wait_s = 0.0

    def acquire(self) -> int:
        started = time.perf_counter()
        slot = self.free.get()
        self.wait_s += time.perf_counter() - started
        return slot

    def release(self, slot: int) -> None:
        self.free.put(slot)

    def _views(self, slot: int, specs: list[tuple[tuple[int, ...], torch.dtype]]) -> list[torch.Tensor]:
        sizes = [int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size() for shape, dtype in specs]
        offsets, end = [], 0
        for size in sizes:
            offsets.append(end)
            end += -(-size // self.ALIGN) * self.ALIGN
        buf = self.buffers[slot]
        if buf is None or buf.numel() < end:
            # a batch in flight on an old buffer keeps it alive: torch's host allocator waits for its copies
            self.buffers[slot] = buf = torch.empty(
                max(end, 2 * (buf.numel() if buf is not None else self.initial_bytes // 2)), dtype=torch.uint8, pin_memory=True
            )
        return [buf[o : o + n].view(dtype).view(shape) for o, n, (shape, dtype) in zip(offsets, sizes, specs)]

    def upload(self, slot: int, arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
        """Host arrays -> device tensors through the slot's pinned memory, without blocking the host."""
        views = self._views(slot, [(a.shape, torch.from_numpy(a[:0]).dtype) for a in arrays])
        out = []
        for view, array in zip(views, arrays):
            view.numpy()[...] = array
            out.append(view.to(device, non_blocking=True))
        return out

    def download(self, slot: int, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], HostCopy]:
        """Device tensors -> numpy arrays in the slot: non-blocking copies, and the HostCopy to wait on before reading
        them; the arrays stay valid until the slot is released."""
        views = self._views(slot, [(tuple(t.shape), t.dtype) for t in tensors.values()])
        host = {}
        for view, (name, t) in zip(views, tensors.items()):
            view.copy_(t, non_blocking=True)
            host[name] = host_array(view)
        event = torch.cuda.Event()
        event.record()
        return host, HostCopy(event, self, slot)

"""Memory: out-of-memory detection without importing torch (the launcher never loads
it), freeing the device, and how many bytes a model takes or will take."""
from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

from shared.model_files import weight_files


class OutOfMemory(Exception):
    """An item that does not fit even in a micro-batch of one, or a model that does not
    fit on its device even alone."""


def is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_device_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def detached(exc: BaseException) -> BaseException:
    """`exc` without the tracebacks (and so the frames and tensors) of it and its chain."""
    seen = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return exc


def device_memory(device: str) -> tuple[int, int] | None:
    """(free, total) bytes of the CUDA device this process uses, or None on the CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return int(free), int(total)


def weight_bytes(runner: Any) -> int:
    """Bytes of the tensors a loaded runner holds: its modules' parameters and buffers,
    a pipeline's components, bare tensors. Each storage is counted once."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    seen: dict[tuple[str, int], int] = {}

    def add_tensor(tensor) -> None:
        if tensor.numel():
            seen[(str(tensor.device), tensor.untyped_storage().data_ptr())] = tensor.untyped_storage().nbytes()

    def walk(value, depth: int) -> None:
        if isinstance(value, torch.Tensor):
            add_tensor(value)
        elif isinstance(value, torch.nn.Module):
            for tensor in list(value.parameters()) + list(value.buffers()):
                add_tensor(tensor)
        elif depth < 2 and isinstance(getattr(value, "components", None), dict):  # a diffusers pipeline
            for component in value.components.values():
                walk(component, depth + 1)

    for value in vars(runner).values():
        walk(value, 0)
    return sum(seen.values())


def estimate_weight_bytes(source: Path | None, variant: str | None = None) -> int:
    """What loading a model from `source` (its local directory or its snapshot in the Hub
    cache: `shared.model_files.model_directory`) will take: the sizes of the weight files
    `from_pretrained` reads (the `variant`'s where it has them). A snapshot's files are
    links to its blobs, whose sizes are measured. 0 when unknown (no directory, no
    weight files)."""
    return sum(path.stat().st_size for path in weight_files(source, variant))

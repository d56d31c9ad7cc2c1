"""Training memory: the peak a run used, and batch sizes chosen from the device's free memory.

Introduced in ``notebooks/06_benchmark.py`` (the table of peak memory per model at paper size) and
used by :func:`spared_lib.training.fit` when ``micro_batch_size='auto'`` or ``slide_spots='auto'``.

SpaRED trains with a batch of 256 patches. At 224 px that does not fit a 16 GB GPU for ViT-B,
so the effective batch is kept and split into micro-batches whose gradients accumulate
(:func:`spared_lib.training.accumulation`). How many fit is measured, not guessed:
:func:`activation_bytes` runs the model's training forward on one and on two samples and counts
the bytes autograd saves for the backward pass (a ``saved_tensors_hooks`` tally, so it works on a
CPU as on a GPU, under the same precision as training). The fixed part — gradients, optimiser
state (two copies of the weights for Adam) and the optimiser step's temporaries — does not shrink
with the batch; when it alone
exceeds the free memory the model cannot train on that device at all, and the error says so.

Slide models (HisToGene, Hist2ST) take one slide per step, as their authors trained them; there
the same measurement, on crops of 8, 16 and 32 spots (attention is quadratic in the number of
spots), chooses whole slides when they fit and the largest contiguous crop that fits otherwise.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import numpy as np
import torch

#: Share of the free memory a run may plan to use (the rest: allocator fragmentation, cuDNN
#: workspaces, the evaluation batch, the data loader).
SAFETY = 0.75

#: Optimiser states per parameter: Adam/AdamW keep two moments, SGD with momentum one.
_OPT_STATES = {"adam": 2, "adamw": 2, "sgd": 1}


def free_memory_bytes(device: str) -> int:
    """Bytes a new allocation can still get on ``device``: the GPU's free memory plus what torch's
    caching allocator holds unused; on a CPU the system's available memory (``psutil``)."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())
    import psutil

    return int(psutil.virtual_memory().available)


def release_memory(device: str = "cpu") -> None:
    """Hand memory that earlier runs freed back to the system before the next run plans and measures.

    Three things keep it otherwise: Lightning's trainer, module and optimiser form reference
    cycles that only the cyclic collector frees (``gc.collect``); torch's CUDA caching allocator
    keeps freed blocks (``torch.cuda.empty_cache``); and glibc's ``malloc`` keeps freed heap
    pages mapped, because after a large block is freed it serves blocks of up to 32 MB from a heap
    it rarely shrinks (``malloc_trim(0)``, Linux only). On a CPU the last one is what grows: in the
    full-size rehearsal each paper-size ViT-B+Δ run of chapter 6 (batch 256) peaked about 2 GB above
    the one before, in one kernel. Nothing is leaked — ``benchmarks/heap_growth.py`` finds every
    model freed and the process back at its starting size after ``malloc_trim`` — but the kept heap
    counts as used, so the next run would plan its micro-batch against less "available" memory.
    :func:`spared_lib.training.fit` calls this first.

    What it cannot undo is the heap a run fragments while it trains: in ``benchmarks/heap_growth.py``
    (ViT-B, batch 16, four runs in one process) the peak still rose from 3.9 to 4.8 GiB. Starting
    Python with ``MALLOC_MMAP_THRESHOLD_=131072`` keeps it flat (3.3 GiB) at about 30 % more CPU
    time; it is not the default: it slows CPU training, and on a GPU the activations are not on this
    heap at all (torch's CUDA allocator holds them).

    Parameters
    ----------
    device
        ``'cuda'`` also empties torch's CUDA cache.
    """
    import gc

    gc.collect()
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        pass


class PeakMemory:
    """Context manager measuring a block's peak memory, in GiB, as ``.peak_gb``.

    On a GPU: the allocator's peak of allocated memory (``torch.cuda.max_memory_allocated``) during
    the block. On a CPU: the largest resident set size of this process sampled every 20 ms
    (``psutil``), i.e. the process's peak while the block ran, data included, and heap that glibc
    kept from earlier runs in the same process (see :func:`release_memory`); comparable per-model
    figures come from one process per model (``benchmarks/train_memory.py``).
    """

    def __init__(self, device: str, interval: float = 0.02):
        self.device, self.interval = device, interval
        self.peak_gb: float | None = None
        self._stop = threading.Event()
        self._peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc = psutil.Process()
            self._peak = proc.memory_info().rss

            def sample():
                while not self._stop.wait(self.interval):
                    self._peak = max(self._peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_gb = torch.cuda.max_memory_allocated() / 2**30
        else:
            import psutil

            self._stop.set()
            self._thread.join()
            self.peak_gb = max(self._peak, psutil.Process().memory_info().rss) / 2**30


@contextlib.contextmanager
def _untouched(model: torch.nn.Module, device: str):
    """Run a probe without leaving a trace: BatchNorm statistics, gradients and the random state
    come back as they were (so a CPU run with ``'auto'`` repeats one without it exactly)."""
    names = {n for n, _ in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in names}
    grads = {n: p.grad for n, p in model.named_parameters()}
    devices = [torch.cuda.current_device()] if device == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            model.load_state_dict(buffers, strict=False)
            for n, p in model.named_parameters():
                p.grad = grads[n]


def saved_bytes(model: torch.nn.Module, batch: dict, device: str) -> int:
    """Bytes autograd keeps for the backward pass of one training forward + loss on ``batch``
    (each storage counted once; the model's own parameters not counted: they are there anyway)."""
    from spared_lib.engine import autocast

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), s.nbytes())
        return t

    was_training = model.training
    model.train()
    with _untouched(model, device), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast(device):
            pred = model(batch)
        loss = model.loss(batch, pred.float())
        del loss, pred
    model.train(was_training)
    return int(sum(seen.values()))


def fixed_bytes(model: torch.nn.Module, device: str) -> int:
    """Memory a training step adds beyond the weights whatever the batch: gradients, the optimiser's
    states, the temporaries of its step (torch's multi-tensor ``foreach`` implementation computes
    the update of all parameters at once: about one more copy of them), and under mixed precision
    the half-precision weight copies autocast caches."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    states = _OPT_STATES.get(getattr(model, "optimizer", "adam"), 2)
    amp = 0.5 if device == "cuda" else 0.0
    return int(trainable * (1 + states + 1 + amp))


@dataclass
class MemoryPlan:
    """What :func:`plan_micro_batch` / :func:`plan_slide_spots` found (kept in ``FitResult.extra``).

    ``fixed_gb``: gradients + optimiser state; ``per_sample_gb``: activations per sample (per spot
    for slide models, at the chosen size); ``free_gb``: free memory when planned; ``size``: the
    chosen micro-batch or crop size."""

    size: int
    fixed_gb: float
    per_sample_gb: float
    free_gb: float

    def as_dict(self) -> dict:
        return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in self.__dict__.items()}


class DoesNotFit(RuntimeError):
    """The model cannot train on this device even with the smallest batch."""


def _gb(b: float) -> float:
    return float(b) / 2**30


def _check_fixed(model, fixed: int, free: int, safety: float, device: str) -> None:
    """Fail before any probe when gradients and optimiser state alone exceed the budget."""
    if fixed > safety * free:
        raise DoesNotFit(f"{type(model).__name__} needs {_gb(fixed):.1f} GiB for gradients and optimiser state "
                         f"alone (beside its weights), but {device} has {_gb(free):.1f} GiB free; use a "
                         "larger device or size='small'")


def plan_micro_batch(model, make_batch, batch_size: int, device: str, free: int | None = None,
                     safety: float = SAFETY) -> MemoryPlan:
    """The largest micro-batch (≤ ``batch_size``) whose training step fits ``safety`` × free memory.

    The activation bytes of micro-batches of two and four samples give the cost per sample.

    Parameters
    ----------
    model
        The :class:`~spared_lib.models.base.SpotModel`, on ``device``, prepared.
    make_batch
        ``make_batch(n) -> dict``: a training batch of ``n`` spots on ``device`` (model input).
    batch_size
        The effective batch the step must keep.
    free
        Free bytes (default :func:`free_memory_bytes`).

    Raises
    ------
    DoesNotFit
        Not even one sample fits; the message gives the fixed and per-sample needs.
    """
    free = free_memory_bytes(device) if free is None else int(free)
    fixed = fixed_bytes(model, device)
    _check_fixed(model, fixed, free, safety, device)
    if batch_size <= 2:  # nothing smaller to choose (BatchNorm cannot train on a batch of one)
        return MemoryPlan(batch_size, _gb(fixed), float("nan"), _gb(free))
    # two and four samples: BatchNorm needs more than one value per channel in training mode
    two, four = saved_bytes(model, make_batch(2), device), saved_bytes(model, make_batch(4), device)
    per = max((four - two) / 2, 1)
    base = max(two - 2 * per, 0)  # what does not grow with the batch (e.g. a memory bank's features)
    budget = safety * free - fixed - base
    n = int(budget // per) if budget > 0 else 0
    if n < 1:
        raise DoesNotFit(f"{type(model).__name__} needs {_gb(fixed + base):.1f} GiB for gradients and "
                         f"optimiser state plus {_gb(per):.2f} GiB per sample, but {device} has "
                         f"{_gb(free):.1f} GiB free; use a larger device or size='small'")
    return MemoryPlan(min(n, batch_size), _gb(fixed), _gb(per), _gb(free))


def plan_slide_spots(model, make_batch, largest: int, device: str, free: int | None = None,
                     safety: float = SAFETY, probe=(8, 16, 32)) -> MemoryPlan:
    """The largest crop (≤ ``largest``, the biggest slide) a slide model trains on within memory.

    The activation bytes of crops of ``probe`` spots are fitted by ``a + b·n + c·n²`` (attention
    over the spots of a slide is quadratic in their number) and the largest ``n`` within
    ``safety`` × free memory is taken; ``largest`` means whole slides.

    Raises
    ------
    DoesNotFit
        Not even the smallest probe crop fits.
    """
    free = free_memory_bytes(device) if free is None else int(free)
    fixed = fixed_bytes(model, device)
    _check_fixed(model, fixed, free, safety, device)
    sizes = np.array([min(p, largest) for p in probe], float)
    sizes = np.unique(sizes)
    used = np.array([saved_bytes(model, make_batch(int(n)), device) for n in sizes], float)
    deg = min(2, len(sizes) - 1)
    coef = np.polyfit(sizes, used, deg) if deg > 0 else np.array([used[0] / sizes[0], 0.0])
    coef = np.concatenate([np.zeros(3 - len(coef)), coef])  # (c, b, a)
    coef[:2] = np.maximum(coef[:2], 0)  # never extrapolate a shrinking cost
    need = lambda n: fixed + np.polyval(coef, n)  # noqa: E731
    n = np.arange(1, largest + 1)
    fits = n[need(n) <= safety * free]
    if not len(fits):
        raise DoesNotFit(f"{type(model).__name__} needs {_gb(need(1)):.1f} GiB for one spot but {device} has "
                         f"{_gb(free):.1f} GiB free; use a larger device or size='small'")
    size = int(fits.max())
    return MemoryPlan(size, _gb(fixed), _gb(np.polyval(coef, size) / size), _gb(free))


"""Training SpaCKLE: random masking of observed entries, MSE, Adam, best-validation checkpoint.

Introduced in ``notebooks/03_spackle.py``. The loop is the library's one training engine
(:func:`spared_lib.engine.make_trainer`, Lightning): :func:`train_spackle` only prepares the
arrays (:func:`prepare_training`), wraps the model in :class:`SpaCKLETask` (what one step and one
validation are), builds the two loaders (:func:`centre_loaders`) and hands them to the trainer,
which brings the best-validation checkpoint, mixed precision on a GPU, the progress bar, DDP and
the ``SPARED_MAX_STEPS`` cap.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch

from spared_lib.engine import make_trainer, resolve_device
from spared_lib.preprocessing import nearest_in_slide

from .infer import INFERENCE_RULES, gather_inputs, layer_arrays, model_inputs
from .model import SpaCKLE

#: What the model sees during training at entries missing in the data (``mask`` False):
#: ``'median'`` their median-filled values (the paper's and the original code's input),
#: ``'zeroed'`` zeros, as at inference.
TRAIN_INPUTS = ("median", "zeroed")
#: Entries the training loss covers: ``'all'`` every entry of the neighbourhood matrix (the
#: paper's ``||E - Ê||``, median-filled entries included), ``'observed'`` observed entries only.
LOSSES = ("all", "observed")
#: The paper's completion schedule: 10,000 steps of batch 256, Adam at 1e-3, best validation MSE.
PAPER_STEPS = 10_000


def masking_probabilities(mask: np.ndarray, fraction: float = 0.3) -> np.ndarray:
    """Per-gene masking probability ``fraction / glob_exp_frac``, capped at 1.

    ``glob_exp_frac`` is the fraction of spots that observe the gene (``mask`` True). Masking
    only observed entries with this probability hides, on average, ``fraction`` of *all* the
    gene's entries (as if every entry were hidden with probability ``fraction``, but only real
    values are): a gene observed in half the spots loses 60 % of its observed entries at 0.3.
    This is the original's ``masking_method='mask_prob'`` (``mask_prob / (1 - prob_median)``,
    BCV-Uniandes/SpaRED ``spared/spared/spackle/utils.py``, ``get_mask_prob_tensor``).

    Introduced in ``notebooks/03_spackle.py``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    glob_exp_frac = np.asarray(mask, dtype=bool).mean(axis=0)
    with np.errstate(divide="ignore"):
        p = np.where(glob_exp_frac > 0, fraction / glob_exp_frac, 1.0)
    return np.minimum(p, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- step 1: the arrays
@dataclass
class TrainingArrays:
    """Everything one SpaCKLE training run reads, as NumPy arrays (built by :func:`prepare_training`).

    Attributes
    ----------
    x, observed
        ``(n, G)`` float32 expression of the input layer and bool ``mask``.
    neighbours
        ``(n, T)`` int64 neighbourhood indices, the spot first, -1 padding.
    train_index, val_index
        Centre spots drawn in training, and the spots whose hidden entries validation scores.
    val_split
        Where the validation spots come from (``'val'``, ``'test'`` or a held-out tenth of train).
    p_gene
        ``(G,)`` masking probabilities (:func:`masking_probabilities` on the train split).
    offset
        ``(G,)`` what the model input is centred on (train-split means of the observed entries,
        or zeros when ``centre=False``).
    val_context, val_own, val_hidden
        The fixed validation input: ``(n, G)`` values a spot shows as a neighbour and as the
        centre (:func:`spared_lib.completion.infer.model_inputs`), and the entries validation hides
        and scores. Fixed, so successive validations are comparable.
    """

    x: np.ndarray
    observed: np.ndarray
    neighbours: np.ndarray
    train_index: np.ndarray
    val_index: np.ndarray
    val_split: str
    p_gene: np.ndarray
    offset: np.ndarray
    val_context: np.ndarray
    val_own: np.ndarray
    val_hidden: np.ndarray


def split_indices(adata, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Train spots and validation spots (the ``val`` split, else ``test``, else a random tenth of train)."""
    split = (np.asarray(adata.obs["split"]).astype(str) if "split" in adata.obs
             else np.full(adata.n_obs, "train"))
    train = np.flatnonzero(split == "train")
    if train.size == 0:
        raise ValueError("adata.obs['split'] has no 'train' spots to train SpaCKLE on")
    for name in ("val", "test"):
        val = np.flatnonzero(split == name)
        if val.size:
            return train, val, name
    # A single-split dataset: hold out a random tenth of the spots as validation centres. Their
    # values still appear as neighbours (and neighbour targets) of training spots, so validation
    # is optimistic there; data with a val or test slide, or spatial bands, avoid that.
    held = np.random.default_rng(seed).random(train.size) < 0.1
    if not held.any() or held.all():
        raise ValueError(f"{train.size} train spots are too few to hold a tenth out for validation")
    return train[~held], train[held], "held-out 10% of train"


def prepare_training(adata, layer: str = "c_d_log1p", *, n_neighbors: int = 18, radius="auto",
                     mask_fraction: float = 0.3, centre: bool = True, inference: str = "zeroed",
                     seed: int = 0) -> TrainingArrays:
    """Step 1 of :func:`train_spackle`: arrays, neighbourhoods, splits and the fixed validation mask.

    The validation mask hides each observed entry of the validation spots with the training's
    per-gene probability (as the original's validation), drawn from ``seed``; the validation
    input follows ``inference`` (:data:`spared_lib.completion.infer.INFERENCE_RULES`), with the
    median fill of the ``'median'`` rule computed from the visible entries only.

    Introduced in ``notebooks/03_spackle.py``.
    """
    x, m = layer_arrays(adata, layer)
    if not np.isfinite(x).all():
        raise ValueError(f"layer {layer!r} contains NaN or infinite values")
    nbr = nearest_in_slide(adata, n_neighbors, radius)
    train_idx, val_idx, val_name = split_indices(adata, seed)
    p_gene = masking_probabilities(m[train_idx], mask_fraction)
    if centre:
        obs = m[train_idx]
        offset = (np.where(obs, x[train_idx], 0).sum(0) / np.maximum(obs.sum(0), 1)).astype(np.float32)
    else:
        offset = np.zeros(x.shape[1], np.float32)
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the training draws do not move it
    val_spot = np.zeros(adata.n_obs, bool)
    val_spot[val_idx] = True
    hidden = (rng.random(x.shape, dtype=np.float32) < p_gene) & m & val_spot[:, None]
    context, own = model_inputs(adata, x, m & ~hidden, offset, inference)
    return TrainingArrays(x=x, observed=m, neighbours=nbr, train_index=train_idx, val_index=val_idx,
                          val_split=val_name, p_gene=p_gene, offset=offset, val_context=context,
                          val_own=own, val_hidden=hidden)


# --------------------------------------------------------------------------- step 2: one step
class SpaCKLETask(pl.LightningModule):
    """What one SpaCKLE training step and one validation are, for the engine's ``Trainer``.

    A batch is a ``(B,)`` tensor of centre-spot indices; the expression, masks and neighbourhoods
    live on the device as non-persistent buffers (moved with the module, never written to a
    checkpoint), so a step gathers its ``(B, T, G)`` neighbourhood matrices there without copies
    from the host.

    Training step: mask observed entries with the per-gene probabilities, hide the entries that
    ``train_input`` says the model does not see, reconstruct, and take the MSE over the entries
    ``loss`` names (non-padding tokens only). Validation: the fixed hidden entries of the
    validation spots, scored on the centre token, logged as ``val_mse``.

    Introduced in ``notebooks/03_spackle.py``.
    """

    def __init__(self, model: SpaCKLE, arrays: TrainingArrays, *, lr: float = 1e-3,
                 train_input: str = "zeroed", loss: str = "observed"):
        super().__init__()
        self.model = model
        self.lr = float(lr)
        self.train_input = train_input
        self.loss_entries = loss
        for name, value in (("x", arrays.x), ("observed", arrays.observed), ("nbr", arrays.neighbours),
                            ("p_gene", arrays.p_gene), ("val_context", arrays.val_context),
                            ("val_own", arrays.val_own), ("val_hidden", arrays.val_hidden)):
            self.register_buffer(name, torch.as_tensor(value), persistent=False)
        self._sse = self._n = None

    def training_step(self, centres, batch_idx):
        idx = self.nbr[centres]
        pad = idx < 0
        safe = idx.clamp(min=0)
        e = self.x[safe]
        obs = self.observed[safe] & ~pad[..., None]
        r = (torch.rand(e.shape, device=e.device) < self.p_gene) & obs
        # 'median': the missing entries keep their median fill (the paper); 'zeroed': hidden too
        hidden = r | (~obs if self.train_input == "zeroed" else pad[..., None])
        inp = (e - self.model.offset).masked_fill(hidden, 0.0)
        pred = self.model(inp, pad).float()  # loss in float32 under mixed precision
        w = (~pad[..., None]).expand_as(obs) if self.loss_entries == "all" else obs
        w = w.to(pred.dtype)
        loss = ((pred - e) ** 2 * w).sum() / w.sum().clamp(min=1.0)
        self.log("train_loss", loss, prog_bar=True, batch_size=centres.numel())
        return loss

    def on_validation_epoch_start(self):
        self._sse = torch.zeros((), dtype=torch.float64, device=self.device)
        self._n = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, centres, batch_idx):
        inp, pad = gather_inputs(self.val_context, self.val_own, self.nbr, centres)
        pred = self.model.forward_centre(inp, pad).float()  # eval mode: only the centre is scored
        r = self.val_hidden[centres]
        self._sse += ((pred - self.x[centres]) ** 2)[r].double().sum()
        self._n += r.sum()

    def on_validation_epoch_end(self):
        sse, n = self._sse, self._n
        if self.trainer.world_size > 1:  # DDP: every process scored its share of the spots
            sse, n = self.all_gather(sse).sum(), self.all_gather(n).sum()
        self.log("val_mse", (sse / n.clamp(min=1.0)).float(), prog_bar=True, sync_dist=False)

    def configure_optimizers(self):
        # the paper: Adam with PyTorch's default parameters
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)


# --------------------------------------------------------------------------- step 3: the loaders
class _Batches(torch.utils.data.Dataset):
    """Item ``i`` is the ``i``-th row of a ``(n_batches, B)`` index table (no per-spot collation)."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __len__(self) -> int:
        return self.table.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.table[i]


def centre_loaders(train_index: np.ndarray, val_index: np.ndarray, *, steps: int, batch_size: int,
                   seed: int, eval_batch_size: int = 1024):
    """Step 3 of :func:`train_spackle`: the train loader (``steps`` batches) and the validation loader.

    Training batches are drawn without replacement within an epoch over the train spots, as the
    original's shuffled ``DataLoader``, from a generator seeded with ``seed``: the whole schedule
    is one ``(steps, batch_size)`` index table made at once. Batches may span an epoch boundary,
    so small datasets drop nothing.
    """
    n = train_index.size
    gen = torch.Generator().manual_seed(int(seed))
    epochs = -(-steps * batch_size // n)
    order = torch.argsort(torch.rand(epochs, n, generator=gen), dim=1).reshape(-1)[: steps * batch_size]
    table = torch.as_tensor(train_index)[order].reshape(steps, batch_size)
    val = torch.as_tensor(val_index)
    chunks = [val[s: s + eval_batch_size] for s in range(0, val.numel(), eval_batch_size)]
    val_table = torch.nn.utils.rnn.pad_sequence(chunks, batch_first=True, padding_value=-1)
    train_loader = torch.utils.data.DataLoader(_Batches(table), batch_size=None, shuffle=False)
    val_loader = torch.utils.data.DataLoader(_ValChunks(val_table), batch_size=None, shuffle=False)
    return train_loader, val_loader


class _ValChunks(_Batches):
    """Validation chunks; the last one is padded with -1 in the table and trimmed here."""

    def __getitem__(self, i: int) -> torch.Tensor:
        row = self.table[i]
        return row[row >= 0]


# --------------------------------------------------------------------------- the whole run
def check_options(steps, batch_size, train_input, loss, inference) -> None:
    """Clear errors for bad training options, before any work is done."""
    if train_input not in TRAIN_INPUTS:
        raise ValueError(f"train_input must be one of {TRAIN_INPUTS}, got {train_input!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if inference not in INFERENCE_RULES:
        raise ValueError(f"inference must be one of {INFERENCE_RULES}, got {inference!r}")
    if int(steps) < 1 or int(batch_size) < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")


def train_spackle(
    adata,
    layer: str = "c_d_log1p",
    steps: int = PAPER_STEPS,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "auto",
    *,
    mask_fraction: float = 0.3,
    train_input: str = "zeroed",
    loss: str = "observed",
    inference: str = "zeroed",
    centre: bool = True,
    n_neighbors: int = 18,
    radius: float | None | str = "auto",
    val_every: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    precision: str | None = None,
    devices="auto",
    **model_kwargs,
):
    """Train a :class:`SpaCKLE` model on a preprocessed AnnData.

    Each step draws ``batch_size`` train-split centre spots, builds their neighbourhood matrix
    ``E`` (the spot and up to ``n_neighbors`` nearest spots of its slide), masks observed
    entries with per-gene probability ``mask_fraction / glob_exp_frac`` (capped at 1), and
    minimises the MSE between the reconstruction and ``E``. Every ``val_every`` steps the
    validation MSE is computed on fixed, randomly hidden observed entries of the validation
    spots (centre token), and the weights with the lowest validation MSE are kept. The run goes
    through :func:`spared_lib.engine.make_trainer` (the step cap ``SPARED_MAX_STEPS`` applies).

    Parameters
    ----------
    adata
        Preprocessed AnnData (layers ``layer`` and ``mask``, ``obs['slide_id']``,
        ``obs['split']``, ``obsm['spatial']``).
    layer
        The median-completed input layer (``c_d_log1p``).
    steps, batch_size, lr
        Optimisation (Adam). The defaults are the paper's: 10,000 steps, batch 256, lr 1e-3.
    seed
        Seeds the initial weights, batches, masks and dropout: same seed, same model on a CPU.
    device
        ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'`` ...
    mask_fraction
        Masking probability before the per-gene scaling (the paper's ρ = 0.3).
    train_input
        What the model sees at entries missing in the data: ``'zeroed'`` (zeros, as at inference;
        the default) or ``'median'`` (their median-filled values, the paper's and the original's).
    loss
        ``'observed'`` (observed entries of the non-padding tokens; the default) or ``'all'``
        (every entry, median-filled ones included: the paper's).
    inference
        The input rule of validation and, by default, of :func:`spared_lib.completion.complete`
        (recorded in ``model.meta``); see :data:`spared_lib.completion.infer.INFERENCE_RULES`.
    centre
        Feed expression minus the train-split gene means (``model.offset``), so a hidden entry
        (0) reads as the gene's mean (the default). Not in the paper: False feeds raw values.
    n_neighbors, radius
        Neighbourhood, see :func:`spared_lib.preprocessing.nearest_in_slide`.
    val_every
        Validation interval in steps (default ``max(1, steps // 20)``: 20 validations, each a
        forward pass over every validation spot and, when it improves, a checkpoint; more cost
        more than 10 % of a CPU run and change little).
    out_dir
        If given, the best checkpoint is also saved there as ``spackle.pt``.
    progress
        Show the engine's progress bar.
    precision, devices
        Passed to :func:`spared_lib.engine.make_trainer` (default: mixed precision on a GPU,
        all visible GPUs with DDP; under DDP each process draws its own ``batch_size``).
    **model_kwargs
        Passed to :class:`SpaCKLE` (``d_model``, ``n_layers``, ``n_heads``, ...).

    Returns
    -------
    model : SpaCKLE
        The best-validation model (on the CPU, in eval mode) with ``model.meta`` describing the
        data and the options it was trained with.
    history : pandas.DataFrame
        One row per step: ``step``, ``train_loss``, ``val_mse`` (NaN between validations).

    Notes
    -----
    The defaults of ``train_input``, ``loss``, ``centre`` and ``inference`` are the winner of the
    training-input study of ``benchmarks/completion.py`` (issue 16 §1: the paper's recipe, zeroed
    inputs with the loss on all entries, and zeroed inputs with the loss on observed entries,
    each raw and centred, three seeds, her2st's 7 patients and the CytAssist slide, chosen on
    the validation spots); chapter 3 shows the comparison (``resources.load_result('completion')``).
    The paper's recipe is ``train_input='median', loss='all', centre=False``.

    ``d_model`` defaults to the paper's 128 (the original code sets it to the number of genes:
    BCV-Uniandes/SpaRED ``spared/spared/spackle/model.py``, ``GeneImputationModel.__init__``).

    Introduced in ``notebooks/03_spackle.py``.
    """
    check_options(steps, batch_size, train_input, loss, inference)
    arrays = prepare_training(adata, layer, n_neighbors=n_neighbors, radius=radius,
                              mask_fraction=mask_fraction, centre=centre, inference=inference, seed=seed)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spared_spackle_") as tmp, \
            torch.random.fork_rng(devices=[torch.cuda.current_device()] if dev == "cuda" else []):
        torch.manual_seed(seed)  # initial weights, then masks and dropout, in one seeded stream
        model = SpaCKLE(arrays.x.shape[1], **model_kwargs)
        model.offset.copy_(torch.as_tensor(arrays.offset))
        task = SpaCKLETask(model, arrays, lr=lr, train_input=train_input, loss=loss)
        run = make_trainer(steps, device=dev, val_every=val_every or max(1, int(steps) // 20),
                           out_dir=tmp, name="spackle", precision=precision, devices=devices,
                           progress=progress)
        # under DDP Lightning deals the table's rows out to the processes: give each its own steps
        rows = run.steps * max(1, int(run.trainer.world_size))
        train_loader, val_loader = centre_loaders(arrays.train_index, arrays.val_index, steps=rows,
                                                  batch_size=int(batch_size), seed=seed)
        run.fit(task, train_loader, val_loader)
        best_step = run.load_best(task)
        best = run.checkpoint.best_model_score
    model = task.model.cpu().eval()
    model.meta = dict(
        layer=layer, var_names=list(map(str, adata.var_names)), n_neighbors=n_neighbors, radius=radius,
        train_input=train_input, loss=loss, inference=inference, centre=bool(centre),
        mask_fraction=mask_fraction, best_val_mse=float(best) if best is not None else float("nan"),
        best_step=int(best_step or run.steps), val_split=arrays.val_split, steps=int(run.steps),
        batch_size=int(batch_size), lr=float(lr), seed=int(seed), device=dev, precision=run.precision,
        train_time_s=time.perf_counter() - t0, dataset=adata.uns.get("dataset", {}).get("key"),
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"config": model.config, "meta": model.meta, "state_dict": model.state_dict()},
                   out_dir / "spackle.pt")
    return model, run.history.frame()


def load_spackle(path: str | Path) -> SpaCKLE:
    """Load a checkpoint written by :func:`train_spackle` (``out_dir/spackle.pt``).

    Introduced in ``notebooks/03_spackle.py``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SpaCKLE checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = dict(ckpt["config"])
    model = SpaCKLE(cfg.pop("n_genes"), **cfg)
    model.load_state_dict(ckpt["state_dict"])
    model.meta = ckpt["meta"]
    return model.eval()

"""Training and evaluation loops that return the per-epoch table of the Bender.jl tutorials."""

from __future__ import annotations

import inspect
import math
import operator
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bender._modes import eval_mode
from bender._placement import inputs_for, parameter_dtype
from bender.checkpoint import capture, check_resumable, restore
from bender.checkpoint import load as load_checkpoint
from bender.checkpoint import save as save_checkpoint
from bender.data import Batches, Dataset, FolderSplit, Split
from bender.functional._checks import check_positive_int, check_positive_number

LossFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict, nn.Module], bool | None]  # True: stop after this epoch
StepFn = Callable[[nn.Module], object]  # after every optimizer step, e.g. a weight constraint
COLUMNS = ["epoch", "loss_train", "loss_test", "acc_train", "acc_test", "seconds"]
TOP5_FROM = 20  # classes from which the table also holds top-5 accuracy


def table_columns(validation: bool = False, num_classes: int = 10) -> list[str]:
    """The per-epoch table's columns: :data:`COLUMNS`, with ``loss_val, acc_val`` for a
    dataset with a validation split and top-5 accuracies (``acc5_train``, ``acc5_test``,
    ``acc5_val``) from :data:`TOP5_FROM` classes on, before ``seconds``."""
    columns = COLUMNS[:-1] + (["loss_val", "acc_val"] if validation else [])
    if num_classes >= TOP5_FROM:
        columns += ["acc5_train", "acc5_test"] + (["acc5_val"] if validation else [])
    return [*columns, "seconds"]


def _mse_one_hot(output: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(output, F.one_hot(target, output.shape[-1]).to(output.dtype))


# train's precision: the dtype of autocast, or none
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
LOSSES: dict[str, LossFn] = {"cross_entropy": F.cross_entropy, "mse": _mse_one_hot}
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


# One canonical range: torch takes seeds from -2**63 up and wraps them modulo 2**64, so -1 and
# 2**64 - 1 would seed the same run under two names; only the non-negative form is taken.
SEED_RANGE = (0, 2**64 - 1)


def check_seed(seed: int) -> int:
    """``seed`` as an int if torch can seed with it (NumPy integers too); else a ``ValueError``."""
    low, high = SEED_RANGE
    try:
        value = None if isinstance(seed, bool) else operator.index(seed)
    except TypeError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(f"seed must be an int from {low} to {high}, got {seed!r}")
    return value


def _label(choice: str | Callable) -> str:
    """A name for an optimizer or loss given by name or as a callable (for checkpoints)."""
    if isinstance(choice, str):
        return choice
    return getattr(choice, "__qualname__", type(choice).__name__)


def _choose(kind: str, value, table: dict):
    if callable(value) and not isinstance(value, str):
        return value
    if value not in table:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(table)}")
    return table[value]


def check_optimizer_options(
    optimizer: str | Callable[..., torch.optim.Optimizer], options: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``options`` as a dict, checked against what the named optimizer's constructor takes
    (``momentum`` and ``weight_decay`` for SGD, ``betas`` or ``weight_decay`` for Adam, ...)."""
    options = dict(options or {})
    if not all(isinstance(key, str) for key in options):
        raise TypeError(f"optimizer_options must map option names to values, got {options!r}")
    if "lr" in options:
        raise ValueError("give the learning rate as lr=..., not in optimizer_options")
    momentum = options.get("momentum", 0.0)
    if (
        isinstance(momentum, bool)
        or not isinstance(momentum, (int, float))
        or not (0 <= momentum < 1)
    ):
        raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
    make = _choose("optimizer", optimizer, OPTIMIZERS)
    if isinstance(make, type):  # a torch.optim class: name the options it does not take
        takes = [n for n in inspect.signature(make).parameters if n not in ("self", "params")]
        unknown = [key for key in options if key not in takes]
        if unknown:
            raise ValueError(
                f"{_label(optimizer)} takes no option {', '.join(map(repr, unknown))}; its "
                f"options are {', '.join(n for n in takes if n != 'lr')}"
            )
    return options


def make_optimizer(
    optimizer: str | Callable[..., torch.optim.Optimizer],
    params,
    lr: float,
    options: Mapping[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """Build the optimizer named ``optimizer`` (or call the given factory) with ``lr`` and the
    keyword ``options`` (``{"momentum": 0.9, "weight_decay": 1e-3}`` for SGD).

    Adam and AdamW use PyTorch's fused kernels where this torch has them for the parameters'
    device (CPU since torch 2.4, CUDA): the same update as the per-tensor loop in one kernel per
    parameter, about twice as fast for the 784-512-256-10 MLP on a CPU.
    """
    options = check_optimizer_options(optimizer, options)
    make = _choose("optimizer", optimizer, OPTIMIZERS)
    params = list(params)
    if make in (torch.optim.Adam, torch.optim.AdamW) and "fused" not in options:
        try:
            return make(params, lr=lr, fused=True, **options)
        except (RuntimeError, TypeError, ValueError):
            pass  # fused kernels unavailable for this torch, device or dtype
    return make(params, lr=lr, **options)


def step_functions(after_step: Sequence[StepFn] | StepFn | None) -> tuple[StepFn, ...]:
    """``train``'s ``after_step`` as a tuple of functions: one function, a list of them, or
    ``None``; a clear error for anything else."""
    if callable(after_step):
        return (after_step,)
    if after_step is None or isinstance(after_step, (list, tuple)):
        after = tuple(after_step or ())
        if all(callable(fn) for fn in after):
            return after
    raise TypeError(f"after_step must be a list of functions fn(model), got {after_step!r}")


def process_group() -> tuple[int, int]:
    """``(world size, rank)`` of the initialized ``torch.distributed`` process group, else
    ``(1, 0)``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _collective_device(model: nn.Module) -> torch.device:
    """Where tensors for a collective must be: the GPU for NCCL, the CPU for gloo."""
    if torch.distributed.get_backend() == "nccl":
        return next(model.parameters()).device
    return torch.device("cpu")


def rule_steps(model: nn.Module) -> tuple[StepFn, ...]:
    """The functions a learning rule put on ``model`` to run after every optimizer step
    (``model.after_step``, set by :func:`bender.rules.apply_rule`); none for other models."""
    steps = getattr(model, "after_step", None)
    return () if steps is None else step_functions(steps)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; any other device must hold a tensor here.

    Checked by allocating an empty tensor on it, so a device this torch build or machine lacks
    (``mps`` on Linux, ``cuda:3`` with one GPU) is refused up front, not after the data is loaded.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: expected auto, cpu, cuda or cuda:N") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but this torch sees no CUDA device")
    if resolved.type == "meta":
        raise ValueError("device 'meta' holds no data, so nothing can be trained on it")
    try:
        torch.empty(0, device=resolved)
    except Exception as err:  # each backend fails its own way: RuntimeError, AssertionError, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"device {device!r} is not usable here: {reason}") from err
    return resolved


@contextmanager
def deterministic_cudnn(device: torch.device) -> Iterator[None]:
    """On CUDA, hold cuDNN to deterministic algorithms (``deterministic=True``,
    ``benchmark=False``) inside the block, and put the caller's settings back afterwards.

    cuDNN's fastest convolution backwards add partial sums in whatever order its threads
    finish, so two runs of a conv net from the same seed would drift apart in the last digits.
    """
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split | FolderSplit,
    loss: str | LossFn = "cross_entropy",
    batch_size: int | None = None,
    *,
    top5: bool = False,
) -> tuple[float, ...]:
    """Mean loss and accuracy of ``model`` over a whole split, in eval mode and without grad.

    Each batch of inputs goes to the device of the model's parameters and, if floating-point,
    is cast to their dtype (each where the parameters share one), as in :func:`train`, so a
    model trained on a GPU is evaluated on a split kept on the CPU. In a process group (torchrun)
    every process evaluates every ``world``-th example and the sums are all-reduced, so each
    gets the numbers of the whole split. With ``top5`` the share of examples whose class is
    among the five highest scores comes third. ``batch_size`` defaults to 10 000 examples in
    memory and 250 images read from a folder.
    """
    loss_fn = _choose("loss", loss, LOSSES)
    if len(split) == 0:
        raise ValueError("cannot evaluate on an empty split")
    streamed = isinstance(split, FolderSplit)
    batch_size = (250 if streamed else 10_000) if batch_size is None else batch_size
    check_positive_int("batch_size", batch_size)
    world, rank = process_group()
    order = None
    if world > 1:  # each process its share; the sums are added up below
        order = torch.arange(rank, len(split), world, device=split.y.device)
    total_loss = correct = correct5 = 0  # tensors on the outputs' device: no sync per batch
    with eval_mode(model):
        for x, y in split.batches(order, batch_size):
            out = model(inputs_for(model, x))
            y = y.to(out.device)
            batch_loss = loss_fn(out, y)
            _check_loss(batch_loss)
            total_loss = total_loss + batch_loss.double() * len(y)
            correct = correct + (out.argmax(-1) == y).sum()
            if top5:
                best = out.topk(min(5, out.shape[-1]), dim=-1).indices
                correct5 = correct5 + (best == y.unsqueeze(-1)).any(-1).sum()
    if world > 1:
        sums = torch.stack(
            [torch.as_tensor(v, dtype=torch.float64) for v in (total_loss, correct, correct5)]
        )
        sums = sums.to(_collective_device(model))
        torch.distributed.all_reduce(sums)
        total_loss, correct, correct5 = sums[0], sums[1], sums[2]
    result = (float(total_loss) / len(split), int(correct) / len(split))
    return (*result, int(correct5) / len(split)) if top5 else result


def train(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int = 10,
    lr: float = 3e-4,
    batch_size: int = 64,
    optimizer: str | Callable[..., torch.optim.Optimizer] = "adam",
    optimizer_options: Mapping[str, Any] | None = None,
    loss: str | LossFn = "cross_entropy",
    device: str | torch.device = "auto",
    seed: int = 0,
    reshuffle: bool = True,
    callbacks: Sequence[Callback] | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: str | os.PathLike | dict | None = None,
    after_step: Sequence[StepFn] | StepFn | None = None,
    augment: Callable[[Tensor], Tensor] | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool | str = False,
) -> pd.DataFrame:
    """Train ``model`` on ``data.train``; after every epoch evaluate on train and test.

    Returns a DataFrame with one row per epoch: ``epoch, loss_train, loss_test, acc_train,
    acc_test, seconds`` (``seconds``: training time of the epoch, evaluation excluded). Batches
    are shuffled by a generator seeded with ``seed`` every epoch (only once, for the first epoch,
    with ``reshuffle=False``, as in Bender.jl's tutorials) and the last partial batch is dropped;
    ``torch.manual_seed(seed)`` is also set for stochastic layers (seed the model's own
    initialisation before building it). The data is moved to ``device``, and floating-point
    inputs are cast to the dtype of the model's parameters (when they share one). Each callback
    is called as ``cb(row, model)`` after every epoch; one that returns ``True`` stops training
    there (early stopping), after the other callbacks of that epoch have run. ``scheduler``
    builds a learning-rate scheduler from the optimizer (``lambda opt: CosineAnnealingLR(opt,
    T_max=10)``), stepped once after every epoch's evaluation, before the callbacks;
    ``ReduceLROnPlateau`` is stepped with the epoch's ``loss_train``. ``optimizer`` is
    ``"adam"``, ``"adamw"``, ``"sgd"`` or a factory ``f(params, lr=lr, **optimizer_options)``;
    ``optimizer_options`` go to its constructor (``{"momentum": 0.9, "weight_decay": 1e-3}``).
    Each of ``after_step`` is called as ``fn(model)`` under ``torch.no_grad()`` after every
    optimizer step, e.g. a weight constraint such as
    :class:`bender.constraints.ClipBinaryWeights`, after those of the model's learning rule
    (``model.after_step``, which :func:`bender.rules.apply_rule` sets: a weight mirror). A non-
    finite training loss stops training with a warning. Either way the rows of the completed
    epochs are returned, and the reason is in ``df.attrs["stopped"]``. Inputs holding NaN or
    ±inf are refused with a ``ValueError`` before the first step; trainable parameters that the
    first backward pass gives no gradient are named in a warning.

    ``augment`` is applied to every training batch before the model sees it (e.g.
    :class:`bender.data.augment.CropFlip`, which draws from the global CPU generator that
    ``train`` seeds and checkpoints keep); evaluation sees the images as they are.

    ``precision`` ``"bf16"`` or ``"fp16"`` runs each training step's forward pass and loss
    under ``torch.autocast`` in that dtype (fp16 with a ``torch.amp.GradScaler``, whose scale
    starts afresh on resume); the weights, the optimizer and evaluation stay in the parameters'
    dtype. Every bent backward takes the low-precision gradients it is given.

    ``channels_last`` keeps the model's 4-D weights and buffers (conv kernels, their feedback)
    and every training batch of images in ``torch.channels_last`` memory, the layout in which
    GPUs' tensor cores run convolutions fastest; the numbers are those of the default layout
    up to the order of summation.

    ``compile=True`` runs every training step's forward pass (and so its backward) through
    ``torch.compile`` with its default Inductor backend, which fuses the elementwise work
    around the matrix products (quantizers, activations, batch norm) into a few kernels; the
    first step compiles (seconds to a minute; a C++ compiler on the CPU, Triton on a GPU) and
    evaluation stays eager. A string names another backend (``"aot_eager"``: traced, not
    lowered to kernels). The numbers are those of eager training up to the order of summation.
    Custom backwards run as they are written (bender's fused eager paths step aside while
    compiling); DFA's per-pass hooks on a model that is not an ``nn.Sequential`` chain run
    eagerly (a graph break).

    In a ``torch.distributed`` process group (``torchrun``), every process takes the same
    seeded batches and trains on its ``batch_size / world`` part of each, the model wrapped in
    ``DistributedDataParallel`` (gradients averaged: the whole batch's gradient; buffers such
    as feedback matrices broadcast from rank 0), evaluates its share of each split (sums
    all-reduced); callbacks run and the checkpoint is written in rank 0 only, and a callback's
    stop reaches every process. With CUDA each process takes the GPU ``LOCAL_RANK``. An image
    folder's training split (:class:`bender.data.FolderSplit`) is read from disk by each
    process for its own part of every batch only, and ``augment`` then draws for that part.

    ``checkpoint`` names a file written after every completed epoch, after the callbacks (see
    :mod:`bender.checkpoint`). ``resume`` takes such a file (or its contents, from
    ``bender.checkpoint.load``) and continues that run: the model, optimizer, scheduler, batch
    order and random states are put back, the returned table starts with the checkpoint's rows
    and training goes on to ``epochs`` in all; callbacks see the new epochs only. The settings
    that shape the run (``batch_size``, ``seed``, ``reshuffle``, ``lr``, ``optimizer`` and
    its options, ``loss``, the sizes of the splits) must be the ones it was written with. On
    the same machine and thread count, a resumed run's table equals that of a run that never
    stopped. On CUDA, cuDNN is held to deterministic algorithms while training (see
    :func:`deterministic_cudnn`), so that a conv net's table too is the same from the same seed.
    """
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    lr = check_positive_number("lr", lr)
    seed = check_seed(seed)
    if not isinstance(data, Dataset):
        raise TypeError(
            f"data must be a bender.data.Dataset, got {type(data).__name__}; wrap your own "
            "tensors as Dataset(name, Split(x, y), Split(x_test, y_test), num_classes)"
        )
    if len(data.test) == 0:
        raise ValueError("data.test is empty: every epoch is evaluated on the test split")
    if len(data.train) < batch_size:
        raise ValueError(
            f"batch_size {batch_size} is larger than the training set ({len(data.train)} "
            "examples): the last partial batch is dropped, so an epoch would have no batch"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    backend = _compile_backend(compile)
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be a function of a batch of inputs, got {augment!r}")
    world, rank = process_group()
    if batch_size % world:
        raise ValueError(
            f"batch_size {batch_size} must split evenly among the {world} processes, each taking "
            f"batch_size / {world} examples of every batch; choose a multiple of {world}"
        )
    loss_fn = _choose("loss", loss, LOSSES)
    options = check_optimizer_options(optimizer, optimizer_options)
    after = (*rule_steps(model), *step_functions(after_step))
    device = resolve_device(device)
    if world > 1 and device.type == "cuda" and device.index is None:  # torchrun: one GPU each
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    settings = {
        "batch_size": batch_size,
        "seed": seed,
        "reshuffle": reshuffle,
        "lr": lr,
        "optimizer": _label(optimizer),
        "optimizer_options": options,
        "loss": _label(loss),
        "train_size": len(data.train),
        "test_size": len(data.test),
    }
    if data.val is not None:
        settings["val_size"] = len(data.val)
    if checkpoint is not None and not Path(checkpoint).parent.is_dir():
        raise FileNotFoundError(
            f"the folder of checkpoint={str(checkpoint)!r} does not exist; create it first"
        )
    state = None
    if resume is not None:
        state = resume if isinstance(resume, dict) else load_checkpoint(resume)
        check_resumable(state, settings, epochs)
    torch.manual_seed(seed)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(optimizer, model.to(device).parameters(), lr, options)  # before the data
    schedule = None if scheduler is None else scheduler(opt)
    if schedule is not None and not callable(getattr(schedule, "step", None)):
        raise TypeError(
            "scheduler must build a learning-rate scheduler from the optimizer, e.g. "
            "lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10); "
            f"it returned {type(schedule).__name__}, which has no step()"
        )
    data = data.to(device, parameter_dtype(model))  # float32 data for a float64 model: cast
    for name in ("train", "test", "val"):
        if isinstance(getattr(data, name), Split):  # images read from disk are bytes: finite
            _check_finite(f"data.{name}.x", getattr(data, name).x)
    # a process reads its part of every batch from disk, or cuts it from the whole batch in
    # memory (after the augmentation, drawn for the whole batch: as one process would)
    streamed = isinstance(data.train, FolderSplit)
    part = (rank, world) if streamed else (0, 1)
    batches = Batches(data.train, batch_size, reshuffle=reshuffle, seed=seed, part=part)
    share = batch_size // world  # this process's part of every batch
    columns = table_columns(data.val is not None, data.num_classes)
    top5 = "acc5_test" in columns
    net = model
    if world > 1:  # gradients averaged over the processes' parts: the whole batch's gradient
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if backend is not None:  # the training steps only: evaluation and checkpoints use the model
        net = torch.compile(net, backend=backend)
    low = PRECISIONS[precision]
    # fp32 enters no autocast at all: a disabled one still costs a few µs a step
    autocast = nullcontext if low is None else partial(torch.autocast, device.type, low)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    rows = [] if state is None else restore(state, model, opt, schedule, batches, device)
    start_epoch = len(rows) + 1
    with deterministic_cudnn(device):  # the same seed, the same table, also on a GPU
        for epoch in range(start_epoch, epochs + 1):
            model.train()
            start = time.perf_counter()
            running = torch.zeros((), device=device)
            steps = _progress(batches, epoch, epochs) if progress and rank == 0 else batches
            for step, (x, y) in enumerate(steps, 1):
                first = epoch == start_epoch and step == 1  # checks that need a real step
                opt.zero_grad(set_to_none=True)
                if augment is not None:
                    x = augment(x)  # the whole batch, drawn alike in every process
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                if world > 1 and not streamed:
                    x, y = (
                        x[rank * share : (rank + 1) * share],
                        y[rank * share : (rank + 1) * share],
                    )
                with autocast():
                    output = net(x)
                    if first:
                        _check_output(output, len(x), data.num_classes)
                    batch_loss = loss_fn(output, y)
                if first:
                    _check_loss(batch_loss)
                if scaler is None:
                    batch_loss.backward()
                else:
                    scaler.scale(batch_loss).backward()
                if first:
                    _warn_untrained(model)
                if scaler is None:
                    opt.step()
                else:
                    scaler.step(opt)
                    scaler.update()
                if after:
                    with torch.no_grad():
                        for fn in after:
                            fn(model)
                running += batch_loss.detach()
                if step % 100 == 0 and not math.isfinite(running.item()):
                    break
            total = running.item()  # waits for an accelerator's queued steps: timed with the epoch
            seconds = time.perf_counter() - start
            if not math.isfinite(total):
                message = (
                    f"training loss became {total} in epoch {epoch}; stopped after "
                    f"{epoch - 1} complete epoch(s). Try a smaller learning rate (lr={lr})."
                )
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                return _table(rows, stopped=message, columns=columns)
            row = {"epoch": epoch, "seconds": seconds}
            splits = [("train", data.train), ("test", data.test)]
            splits += [] if data.val is None else [("val", data.val)]
            for name, split in splits:
                numbers = evaluate(model, split, loss_fn, top5=top5)
                row[f"loss_{name}"], row[f"acc_{name}"] = numbers[:2]
                if top5:
                    row[f"acc5_{name}"] = numbers[2]
            row = {column: row[column] for column in columns}
            rows.append(row)
            if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
                # the validation loss, else the training loss: the test split stays unseen
                schedule.step(row["loss_val"] if data.val is not None else row["loss_train"])
            elif schedule is not None:
                schedule.step()
            stoppers = [cb for cb in callbacks or () if rank == 0 and cb(row, model) is True]
            if world > 1:  # rank 0's callbacks decide for all
                stop = torch.tensor([float(bool(stoppers))], device=_collective_device(model))
                torch.distributed.broadcast(stop, 0)
                stoppers = stoppers or ([_rank_zero] if stop.item() else [])
            if (
                checkpoint is not None and rank == 0
            ):  # the table's columns: a callback may have added to a row
                table = [{column: r[column] for column in columns} for r in rows]
                save_checkpoint(
                    checkpoint,
                    capture(epoch, table, settings, model, opt, schedule, batches, device),
                )
            if stoppers:
                names = ", ".join(getattr(cb, "__name__", type(cb).__name__) for cb in stoppers)
                stopped = f"stopped after epoch {epoch} of {epochs} by {names}"
                return _table(rows, stopped=stopped, columns=columns)
        return _table(rows, columns=columns)


def _compile_backend(compile: bool | str) -> str | None:
    """The ``torch.compile`` backend that ``train(compile=...)`` names (``None``: eager)."""
    if compile is False:
        return None
    if compile is True:
        return "inductor"
    if isinstance(compile, str) and compile in torch.compiler.list_backends(exclude_tags=()):
        return compile
    raise ValueError(
        "compile must be True (Inductor), False, or the name of a torch.compile backend from "
        "torch.compiler.list_backends(exclude_tags=()) such as 'aot_eager' or 'cudagraphs', "
        f"got {compile!r}"
    )


def _rank_zero(row: dict, model: nn.Module) -> bool:
    """Stands for rank 0's callbacks in the other processes, when they stop the run."""
    return True


def _table(
    rows: list[dict], stopped: str | None = None, columns: list[str] = COLUMNS
) -> pd.DataFrame:
    """The per-epoch table; when training ended early, the reason in ``attrs["stopped"]``."""
    table = pd.DataFrame(rows, columns=columns)
    if stopped is not None:
        table.attrs["stopped"] = stopped
    return table


def _check_finite(name: str, x: Tensor) -> None:
    """Floating-point inputs must be finite: a NaN or ±inf would make the loss NaN, which would
    then read like a learning rate set too high."""
    if not x.is_floating_point() or bool(x.sum().isfinite()):
        return  # one fast pass: the sum is finite only if every value is
    bad = ~torch.isfinite(x.reshape(len(x), -1))
    rows = bad.any(1).nonzero().flatten()
    if len(rows) == 0:  # large finite values whose sum overflowed
        return
    raise ValueError(
        f"{name} holds {int(bad.sum())} non-finite values (NaN or ±inf) in {len(rows)} "
        f"example(s), the first at index {int(rows[0])}; remove or replace them before training"
    )


def _warn_untrained(model: nn.Module) -> None:
    """Warn, naming them, about trainable parameters the first backward pass gave no gradient."""
    missed = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if missed:
        warnings.warn(
            f"the first step gave no gradient to {', '.join(missed)}, so the optimizer leaves "
            "them as they are; if no step does, they never learn. A layer that passes nothing "
            "to its input (linear_blocked_dx, conv_linear_blocked_dx) cuts off the layers "
            "before it, outside a DFA wrapper and inside one of its multi-layer blocks alike. "
            "Set requires_grad=False on parameters you mean to keep fixed.",
            stacklevel=3,
        )


def _check_output(output: Tensor, batch: int, num_classes: int) -> None:
    """The model must give one row of at least ``num_classes`` scores per example."""
    if not isinstance(output, Tensor) or output.dim() != 2 or len(output) != batch:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"the model must return one row of class scores per example, shape ({batch}, "
            f"{num_classes}) for this batch, got {got}"
        )
    if output.shape[1] < num_classes:
        raise ValueError(
            f"the model returns {output.shape[1]} scores per example, but the data has "
            f"{num_classes} classes"
        )


def _check_loss(value: Tensor) -> None:
    """The loss must be one number per batch (the batch mean), as ``backward()`` needs."""
    if not isinstance(value, Tensor) or value.dim() != 0:
        got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"the loss must return one number for the batch (a 0-dim tensor, the mean over "
            f"its examples), got {got}; with torch's losses, keep reduction='mean'"
        )


def _progress(batches: Batches, epoch: int, epochs: int):
    from tqdm.auto import tqdm

    return tqdm(batches, desc=f"epoch {epoch}/{epochs}", leave=False, unit="batch")

"""The ``bender`` command: list recipes, summarise one, train one and write its results to a
folder, or resume a run from the checkpoint in its folder."""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import pickle
import platform
import shlex
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import Tensor

from bender import (
    __version__,
    checkpoint,
    data,
    export,
    models,
    recipes,
    rules,
    run_folder,
    sweep,
)
from bender.alignment import AlignmentRecorder, bent_layers
from bender.checkpoint import write_atomically
from bender.constraints import (
    ClipBinaryWeights,
    binary_layers,
    kernel_quantized_binary_layers,
)
from bender.data.augment import AUGMENTATIONS, CropFlip
from bender.data.folder import ImageError, describe_folder
from bender.optimizers import FlipRatio
from bender.run_folder import (
    LOCK,
    FolderBusy,
    FolderTaken,
    FolderUnusable,
    RecordError,
    lock_holder,
    results_in,
    write_curves,
    write_table,
)
from bender.schedules import parse_schedule, scheduler_factory
from bender.summary import summary
from bender.tensorboard import EpochScalars
from bender.training import (
    OPTIMIZERS,
    PRECISIONS,
    check_seed,
    process_group,
    resolve_device,
    rule_steps,
    train,
)

__all__ = ["LOCK", "lock_holder", "main"]

PROBE = 1000  # test examples on which --alignment compares the gradients
# where the optimizer flags' defaults come from, for their help (the settings live in recipes)
RECIPE_DEFAULTS = (
    f"the tutorials' {recipes.TUTORIAL_TRAINING['optimizer']} at lr "
    f"{recipes.TUTORIAL_TRAINING['lr']} without options, unless `bender recipes` says"
)


def _positive(kind: type, zero: bool = False):
    """An argparse type: a finite ``kind`` above 0 (at or above 0 with ``zero=True``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not ((value >= 0 if zero else value > 0) and math.isfinite(value)):
            wanted = "zero or positive" if zero else "positive"
            raise argparse.ArgumentTypeError(f"must be {wanted} and finite, got {text}")
        return value

    return parse


def _momentum(text: str) -> float:
    """An argparse type: SGD's momentum, a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _seeds(text: str) -> list[int]:
    try:
        seeds = [_seed(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated seeds such as 0,1,2, got {text!r}"
        ) from None
    return list(dict.fromkeys(seeds))


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated module names, got {text!r}")
    return names


def _out(text: str) -> Path:
    """An argparse type: a folder path, not empty (``--out ""`` would be the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got an empty path")
    return Path(text)


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    try:
        return check_seed(seed)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bender", description="Train networks with a bent chain rule (bender-torch)."
    )
    parser.add_argument("--version", action="version", version=f"bender {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("recipes", help="list the named experiments and the model and rule of each")
    sub.add_parser("models", help="list the model zoo (for train --model)")
    sub.add_parser("rules", help="list the learning rules (for train --rule)")
    m = sub.add_parser(
        "summary",
        help="a recipe's or a model's layers: 1-bit and float parameters, feedback, MACs per "
        "sample, memory",
    )
    m.add_argument("recipe", nargs="?", help="recipe name (see `bender recipes`), or --model")
    m.add_argument("--model", help="a model (see `bender models`), with --rule")
    m.add_argument("--rule", help="the learning rule (default with --model: bp)")
    m.add_argument(
        "--dataset", choices=list(data.DATASETS), default="mnist", help="(default: %(default)s)"
    )
    t = sub.add_parser(
        "train",
        help="train a recipe, or any model by any rule, and write metrics, curves and weights",
    )
    t.add_argument(
        "recipe", nargs="?", help="recipe name (see `bender recipes`), or --model and --rule"
    )
    t.add_argument(
        "--model",
        help="a model of the zoo (see `bender models`), torchvision:NAME, or "
        "package.module:function (your builder); trains on images, padded to 32×32 where the "
        "model needs it",
    )
    t.add_argument(
        "--rule", help="the learning rule (see `bender rules`; default with --model: bp)"
    )
    t.add_argument(
        "--blocks",
        type=_names,
        help="with --rule dfa: comma-separated names of the modules whose outputs receive the "
        "direct feedback (e.g. layer1.0,layer1.1), backprop inside them (default: the input of "
        "every layer)",
    )
    for flag, kind, default, text in (
        ("--epochs", _positive(int), 10, "passes over the training set"),
        (
            "--batch-size",
            _positive(int),
            64,
            "examples per step; the last partial batch is dropped",
        ),
        (
            "--seed",
            _seed,
            0,
            "seeds the initialisation and the batch order: on one machine, the same seed gives "
            "the same table",
        ),
    ):
        t.add_argument(flag, type=kind, default=default, help=f"{text} (default: %(default)s)")
    t.add_argument(
        "--optimizer",
        choices=list(OPTIMIZERS),
        help=f"(default: the recipe's; {RECIPE_DEFAULTS}); naming another than the recipe's "
        "drops the recipe's lr, momentum and weight decay",
    )
    t.add_argument(
        "--lr",
        type=_positive(float),
        help=f"learning rate (default: the recipe's; {RECIPE_DEFAULTS})",
    )
    t.add_argument(
        "--momentum",
        type=_momentum,
        help=f"SGD's momentum, in [0, 1) (default: the recipe's, else none; {RECIPE_DEFAULTS})",
    )
    t.add_argument(
        "--weight-decay",
        type=_positive(float, zero=True),
        help="L2 penalty on every parameter; AdamW's is decoupled (default: the recipe's, else "
        f"none; {RECIPE_DEFAULTS})",
    )
    t.add_argument(
        "--shuffle-once",
        action="store_true",
        help="shuffle the training set once and keep that batch order every epoch, as "
        "Bender.jl's tutorials do (default: reshuffle every epoch)",
    )
    t.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        help="augmentation of the training batches: crop-flip (on the device) pads by 4 pixels, "
        "crops at random and flips half the images left to right; resized-crop (image folders "
        "with --image-size) takes a random 8-100%% of each image, resizes and flips it "
        "(default: crop-flip for CIFAR, resized-crop for a folder with --image-size, else none)",
    )
    t.add_argument(
        "--schedule",
        help="learning-rate schedule, stepped after every epoch: step:E1,E2[:GAMMA] (×0.1 after "
        "those epochs), cosine, warmup:K, or step/cosine +warmup:K (default: none)",
    )
    t.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="bf16 or fp16 runs each training step's forward pass under torch.autocast "
        "(fp16 with a gradient scaler); weights and evaluation stay fp32 (default: %(default)s)",
    )
    t.add_argument(
        "--channels-last",
        action="store_true",
        help="keep conv kernels and image batches in channels_last memory (faster convolutions "
        "on GPUs with tensor cores; the same numbers up to summation order)",
    )
    t.add_argument(
        "--compile",
        action="store_true",
        help="run the training steps through torch.compile (Inductor): the first step compiles, "
        "then elementwise work is fused (a binary net trains about a fifth faster on a CPU); "
        "needs a C++ compiler on the CPU, Triton on a GPU",
    )
    t.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write every epoch's numbers, the learning rate and (with --alignment) the "
        "angles as TensorBoard scalars to OUT/tensorboard (needs the tensorboard package)",
    )
    t.add_argument(
        "--quantizer",
        choices=rules.one_bit_quantizers(),
        help="the 1-bit quantizer of weights and activations, for --rule binary and the "
        "recipes binary-mlp-bn and binary-cnn (default: ste_sign)",
    )
    t.add_argument(
        "--flip-ratio",
        action="store_true",
        help="after every epoch, record the share of binary weights whose sign changed during it "
        "(Larq's flip ratio) as the table's flip_ratio column",
    )
    t.add_argument(
        "--clip-weights",
        type=_positive(float),
        metavar="BOUND",
        help="after every step, clamp the latent weights of binary layers to [-BOUND, BOUND], "
        "as BinaryConnect does (Larq's weight_clip uses 1; default: no clipping)",
    )
    t.add_argument(
        "--dataset",
        choices=data.SOURCES,
        default="mnist",
        help="folder: the image folder that the data root names, holding ROOT/train/<class>/"
        "<image> and ROOT/val/<class>/<image> (torchvision's ImageFolder layout), read from "
        "disk batch by batch (default: %(default)s)",
    )
    t.add_argument(
        "--image-size",
        type=_positive(int),
        metavar="PIXELS",
        help="with --dataset folder: resize to PIXELS×PIXELS; trains on random resized crops "
        "(ImageNet's protocol: --augment resized-crop) and evaluates on centre crops (default: "
        "the images as they are, all of one size)",
    )
    _where_options(t)
    t.add_argument(
        "--out",
        type=_out,
        help="output folder (default: runs/RECIPE-DATASET-seedN, or runs/MODEL+RULE-...; the "
        "first free runs/...-seedN-K when that one holds an earlier run's results)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="let --out replace the results of an earlier run in that folder",
    )
    t.add_argument("--limit", type=_positive(int), help="use only the first N train/test examples")
    t.add_argument(
        "--val",
        type=_positive(int),
        metavar="N",
        help="set N training examples apart (a permutation seeded with 0) as a validation split: "
        "evaluated every epoch, and the weights of its best epoch kept in model-best.pt "
        "(default: none)",
    )
    t.add_argument(
        "--alignment",
        action="store_true",
        help="after every epoch, record the angles between W and B and between the bent and "
        f"backprop weight gradients (on the first {PROBE} test examples) in alignment.csv",
    )
    r = sub.add_parser(
        "resume",
        help="continue a stopped run from its checkpoint.pt, or train it for more epochs",
    )
    r.add_argument("folder", type=Path, help="the run's output folder (bender train's --out)")
    r.add_argument(
        "--epochs",
        type=_positive(int),
        help="epochs in all, those done included (default: the number the run asked for)",
    )
    _where_options(r)
    w = sub.add_parser(
        "sweep",
        allow_abbrev=False,  # --seed and --out are train's, to be refused, not read as --seeds
        help="train every rule × seed of one model (skipping finished runs) and write a table "
        "of mean ± sd test accuracy per rule and a plot of the curves",
    )
    w.add_argument("--rules", type=_names, required=True, help="comma-separated, e.g. bp,fa,dfa")
    w.add_argument(
        "--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated (default: 0,1,2)"
    )
    w.add_argument("--model", default="mlp", help="see `bender models` (default: %(default)s)")
    w.add_argument(
        "--jobs",
        type=_positive(int),
        help="runs at a time (default: one per device of --devices, else 1)",
    )
    w.add_argument(
        "--devices",
        type=_names,
        help="comma-separated devices the runs take turns on, e.g. cuda:0,cuda:1: each run "
        "gets the least busy one (default: each run's --device, else auto)",
    )
    w.add_argument(
        "--out",
        type=_out,
        help="the sweep's folder (default: runs/sweep-MODEL-DATASET); each run in a subfolder",
    )
    e = sub.add_parser(
        "export",
        help="write a trained binary run's weights as packed bits (1 bit per binary weight)",
    )
    e.add_argument("folder", type=Path, help="the run's output folder (bender train's --out)")
    e.add_argument("--out", type=_out, help="the file (default: FOLDER/model-1bit.pt)")
    return parser


def _where_options(p: argparse.ArgumentParser) -> None:
    """Options of ``train`` and ``resume`` that say where to run and what to show, not what
    to train: a resumed run may take other values than its start."""
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA if present), cpu, cuda, cuda:1 (default: %(default)s)",
    )
    p.add_argument(
        "--data-dir",
        help="data root (default: $BENDER_DATA, else ~/.cache/bender); for --dataset folder the "
        "image folder, which resume finds from the record",
    )
    p.add_argument(
        "--workers",
        type=_positive(int, zero=True),
        default=min(8, os.cpu_count() or 1),
        help="for an image folder: processes that read and decode the images (default: "
        "%(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the per-epoch progress bar")
    p.add_argument(
        "--threads",
        type=_positive(int),
        help="CPU threads for torch (default: torch's, one per core); on a busy or shared "
        "machine 1 can be several times faster. Recorded in metrics.json: CPU sums, and so the "
        "last digits of the table, depend on it",
    )


def _claim(args: argparse.Namespace) -> AbstractContextManager[Path]:
    """The run's folder, locked and free of earlier results: ``--out`` (its results removed only
    with ``--overwrite``), else the first free ``runs/RECIPE-DATASET-seedN[-K]``."""
    if args.out is not None:
        return run_folder.claim(args.out, overwrite=args.overwrite)
    base = Path("runs") / f"{_experiment(args)}-{args.dataset}-seed{args.seed}"
    return run_folder.claim_first_free(base)


def _describe_optimizer(settings: dict) -> str:
    """``sgd lr 0.05, momentum 0.9, weight_decay 0.001``: an optimizer and its settings."""
    options = "".join(f", {k} {v}" for k, v in settings["optimizer_options"].items())
    return f"{settings['optimizer']} lr {settings['lr']}{options}"


def _own_training(name: str) -> str:
    """For a recipe that trains otherwise than the tutorials: how, after a semicolon."""
    recipe = recipes.get(name)
    own = f"; trains with {_describe_optimizer(recipes.train_settings(name))}"
    steps = f"; after every step {', '.join(map(repr, recipe.after_step))}"
    same = f" [= --model {recipe.model} --rule {recipe.rule}]" if recipe.model else ""
    return same + (own if recipe.training else "") + (steps if recipe.after_step else "")


def _experiment(args: argparse.Namespace) -> str:
    """The recipe's name, or ``MODEL+RULE``."""
    return args.recipe or f"{args.model}+{args.rule}"


def _check_experiment(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A usage error unless the arguments name one recipe, or a model and a rule that exist
    (``--rule`` defaults to bp with ``--model``)."""
    if args.recipe is not None:
        if args.model or args.rule or args.blocks:
            parser.error("name a recipe or give --model and --rule, not both")
        _known_recipe(args.recipe, parser)
        if args.dataset not in data.IMAGE_SHAPES or data.IMAGE_SHAPES[args.dataset] != (1, 28, 28):
            parser.error(
                f"the recipes are MNIST-family networks (784 inputs); for {args.dataset} give a "
                "model and a rule, e.g. --model resnet20 --rule fa"
            )
        return
    if args.model is None:
        parser.error(
            "name a recipe (see `bender recipes`) or a model with --model (see `bender models`) "
            "and a rule with --rule (see `bender rules`)"
        )
    args.rule = args.rule or "bp"
    try:
        rules.get_rule(args.rule)
        models.check_model_name(args.model)
    except ValueError as err:
        parser.error(str(err))
    if args.blocks and not rules.get_rule(args.rule).direct_feedback:
        parser.error(f"--blocks is for --rule dfa, not {args.rule}")


def _default_augment(dataset: str, image_size: int | None = None) -> str:
    """``--augment``'s default: CIFAR's crop and flip for CIFAR, ImageNet's random resized
    crops for an image folder resized to ``image_size``, none for the MNIST family."""
    if dataset == "folder":
        return "none" if image_size is None else "resized-crop"
    return "crop-flip" if dataset in data.CIFAR else "none"


def _dataset_shape(args: argparse.Namespace) -> tuple[int, tuple[int, int, int]]:
    """The number of classes and ``(channels, height, width)`` of the run's dataset (an image
    folder's as :func:`_describe_folder` found them)."""
    if args.dataset == "folder":
        return args.folder_shape
    return data.NUM_CLASSES[args.dataset], data.IMAGE_SHAPES[args.dataset]


def _describe_folder(
    args: argparse.Namespace, parser: argparse.ArgumentParser, before: str, after: str = ""
) -> None:
    """``args.folder_shape``: the classes and image shape of the image folder ``--data-dir``
    (its class folders and one image's header, read once for the command); a usage error,
    the reason between ``before`` and ``after``, when the folder is not in the expected layout."""
    try:
        args.folder_shape = describe_folder(args.data_dir, args.image_size)
    except (OSError, ValueError) as err:
        parser.error(f"{before}{err}{after}")


def _recorded_network(record: dict) -> dict:
    """The arguments :func:`_build` takes, as the run's ``metrics.json`` records them."""
    return {
        "recipe": record["recipe"],
        "model": record.get("network"),
        "rule": record.get("rule"),
        "blocks": record.get("blocks"),
        "seed": record["seed"],
        "dataset": record["dataset"],
        "quantizer": record.get("quantizer"),
        "image_size": record.get("image_size"),
    }


def _image_shape(args: argparse.Namespace) -> tuple[int, int, int]:
    """The images the run's model gets: the dataset's (MNIST-family 1×28×28, CIFAR 3×32×32),
    padded to the size the zoo model needs (LeNet-5: 32×32)."""
    channels, height, width = _dataset_shape(args)[1]
    return (channels, *(models.model_image_size(args.model) or (height, width)))


def _build(args: argparse.Namespace) -> torch.nn.Module:
    """The run's network, initialised from its seed: the recipe's, or the model by the rule."""
    quantizer = getattr(args, "quantizer", None)
    if args.recipe is not None:
        return recipes.build(args.recipe, args.seed, quantizer=quantizer)
    classes = _dataset_shape(args)[0]
    return recipes.build_network(
        args.model,
        args.rule,
        _image_shape(args),
        classes,
        seed=args.seed,
        blocks=args.blocks,
        quantizer=quantizer,
    )


def _known_recipe(name: str, parser: argparse.ArgumentParser, where: str = "") -> None:
    """A usage error that lists the valid recipes, unless ``name`` is one."""
    try:
        recipes.get(name)
    except KeyError as err:
        parser.error(f"{where}{err.args[0]}")


def _summary(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``bender summary``: the table of :func:`bender.summary.summary` for one input image."""
    args.blocks, args.seed = None, 0
    _check_experiment(args, parser)
    try:
        model = _build(args)
    except (ValueError, TypeError) as err:
        parser.error(f"{_experiment(args)}: {err}")
    shape = (784,) if args.recipe else _image_shape(args)
    seeded = torch.Generator(device="cpu").manual_seed(0)
    image = torch.rand(1, *shape, generator=seeded, device="cpu")  # pixels in [0, 1]
    table = summary(model, image)
    print(table.to_string(index=False, formatters={"memory_kib": "{:.1f}".format}))
    total = table.iloc[-1]
    if total["params_1bit"]:
        weight = next(model.parameters())
        full = (total["params_1bit"] + total["params_float"]) * weight.element_size() / 1024
        dtype = str(weight.dtype).removeprefix("torch.")
        print(
            f"weights for inference: {total['memory_kib']:.1f} KiB; all in {dtype} they would "
            f"take {full:.1f} KiB ({full / total['memory_kib']:.1f}× more)"
        )
        macs = total["macs_1bit"] + total["macs_float"]
        print(
            f"multiply-accumulates per sample: {macs}, of which {total['macs_1bit']} 1-bit "
            f"({total['macs_1bit'] / macs:.1%}: both operands ±1, XNOR and popcount)"
        )
    return 0


def _optimizer_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill in ``args.optimizer``, ``args.lr`` and ``args.optimizer_options``: the recipe's
    settings, with those the flags give in their place."""
    settings = recipes.train_settings(args.recipe, args.optimizer, rule=args.rule)
    args.optimizer = settings["optimizer"]
    args.lr = settings["lr"] if args.lr is None else args.lr
    options = settings["optimizer_options"]
    for key in ("momentum", "weight_decay"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if "momentum" in options and args.optimizer != "sgd":
        parser.error(f"--momentum is SGD's; {args.optimizer} takes none (or pass --optimizer sgd)")
    args.optimizer_options = options


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``bender train``: a new run, in a folder that holds no earlier results."""
    _check_experiment(args, parser)
    _optimizer_settings(args, parser)
    _check_dataset(args, parser)
    if args.augment is None:
        args.augment = _default_augment(args.dataset, args.image_size)
    if args.augment == "crop-flip" and args.recipe is not None:
        parser.error(
            "--augment crop-flip crops images, but the recipes take flattened ones; give a "
            "model and a rule (--model cnn --rule fa) to augment"
        )
    if args.schedule is not None:
        try:
            parse_schedule(args.schedule, args.epochs)
        except ValueError as err:
            parser.error(str(err))
    try:
        model = _build(args)
    except (ValueError, TypeError) as err:  # a model that cannot be built or bent
        parser.error(f"{_experiment(args)}: {err}")
    if args.alignment:
        try:
            bent_layers(model)
        except ValueError:
            parser.error(
                f"--alignment compares a bent rule with backprop, but {_experiment(args)} has no "
                "bent layer; use a feedback-alignment or DFA recipe or rule"
            )
    if args.flip_ratio and not binary_layers(model):
        parser.error(
            f"--flip-ratio counts sign flips of binary weights, but {_experiment(args)} has "
            "none; use a binary recipe or --rule binary"
        )
    if args.clip_weights and not binary_layers(model):
        parser.error(
            f"--clip-weights clamps the latent weights of binary layers, but {_experiment(args)} "
            "has none; use a binary recipe such as binary-mlp, or --rule binary"
        )
    world, rank = process_group()
    if args.batch_size % world:
        parser.error(
            f"--batch-size {args.batch_size} must split evenly among the {world} processes "
            f"(torchrun --nproc_per_node and --nnodes); give a multiple of {world}"
        )
    if args.out is not None and rank == 0:  # refused before the data is loaded; decided
        try:  # under the lock
            run_folder.check_can_be_folder(args.out)
            run_folder.check_free(args.out, args.overwrite)
        except FolderUnusable as err:
            parser.error(f"--out: {err}")
        except FolderTaken as err:
            parser.error(str(err))
    loaded = _load(args, parser)
    if isinstance(loaded, int):
        return loaded
    if rank > 0:  # rank 0 decides the folder and writes in it; the others train beside it
        return _fit(args, model, *loaded, args.out or Path("runs"), None)
    try:  # the folder is decided, locked and checked in one step: see run_folder.claim
        with _claim(args) as out:
            return _fit(args, model, *loaded, out, None)
    except (FolderBusy, FolderTaken) as err:
        parser.error(str(err))
    except FolderUnusable as err:
        print(f"bender: error: {err}", file=sys.stderr)
        return 1


def _check_dataset(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A usage error for the image-folder flags given without a folder, a folder without its
    root, or random resized crops without a size to resize them to."""
    if args.dataset != "folder":
        if args.image_size is not None or args.augment == "resized-crop":
            parser.error("--image-size and --augment resized-crop are for --dataset folder")
        return
    if args.data_dir is None:
        parser.error(
            "--dataset folder needs --data-dir ROOT, the folder holding ROOT/train/<class>/"
            "<image> and ROOT/val/<class>/<image>"
        )
    if args.augment == "resized-crop" and args.image_size is None:
        parser.error("--augment resized-crop resizes the crops to --image-size; give it")
    _describe_folder(args, parser, "--data-dir: ")


def _load_dataset(args: argparse.Namespace) -> data.Dataset:
    """The run's dataset as ``--dataset`` names it, read from ``--data-dir``."""
    if args.dataset == "folder":
        return data.load_image_folder(
            args.data_dir,
            size=args.image_size,
            workers=args.workers,
            random_crop=args.augment == "resized-crop",
        )
    dataset = data.load(args.dataset, args.data_dir, flatten=args.recipe is not None)
    if args.recipe is None:
        dataset = data.pad_images(dataset, _image_shape(args)[1:])
    return dataset


def _load(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The dataset and the device the run asks for, with ``--threads`` applied; or the exit
    code 1 after a message, when either cannot be had."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        dataset = _load_dataset(args)
    except (OSError, RuntimeError, ValueError) as err:
        print(f"bender: error: {err}", file=sys.stderr)
        return 1
    if args.limit:
        dataset = dataset.subset(args.limit, args.limit)
    if args.val:
        try:
            dataset = dataset.with_validation(args.val)
        except ValueError as err:
            parser.error(f"--val: {err}")
    if args.dataset in (*data.CIFAR, "folder"):  # per channel, by the run's training images
        dataset = data.normalize(dataset)
    if len(dataset.train) < args.batch_size:  # no complete batch: an epoch would do nothing
        limited = f" with --limit {args.limit}" if args.limit else ""
        parser.error(
            f"--batch-size {args.batch_size} is larger than the training set "
            f"({len(dataset.train)} examples{limited}); the last partial batch is dropped, "
            "so an epoch would have no batch"
        )
    return dataset, device


def _resume(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``bender resume``: the run in ``args.folder``, continued from its last checkpoint.

    The folder's lock is taken first; the record and the checkpoint are read under it, so no
    other process can change them between the reading and the writing.
    """
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder; name the folder of a bender train run")
    if process_group()[1] > 0:  # rank 0 holds the lock and writes; the others only read
        return _resume_locked(args, parser)
    try:
        with run_folder.locked(args.folder, create=False):
            return _resume_locked(args, parser)
    except FolderBusy as err:
        parser.error(str(err))
    except FolderUnusable as err:
        print(f"bender: error: {err}", file=sys.stderr)
        return 1


def _train_command(record: dict, folder: Path) -> str:
    """The ``bender train`` command that starts the run of ``record`` again in ``folder``."""
    if record["recipe"] is not None:
        words = ["bender", "train", record["recipe"]]
    else:
        words = ["bender", "train", "--model", record["network"], "--rule", record["rule"]]
        words += ["--blocks", ",".join(record["blocks"])] if record.get("blocks") else []
    words += ["--dataset", record["dataset"]]
    words += ["--epochs", record["epochs_requested"], "--seed", record["seed"]]
    words += ["--batch-size", record["batch_size"]]
    words += ["--optimizer", record.get("optimizer", recipes.TUTORIAL_TRAINING["optimizer"])]
    words += ["--lr", record["lr"]]
    for key, value in record.get("optimizer_options", {}).items():
        words += [f"--{key.replace('_', '-')}", value]
    words += [] if record["reshuffle"] else ["--shuffle-once"]
    default_augment = _default_augment(record["dataset"], record.get("image_size"))
    augment = record.get("augment", default_augment)
    words += ["--augment", augment] if augment != default_augment else []
    words += ["--schedule", record["schedule"]] if record.get("schedule") else []
    precision = record.get("precision", "fp32")
    words += ["--precision", precision] if precision != "fp32" else []
    for key in ("limit", "clip_weights", "val", "quantizer", "image_size", "data_dir"):
        if record.get(key) is not None:
            words += [f"--{key.replace('_', '-')}", record[key]]
    words += ["--alignment"] if "alignment_probe" in record else []
    words += ["--tensorboard"] if record.get("tensorboard") else []
    words += ["--channels-last"] if record.get("channels_last") else []
    words += ["--compile"] if record.get("compile") else []
    words += ["--flip-ratio"] if record.get("flip_ratio") else []
    words += ["--out", folder, "--overwrite"]
    return " ".join(shlex.quote(str(word)) for word in words)


def _resume_locked(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``bender resume``'s work, with the folder's lock held."""
    folder = args.folder
    leader = process_group()[1] == 0
    if leader:
        run_folder.remove_partials(folder)  # left by a write that a kill cut short
    try:
        record = run_folder.read_record(folder)
    except RecordError as err:
        parser.error(str(err))
    _check_recorded(record, folder, parser)
    if not (folder / "checkpoint.pt").exists():
        parser.error(
            f"{folder} holds no checkpoint.pt: the run stopped before its first epoch was "
            "saved, so there is nothing to resume. Start it again with: "
            f"{_train_command(record, folder)}"
        )
    try:
        state = checkpoint.load(folder / "checkpoint.pt")
    except (FileNotFoundError, ValueError) as err:
        parser.error(f"{folder} cannot be resumed: {err}")
    epochs = args.epochs or record["epochs_requested"]
    if epochs == state["epoch"]:  # a finished run: rewrite what a kill may have left missing
        return _repair(folder, record, state["epoch"]) if leader else 0
    if epochs < state["epoch"]:
        parser.error(
            f"{folder} holds {state['epoch']} trained epoch(s) and the run asks for {epochs}; "
            f"pass --epochs N with N > {state['epoch']} to train on"
        )
    settings = _recorded_network(record) | {key: record[key] for key in ("lr", "batch_size")}
    run = argparse.Namespace(
        **vars(args)
        | settings
        | {
            "epochs": epochs,
            "shuffle_once": not record["reshuffle"],
            "limit": record.get("limit"),
            "clip_weights": record.get("clip_weights"),
            "augment": record.get(
                "augment", _default_augment(record["dataset"], record.get("image_size"))
            ),
            "data_dir": args.data_dir or record.get("data_dir"),
            "schedule": record.get("schedule"),
            "precision": record.get("precision", "fp32"),
            "channels_last": record.get("channels_last", False),
            "compile": record.get("compile", False),
            "tensorboard": record.get("tensorboard", False),
            "val": record.get("val"),
            "flip_ratio": record.get("flip_ratio", False),
            # runs recorded before the optimizer flags trained with the tutorials' settings
            "optimizer": record.get("optimizer", recipes.TUTORIAL_TRAINING["optimizer"]),
            "optimizer_options": record.get("optimizer_options", {}),
            "alignment": "alignment_probe" in record,
        }
    )
    if run.dataset == "folder":
        after = "; give where it is with --data-dir"
        _describe_folder(run, parser, f"{folder}: the run's image folder: ", after)
    model = _rebuilt(run, folder, parser)
    loaded = _load(run, parser)
    if isinstance(loaded, int):
        return loaded
    return _fit(run, model, *loaded, folder, (record, state))


def _check_recorded(record: dict, folder: Path, parser: argparse.ArgumentParser) -> None:
    """A usage error unless the record's recipe, or model and rule, exist here."""
    where = f"{folder / 'metrics.json'}: "
    if record["recipe"] is not None:
        _known_recipe(record["recipe"], parser, where=where)
    elif record["rule"] not in rules.RULES:
        parser.error(
            f"{where}unknown rule {record['rule']!r}; this bender has {', '.join(rules.RULES)}"
        )


def _rebuilt(run: argparse.Namespace, folder: Path, parser: argparse.ArgumentParser):
    """The recorded run's network as it was built at its start."""
    try:
        return _build(run)
    except (ValueError, TypeError) as err:
        parser.error(f"{folder}: the run's network cannot be built again: {err}")


def _repair(folder: Path, record: dict, epochs: int) -> int:
    """A finished run's derived files rewritten where missing; the exit code."""
    try:
        done = run_folder.repair(folder, record, epochs)
    except RecordError as err:
        print(f"bender: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"bender: error: {folder} could not be repaired: {err}", file=sys.stderr)
        return 1
    repaired = f"; {', '.join(done)}" if done else "; all its files are there"
    print(
        f"{folder} holds a finished run of {epochs} epoch(s){repaired}. Pass --epochs N with "
        f"N > {epochs} to train on."
    )
    return 0


def _resumed_record(record: dict, state: dict, args: argparse.Namespace, device) -> dict:
    """The run's record, asking for ``args.epochs`` now and noting this resumption; says so on
    stderr when the device, thread count or torch differ from the run's start, since CPU sums
    depend on them."""
    now = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__}
    changed = [f"{k} {record.get(k)} → {v}" for k, v in now.items() if record.get(k) != v]
    if changed:
        print(
            f"bender: note: {'; '.join(changed)} since the run started, so the epochs from "
            "here may differ in the last digits from those of a run that never stopped",
            file=sys.stderr,
        )
    record = {k: v for k, v in record.items() if k != "stopped"}
    record["epochs_requested"] = args.epochs
    if record["dataset"] == "folder":  # where the images are now (--data-dir, if moved)
        record["data_dir"] = str(Path(args.data_dir).resolve())
    record["resumed"] = [*record.get("resumed", []), {"after_epoch": state["epoch"], **now}]
    return record


def _alignment_rows(out: Path, epochs: int) -> list[dict]:
    """The alignment.csv rows of the epochs up to ``epochs`` (a later one came after the last
    checkpoint and is measured again).

    Read with Python's ``float``, which gives back every digit ``to_csv`` wrote (an empty field is
    NaN): pandas' own parser can be one unit in the last place off, depending on its version
    and options, and the resumed run's alignment.csv must equal the one of a run that never
    stopped.
    """
    path = out / "alignment.csv"
    if not path.exists():
        return []
    with path.open(newline="") as file:
        rows = [
            {
                name: int(text) if name == "epoch" else float(text or "nan")
                for name, text in row.items()
            }
            for row in csv.DictReader(file)
        ]
    return [row for row in rows if row["epoch"] <= epochs]


def _rows_so_far(state: dict, record: dict) -> list[dict]:
    """The checkpoint's rows, with the columns that only metrics.json keeps for the same
    epochs (``flip_ratio``)."""
    recorded = {row.get("epoch"): row for row in record.get("epochs", []) if isinstance(row, dict)}
    rows = []
    for row in state["rows"]:
        extra = recorded.get(row["epoch"], {})
        rows.append(row | {k: v for k, v in extra.items() if k not in row and k == "flip_ratio"})
    return rows


def _first_examples(split: data.Split | data.FolderSplit, n: int) -> tuple[Tensor, Tensor]:
    """The inputs and labels of the first ``n`` examples of ``split`` (read, for a folder)."""
    if isinstance(split, data.Split):
        return split.x[:n], split.y[:n]
    return next(split.batches(torch.arange(min(n, len(split))), n))


def _resumable_hint(out: Path, data_dir: str | None) -> str:
    """How to go on from ``out``'s checkpoint, if an epoch was completed and saved."""
    if not (out / "checkpoint.pt").exists():
        return ""
    where = "" if data_dir is None else f" --data-dir {data_dir}"
    return f"; `bender resume {out}{where}` continues from the last epoch saved"


def _fit(
    args: argparse.Namespace,
    model: torch.nn.Module,
    dataset: data.Dataset,
    device: torch.device,
    out: Path,
    resumed: tuple[dict, dict] | None,
) -> int:
    """Train, writing the results to ``out`` after every epoch; the exit code."""
    state = None
    # the rule's own steps (a weight mirror): a recipe's are given to train, a model's ride on it
    after_step = list(recipes.get(args.recipe).after_step) if args.recipe else []
    if args.clip_weights:
        after_step.append(ClipBinaryWeights(args.clip_weights))
    every_step = [*rule_steps(model), *after_step]
    steps = "".join(f", then {fn!r}" for fn in every_step)  # for the first line printed
    if resumed is None:
        record = {
            "recipe": args.recipe,
            "network": args.model,
            "rule": args.rule,
            "blocks": args.blocks,
            "dataset": args.dataset,
            "epochs_requested": args.epochs,
            "optimizer": args.optimizer,
            "optimizer_options": args.optimizer_options,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "reshuffle": not args.shuffle_once,
            "device": str(device),
            "threads": torch.get_num_threads(),  # CPU results depend on it (summation order)
            "processes": process_group()[0],
            "limit": args.limit,
            "clip_weights": args.clip_weights,
            "augment": args.augment,
            "schedule": args.schedule,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "compile": args.compile,
            "tensorboard": args.tensorboard,
            "val": args.val,
            "quantizer": args.quantizer,
            "image_size": args.image_size,
            "flip_ratio": args.flip_ratio,
            "normalize": getattr(dataset, "stats", None),
            # an image folder's root, which resume reads again (a dataset name finds its own)
            "data_dir": str(Path(args.data_dir).resolve()) if args.dataset == "folder" else None,
            "after_step": [repr(fn) for fn in every_step],
            "bender": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "model": repr(model),
        }
        print(
            f"{_experiment(args)} on {args.dataset} ({device}), seed {args.seed}, "
            f"{_describe_optimizer(vars(args))}{steps}, writing to {out}:"
        )
    else:
        record, state = resumed
        record = _resumed_record(record, state, args, device)
        print(
            f"resuming {_experiment(args)} on {args.dataset} ({device}), seed {args.seed}, "
            f"{_describe_optimizer(vars(args))}{steps}, after epoch {state['epoch']} of "
            f"{args.epochs}, writing to {out}:"
        )
    print(model)

    recorder = None
    if args.alignment:
        recorder = AlignmentRecorder(*_first_examples(dataset.test, PROBE))
        if state is None:
            recorder({"epoch": 0}, model)  # the starting point, before any training
            record["alignment_probe"] = f"first {len(recorder.x)} test examples"
        else:
            recorder.rows = _alignment_rows(out, state["epoch"])

    leader = process_group()[1] == 0  # the process that writes: rank 0, or the only one
    scalars = None
    if args.tensorboard and leader:
        try:
            scalars = EpochScalars(out / "tensorboard", 1 if state is None else state["epoch"] + 1)
        except ValueError as err:
            print(f"bender: error: {err}", file=sys.stderr)
            return 1
    schedules = []  # the scheduler train builds (and restores on resume), for its factor

    def make_schedule(optimizer: torch.optim.Optimizer):
        schedules.append(scheduler_factory(args.schedule, args.epochs)(optimizer))
        return schedules[-1]

    def save(row: dict, model: torch.nn.Module) -> None:  # after every epoch: nothing is lost
        saving.append(row["epoch"])
        write_atomically(out / "model.pt", lambda p: torch.save(model.state_dict(), p))
        history.append(row)  # after the weights: the table never runs ahead of model.pt
        write_table(out, run_folder.table_of(history), record)
        if recorder is not None:
            recorder(row, model)
            angles = recorder.table()
            write_atomically(out / "alignment.csv", lambda p: angles.to_csv(p, index=False))
        if "acc_val" in row and row["acc_val"] > record.get("best", {}).get("acc_val", -1.0):
            write_atomically(out / "model-best.pt", lambda p: torch.save(model.state_dict(), p))
            record["best"] = {k: row[k] for k in ("epoch", "acc_val", "acc_test")}
            write_table(out, run_folder.table_of(history), record)
        if scalars is not None:  # the learning rate this epoch trained with
            factor = schedules[0].lr_lambdas[0](row["epoch"] - 1) if schedules else 1.0
            lr = args.lr * factor
            scalars(row, lr, recorder.rows[-1] if recorder is not None else None)

    history: list[dict] = [] if state is None else _rows_so_far(state, record)
    flips = None
    if args.flip_ratio:
        if state is not None:  # count from the signs the checkpoint's weights have
            model.load_state_dict(state["model"])
        flips = FlipRatio(model)
    saving: list[int] = []  # the epochs whose results were being written
    interrupted = False
    try:
        table = train(
            model,
            dataset,
            epochs=args.epochs,
            lr=args.lr,
            optimizer=args.optimizer,
            optimizer_options=args.optimizer_options,
            batch_size=args.batch_size,
            device=device,
            seed=args.seed,
            reshuffle=not args.shuffle_once,
            callbacks=[save] if flips is None else [flips, save],
            progress=not args.no_progress,
            checkpoint=out / "checkpoint.pt" if leader else None,
            resume=state,
            after_step=after_step,
            augment=CropFlip() if args.augment == "crop-flip" else None,
            precision=args.precision,
            channels_last=args.channels_last,
            compile=args.compile,
            scheduler=None if args.schedule is None else make_schedule,
        )
    except KeyboardInterrupt:  # Ctrl-C: finish the record of the epochs completed so far
        interrupted = True
        table = run_folder.table_of(history)
        table.attrs["stopped"] = f"interrupted (Ctrl-C) in epoch {len(history) + 1}"
    except ImageError as err:  # an image of the folder, read in the middle of an epoch
        print(
            f"bender: error: {err}. The run stopped; {out} keeps the files written "
            f"before{_resumable_hint(out, args.data_dir)}.",
            file=sys.stderr,
        )
        return 1
    except OSError as err:  # a result file could not be written: disk full, folder gone
        if history:  # the numbers are in memory: show them, as they may be nowhere else
            print(run_folder.table_of(history).round(3).to_string(index=False))
        where = f"writing the results of epoch {saving[-1]}" if saving else "training"
        print(
            f"bender: error: {where} failed: {err}. The run stopped; {out} keeps the files "
            f"written before{_resumable_hint(out, args.data_dir)}.",
            file=sys.stderr,
        )
        return 1
    except ValueError as err:
        if state is None or saving:  # not train refusing the checkpoint: show it in full
            raise
        print(f"bender: error: {out} cannot be resumed: {err}", file=sys.stderr)
        return 1
    finally:
        if scalars is not None:
            scalars.close()
    if len(table):
        print(table.round(3).to_string(index=False))
    if recorder is not None:
        print("angles in degrees (weight_angle: W vs B; grad_angle: bent vs backprop ∂W):")
        print(recorder.table().round(1).to_string(index=False))
    stopped = table.attrs.get("stopped")
    if not leader:
        return 1 if stopped else 0
    try:
        if stopped:
            record["stopped"] = stopped
            write_table(out, table, record)
        if len(table):
            write_curves(out, table, record)
    except OSError as err:  # the epochs' own files were written: only these are missing
        print(
            f"bender: error: {err}. {out} keeps every epoch's results; `bender resume {out}` "
            "rewrites what is missing once the disk can be written",
            file=sys.stderr,
        )
        return 1
    if stopped:
        then = _resumable_hint(out, args.data_dir) if interrupted else ""
        print(f"bender: error: {stopped}; results so far are in {out}{then}", file=sys.stderr)
        return 130 if interrupted else 1  # 130: the shell's code for a run stopped by Ctrl-C
    reference = recipes.get(args.recipe).reference if args.recipe else ""
    if reference and args.dataset == "mnist":  # the tutorials' numbers are MNIST's
        print(f"for comparison, {reference}")
    print(f"wrote {', '.join(results_in(out))} to {out}")
    return 0


def _export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``bender export``: the run's ``model.pt`` with its binary weights packed, 1 bit each."""
    folder = args.folder
    out = args.out or folder / "model-1bit.pt"
    if not folder.is_dir():
        parser.error(f"{folder} is not a folder; name the folder of a bender train run")
    try:
        record = run_folder.read_record(folder)
    except RecordError as err:
        parser.error(str(err))
    _check_recorded(record, folder, parser)
    model = _rebuilt(argparse.Namespace(**_recorded_network(record)), folder, parser)
    try:
        model.load_state_dict(
            torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        )
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        # torch's own message would suggest loading it unsafely: name the kind of failure only
        parser.error(
            f"{folder / 'model.pt'} cannot be read as this run's weights ({type(err).__name__}): "
            "it is damaged, or not the model.pt bender train wrote"
        )
    try:
        export.save(model, out)
    except ValueError as err:  # no binary layer: nothing to pack
        parser.error(
            f"{run_folder.experiment_name(record)}: {err}; export a run of a recipe such as "
            "binary-mlp-bn, or of --rule binary"
        )
    except OSError as err:
        print(f"bender: error: {err}", file=sys.stderr)
        return 1
    size, packed = (folder / "model.pt").stat().st_size, out.stat().st_size
    print(f"wrote {out}: {packed} bytes, 1/{size / packed:.1f} of model.pt's {size} bytes")
    layers = kernel_quantized_binary_layers(model)
    weights = sum(layer.latent_weight().numel() for layer in layers.values())
    bits = -(-weights // 8)
    print(
        f"the {len(layers)} binary layers' {weights} weights: {bits} bytes packed, "
        f"1/{weights * 4 / bits:.1f} of their {weights * 4} bytes in float32; the rest is "
        "the float parameters and buffers inference reads (batch norm, biases, the first "
        "layer's input) and the file's own structure"
    )
    return 0


def _sweep(
    args: argparse.Namespace, train_flags: list[str], parser: argparse.ArgumentParser
) -> int:
    """``bender sweep``: the flags it does not know go to every ``bender train``; they are
    checked here, with the first rule, before anything runs."""
    args.rules = list(dict.fromkeys(args.rules))  # each rule once
    try:
        for rule in args.rules:
            rules.get_rule(rule)
    except ValueError as err:
        parser.error(str(err))
    trial = parser.parse_args(
        ["train", "--model", args.model, "--rule", args.rules[0], *train_flags]
    )
    if trial.out is not None or trial.seed != 0 or trial.recipe is not None:
        parser.error(
            "the sweep sets each run's --out and --seed; give --seeds and the sweep's --out"
        )
    _check_experiment(trial, parser)
    if args.devices and "--device" in train_flags:
        parser.error("give the devices with --devices or --device, not both")
    jobs = args.jobs or (len(args.devices) if args.devices else 1)
    out = args.out or Path("runs") / f"sweep-{args.model}-{trial.dataset}"
    title = f"{args.model} on {trial.dataset}, {len(args.seeds)} seed(s)"
    try:
        trained = sweep.sweep(
            args.model, args.rules, args.seeds, out, train_flags, jobs, args.devices
        )
        table = sweep.write_results(out, args.model, args.rules, args.seeds, title)
    except (RuntimeError, OSError) as err:
        print(f"bender: error: {err}", file=sys.stderr)
        return 1
    print(
        f"trained {len(trained)} run(s), {len(args.rules) * len(args.seeds) - len(trained)} "
        f"already finished, in {out}"
    )
    print(sweep.markdown(table, title))
    print(f"wrote summary.csv, summary.md, curves.png to {out}")
    return 0


def _in_process_group(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``train`` or ``resume`` as one process of a ``torchrun`` group: the group is joined
    (NCCL on CUDA, gloo on the CPU), rank 0 prints and writes, and the group is left after."""
    dist = torch.distributed
    cuda = args.device != "cpu" and torch.cuda.is_available()
    try:
        dist.init_process_group("nccl" if cuda else "gloo")
    except (ValueError, RuntimeError) as err:  # WORLD_SIZE set, but not by torchrun
        print(
            f"bender: error: WORLD_SIZE={os.environ['WORLD_SIZE']} asks for a process group, "
            f"which could not be joined ({err}); start bender with torchrun, or unset WORLD_SIZE",
            file=sys.stderr,
        )
        return 1
    quiet = open(os.devnull, "w") if dist.get_rank() > 0 else None  # noqa: SIM115
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            return _train(args, parser) if args.command == "train" else _resume(args, parser)
    finally:
        if quiet:
            quiet.close()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "sweep":
        return _sweep(args, extra, parser)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("train", "resume") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _in_process_group(args, parser)
    if args.command == "recipes":
        width = max(map(len, recipes.RECIPES))
        for recipe in recipes.RECIPES.values():
            print(f"{recipe.name:<{width}}  {recipe.summary}{_own_training(recipe.name)}")
        return 0
    if args.command == "models":
        width = max(map(len, models.MODELS))
        for spec in models.MODELS.values():
            size = (
                ""
                if spec.image_size is None
                else f" (needs {spec.image_size[0]}×{spec.image_size[1]})"
            )
            print(f"{spec.name:<{width}}  {spec.summary}{size}")
        print(
            "also: torchvision:NAME (any torchvision classification model), "
            "package.module:function (your builder)"
        )
        return 0
    if args.command == "rules":
        width = max(map(len, rules.RULES))
        for rule in rules.RULES.values():
            own = (
                ""
                if rule.training == rules.TUTORIAL_TRAINING
                else f"; trains with {_describe_optimizer(rule.training)}"
            )
            print(f"{rule.name:<{width}}  {rule.summary} ({rule.reference}){own}")
        return 0
    if args.command == "summary":
        return _summary(args, parser)
    if args.command == "resume":
        return _resume(args, parser)
    if args.command == "export":
        return _export(args, parser)
    return _train(args, parser)


if __name__ == "__main__":
    sys.exit(main())

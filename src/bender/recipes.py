"""Named experiments: the Bender.jl tutorials' networks, small CNNs, and backprop baselines.

Every recipe trains with the tutorials' settings unless told otherwise: MNIST flattened to 784
floats in [0, 1], mini-batches of 64 (last partial batch dropped), Adam with learning rate 3e-4,
logit cross-entropy, 10 epochs. One difference: the batches are reshuffled each epoch, while the
tutorials keep the order of their one shuffle (``train(..., reshuffle=False)`` does that).
The Kolen–Pollack recipes (``kp-mlp``, ``kp-cnn``) are the exception to Adam: their rule needs
weight decay, so they train with SGD, learning rate 0.05, momentum 0.9 and weight decay 1e-3
(:func:`train_settings`). The weight-mirror recipes (``wm-mlp``, ``wm-cnn``) are feedback
alignment plus a :class:`~bender.mirrors.WeightMirror` step after every optimizer step
(``Recipe.after_step``).
The CNNs take the same flattened input and unflatten it to ``1×28×28`` as their first module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pandas as pd
import torch
from torch import nn

from bender.constraints import ClipBinaryWeights
from bender.data import Dataset
from bender.dfa import DFA
from bender.layers import GenConv, GenDense
from bender.mappings import (
    Mapping,
    conv_linear,
    conv_linear_asym_dx,
    conv_linear_blocked_dx,
    conv_linear_brsf_dx,
    conv_linear_frsf_dx,
    conv_linear_kp_dx,
    conv_linear_usf_dx,
    linear,
    linear_asym_dx,
    linear_binary_weights,
    linear_blocked_dx,
    linear_brsf_dx,
    linear_frsf_dx,
    linear_kp_dx,
    linear_usf_dx,
)
from bender.mirrors import WeightMirror
from bender.models import build_model
from bender.nonlinearities import SignSTE
from bender.rules import (
    KP_TRAINING,
    TUTORIAL_TRAINING,
    apply_rule,
    check_one_bit_quantizer,
    get_rule,
)
from bender.training import StepFn, check_seed, step_functions, train


@dataclass(frozen=True)
class Recipe:
    """A named network with the number the Bender.jl tutorial reached on MNIST (``reference``),
    where its rule needs other ones than the tutorials', its own ``train`` settings
    (``optimizer``, ``lr``, ``optimizer_options``), and what its rule does after every
    optimizer step besides (``after_step``, functions ``fn(model)``: a weight mirror).
    ``model`` and ``rule`` name the zoo model and the rule that give the same network
    (``bender train --model M --rule R``), built here with Bender.jl's Glorot-uniform
    initialisation and taking flattened images; empty for the binary recipes, which have
    networks of their own."""

    name: str
    summary: str
    build: Callable[[], nn.Module]
    reference: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    after_step: tuple[StepFn, ...] = ()
    model: str = ""  # the zoo model and the rule it equals, for `bender recipes`
    rule: str = ""
    quantized: bool = False  # build takes quantizer=NAME


def mlp(
    sizes: tuple[int, ...],
    forward: Mapping,
    hidden_activation: Callable[[], nn.Module] = nn.ReLU,
    feedback: bool = False,
) -> nn.Sequential:
    """``GenDense`` layers of the given sizes; every layer but the last gets the activation."""
    layers = []
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        act = hidden_activation() if i < len(sizes) - 2 else None
        layers.append(GenDense(n_in, n_out, act, forward=forward, feedback=feedback))
    return nn.Sequential(*layers)


def cnn(conv_forward: Mapping, dense_forward: Mapping, feedback: bool = False) -> nn.Sequential:
    """784 → 1×28×28 → [conv 5×5, 16 ch, relu, max-pool 2] → [conv 5×5, 32 ch, relu, max-pool 2]
    → dense 1568 → 10 (padding 2 keeps 28×28 and 14×14 before each pooling)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        GenConv(1, 16, 5, nn.ReLU(), padding=2, forward=conv_forward, feedback=feedback),
        nn.MaxPool2d(2),
        GenConv(16, 32, 5, nn.ReLU(), padding=2, forward=conv_forward, feedback=feedback),
        nn.MaxPool2d(2),
        nn.Flatten(),
        GenDense(32 * 7 * 7, 10, forward=dense_forward, feedback=feedback),
    )


def binary_mlp_bn(
    sizes: tuple[int, ...] = (784, 128, 64, 10), quantizer: str = "ste_sign"
) -> nn.Sequential:
    """Larq's recommended practice for a binary MLP: ``ste_sign`` (gradient clipped at 1; or
    another 1-bit ``quantizer``) as every layer's kernel quantizer and as the input quantizer of
    every layer but the first (the image stays real), no bias, batch norm after every layer (its
    scale is learned too: it does not change the sign the next layer takes, only the logits'
    scale). Train with the latent weights clipped to ±1 (``ClipBinaryWeights``)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        quantize_input = quantizer if i > 0 else None
        layers.append(
            GenDense(
                n_in, n_out, bias=False, input_quantizer=quantize_input, kernel_quantizer=quantizer
            )
        )
        layers.append(nn.BatchNorm1d(n_out))
    return nn.Sequential(*layers)


def binary_cnn(quantizer: str = "ste_sign") -> nn.Sequential:
    """Larq's binary CNN for MNIST: 784 → 1×28×28 → [conv 3×3, 32 ch, max-pool 2, bn] →
    [conv 3×3, 64 ch, max-pool 2, bn] → [conv 3×3, 64 ch, bn] → dense 576 → 64, bn → dense
    64 → 10, bn. Every layer's kernel quantizer is ``ste_sign``, and so is the input quantizer
    of every layer but the first (or another 1-bit ``quantizer``); no bias (batch norm's shift
    takes its place)."""
    binary = {"bias": False, "input_quantizer": quantizer, "kernel_quantizer": quantizer}
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        GenConv(1, 32, 3, bias=False, kernel_quantizer=quantizer),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(32),
        GenConv(32, 64, 3, **binary),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(64),
        GenConv(64, 64, 3, **binary),
        nn.BatchNorm2d(64),
        nn.Flatten(),
        GenDense(64 * 3 * 3, 64, **binary),
        nn.BatchNorm1d(64),
        GenDense(64, 10, **binary),
        nn.BatchNorm1d(10),
    )


SMALL = (784, 128, 64, 10)
LARGE = (784, 512, 256, 10)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "fa-mlp",
            "feedback alignment, MLP 784-128-64-10, relu (Bender.jl FA tutorial)",
            lambda: mlp(SMALL, linear_asym_dx, feedback=True),
            "Bender.jl tutorial on MNIST: acc_test 0.959 after 10 epochs",
            model="mlp",
            rule="fa",
        ),
        Recipe(
            "fa-mlp-large",
            "feedback alignment, MLP 784-512-256-10, relu (Bender.jl DFA notebook's net)",
            lambda: mlp(LARGE, linear_asym_dx, feedback=True),
            "Bender.jl notebook on MNIST: acc_test 0.973 after 10 epochs",
            model="mlp-large",
            rule="fa",
        ),
        Recipe(
            "binary-mlp",
            "binary weights + sign_ste activations, MLP 784-128-64-10 (Bender.jl BNN tutorial)",
            lambda: mlp(SMALL, linear_binary_weights, SignSTE),
            "Bender.jl tutorial on MNIST: acc_test 0.869 after 10 epochs",
        ),
        Recipe(
            "binary-mlp-bn",
            "binary weights and activations by ste_sign (clipped at 1), batch norm, no bias, "
            "MLP 784-128-64-10 (Larq's practice)",
            binary_mlp_bn,
            after_step=(ClipBinaryWeights(1.0),),
            quantized=True,
        ),
        Recipe(
            "binary-cnn",
            "binary weights and activations by ste_sign, CNN conv32-conv64-conv64-dense64 with "
            "batch norm, no bias (Larq's MNIST tutorial)",
            binary_cnn,
            after_step=(ClipBinaryWeights(1.0),),
            quantized=True,
        ),
        Recipe(
            "dfa-mlp",
            "direct feedback alignment, MLP 784-128-64-10, relu (Nøkland 2016)",
            lambda: DFA(mlp(SMALL, linear_blocked_dx), 10),
            model="mlp",
            rule="dfa",
        ),
        Recipe(
            "dfa-mlp-large",
            "direct feedback alignment, MLP 784-512-256-10, relu (Nøkland 2016)",
            lambda: DFA(mlp(LARGE, linear_blocked_dx), 10),
            model="mlp-large",
            rule="dfa",
        ),
        Recipe(
            "fa-cnn",
            "feedback alignment, CNN conv16-conv32-dense (5×5 kernels, max-pooling), relu",
            lambda: cnn(conv_linear_asym_dx, linear_asym_dx, feedback=True),
            model="cnn",
            rule="fa",
        ),
        Recipe(
            "dfa-cnn",
            "direct feedback alignment, CNN conv16-conv32-dense, relu",
            lambda: DFA(cnn(conv_linear_blocked_dx, linear_blocked_dx), 10, input_shape=(784,)),
            model="cnn",
            rule="dfa",
        ),
        Recipe(
            "usf-mlp",
            "sign-concordant feedback sign(W) (uSF, Liao et al. 2016), MLP 784-128-64-10, relu",
            lambda: mlp(SMALL, linear_usf_dx),
            model="mlp",
            rule="usf",
        ),
        Recipe(
            "frsf-mlp",
            "sign-concordant feedback |V|⊙sign(W), V fixed (frSF), MLP 784-128-64-10, relu",
            lambda: mlp(SMALL, linear_frsf_dx, feedback=True),
            model="mlp",
            rule="frsf",
        ),
        Recipe(
            "brsf-mlp",
            "sign-concordant feedback |M|⊙sign(W), M per batch (brSF), MLP 784-128-64-10, relu",
            lambda: mlp(SMALL, linear_brsf_dx),
            model="mlp",
            rule="brsf",
        ),
        Recipe(
            "usf-cnn",
            "sign-concordant feedback sign(W) (uSF), CNN conv16-conv32-dense, relu",
            lambda: cnn(conv_linear_usf_dx, linear_usf_dx),
            model="cnn",
            rule="usf",
        ),
        Recipe(
            "frsf-cnn",
            "sign-concordant feedback |V|⊙sign(W), V fixed (frSF), CNN conv16-conv32-dense, relu",
            lambda: cnn(conv_linear_frsf_dx, linear_frsf_dx, feedback=True),
            model="cnn",
            rule="frsf",
        ),
        Recipe(
            "brsf-cnn",
            "sign-concordant feedback |M|⊙sign(W), M per batch (brSF), "
            "CNN conv16-conv32-dense, relu",
            lambda: cnn(conv_linear_brsf_dx, linear_brsf_dx),
            model="cnn",
            rule="brsf",
        ),
        Recipe(
            "kp-mlp",
            "Kolen-Pollack, feedback learned with W's gradient (Akrout et al. 2019), MLP "
            "784-128-64-10, relu",
            lambda: mlp(SMALL, linear_kp_dx, feedback=True),
            training=KP_TRAINING,
            model="mlp",
            rule="kp",
        ),
        Recipe(
            "kp-cnn",
            "Kolen-Pollack, CNN conv16-conv32-dense, relu",
            lambda: cnn(conv_linear_kp_dx, linear_kp_dx, feedback=True),
            training=KP_TRAINING,
            model="cnn",
            rule="kp",
        ),
        Recipe(
            "wm-mlp",
            "feedback alignment with weight mirrors, B learned from noise (Akrout et al. 2019), "
            "MLP 784-128-64-10, relu",
            lambda: mlp(SMALL, linear_asym_dx, feedback=True),
            after_step=(WeightMirror(),),
            model="mlp",
            rule="wm",
        ),
        Recipe(
            "wm-cnn",
            "feedback alignment with weight mirrors, CNN conv16-conv32-dense, relu",
            lambda: cnn(conv_linear_asym_dx, linear_asym_dx, feedback=True),
            after_step=(WeightMirror(),),
            model="cnn",
            rule="wm",
        ),
        Recipe(
            "bp-mlp",
            "backprop baseline, MLP 784-128-64-10, relu",
            lambda: mlp(SMALL, linear),
            model="mlp",
            rule="bp",
        ),
        Recipe(
            "bp-mlp-large",
            "backprop baseline, MLP 784-512-256-10, relu",
            lambda: mlp(LARGE, linear),
            model="mlp-large",
            rule="bp",
        ),
        Recipe(
            "bp-cnn",
            "backprop baseline, CNN conv16-conv32-dense, relu",
            lambda: cnn(conv_linear, linear),
            model="cnn",
            rule="bp",
        ),
    ]
}


def build_network(
    model: str,
    rule: str,
    image_shape: tuple[int, int, int],
    num_classes: int,
    *,
    seed: int = 0,
    blocks: list[str] | None = None,
    quantizer: str | None = None,
) -> nn.Module:
    """The zoo's ``model`` for images of ``image_shape = (C, H, W)``, learning by ``rule``
    (:func:`bender.rules.apply_rule`), its weights and feedback drawn after
    ``torch.manual_seed(seed)``."""
    torch.manual_seed(check_seed(seed))
    channels, height, width = image_shape
    network = build_model(
        model, in_channels=channels, image_size=(height, width), num_classes=num_classes
    )
    return apply_rule(
        network,
        rule,
        num_outputs=num_classes,
        input_shape=image_shape,
        blocks=blocks,
        quantizer=quantizer,
    )


def get(name: str) -> Recipe:
    """The recipe called ``name``; an error listing the valid names otherwise."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def build(name: str, seed: int = 0, quantizer: str | None = None) -> nn.Module:
    """Build recipe ``name``'s network with its initialisation seeded by ``seed``; a binary
    recipe with Larq's quantizers takes another 1-bit ``quantizer`` than ``ste_sign``."""
    recipe = get(name)
    if quantizer is not None:
        if not recipe.quantized:
            raise ValueError(f"recipe {name} takes no quantizer; binary-mlp-bn and binary-cnn do")
        check_one_bit_quantizer(quantizer, "a binary recipe")
    torch.manual_seed(check_seed(seed))
    return recipe.build() if quantizer is None else recipe.build(quantizer=quantizer)


def train_settings(
    name: str | None, optimizer: str | None = None, *, rule: str | None = None
) -> dict[str, Any]:
    """The ``train`` settings recipe ``name`` (or, with ``name=None``, ``rule``) runs with: its
    own (``kp-mlp`` and rule ``kp``: SGD, lr 0.05, momentum 0.9, weight decay 1e-3), else the
    tutorials' (Adam, lr 3e-4). Naming another ``optimizer`` than the recipe's drops the
    recipe's learning rate and options with it."""
    own = (get(name).training if name is not None else get_rule(rule).training) or TUTORIAL_TRAINING
    if optimizer not in (None, own["optimizer"]):
        own = TUTORIAL_TRAINING | {"optimizer": optimizer}
    return own | {"optimizer_options": dict(own["optimizer_options"])}


def run(name: str, data: Dataset, *, seed: int = 0, **train_kwargs) -> pd.DataFrame:
    """Build and train recipe ``name`` with its :func:`train_settings` and its ``after_step``;
    ``train_kwargs`` go to :func:`bender.training.train`, ``after_step`` ones after the
    recipe's, the others in place of the recipe's."""
    settings = train_settings(name, train_kwargs.get("optimizer"))
    after = [*get(name).after_step, *step_functions(train_kwargs.pop("after_step", None))]
    return train(build(name, seed), data, seed=seed, after_step=after, **(settings | train_kwargs))

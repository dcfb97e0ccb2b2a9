"""One training epoch of bender's recipes against the same nets built from plain nn.Linear.

Prints, measured in this run on the CPU or on ``--device`` (min and median over --repeats
interleaved epochs, every net trained by ``bender.train``, the same loop):
  fa-mlp         /  nn.Linear MLP 784-128-64-10                              target ≤ 1.05
  usf-mlp        /  nn.Linear MLP 784-128-64-10                              target ≤ 1.05
  binary-mlp     /  nn.Linear MLP 784-128-64-10                              target ≤ 1.05
  dfa-mlp-large  /  nn.Linear MLP 784-512-256-10 (backprop)                  target ≤ 0.95
  binary-mlp-bn  /  the same net in float: Linear, batch norm, hardtanh       target ≤ 1.10
  fa-mlp (bender.train)  /  nn.Linear MLP (DataLoader+TensorDataset loop)   target ≤ 1.00
``--recipes`` picks others (any MLP recipe of 784-128-64-10 or 784-512-256-10). Each recipe
trains with its own after-step functions (binary-mlp-bn's weight clipping). With
``BENDER_NATIVE=1`` in the environment the recipes run bender's C++ Functions
(``bender.functional.native``), and the header says so.

``--breakdown`` adds three nets to say where fa-mlp's extra time goes, each against the plain net:
  bp-mlp: the GenDense layers with the exact ``linear`` mapping (what the layer wrapper costs);
  bare BentLinear: nn.Linear in layer 1, bare modules calling ``BentLinear`` in layers 2 and 3
  the way bender does (``direct_apply``), no GenDense, mapping or checks (what the custom
  autograd.Function alone costs);
  swapped saved tensor: feedback alignment with autograd's own kernels and no Python backward
  (see ``SwappedSaveLinear``; a measurement of the floor, not something bender uses).

``--compile`` adds every timed recipe and its plain net trained with ``train(compile=True)``
(``bender train --compile``: the training steps through ``torch.compile``, default Inductor
backend), each compiled by one untimed first epoch, against the recipe in eager mode, the plain
net compiled and the plain net in eager mode.

``--mirror`` adds wm-mlp, fa-mlp with the recipe's ``WeightMirror`` after every step, and the
same with ``WeightMirror(layers=["1", "2"])``, which spares the first layer (whose ``B`` carries
no gradient), each against fa-mlp: what mirror mode costs.

``--unfused`` adds binary-mlp-bn with its layers' fusion turned off (each layer's quantizers,
the weight's parametrization and ``F.linear`` one after the other), against the fused recipe.

Usage: python benchmarks/epoch_time.py [--data-dir DIR] [--repeats N] [--threads N] [--device D]
                                       [--recipes R ...] [--breakdown] [--compile] [--mirror]
                                       [--unfused]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

from _timing import (
    bender_epoch,
    dataloader_epoch,
    header,
    mnist,
    parse_args,
    report,
    time_contenders,
)
from bender import recipes
from bender.functional._apply import direct_apply
from bender.functional.dense import BentLinear
from bender.mirrors import WeightMirror

bent_linear_apply = direct_apply(BentLinear)


def plain_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def float_bn_mlp() -> nn.Sequential:
    """binary-mlp-bn with float weights and activations: no bias, batch norm after every
    layer, ``hardtanh`` where the binary net takes the sign of the next layer's input."""
    layers: list[nn.Module] = []
    for n_in, n_out in ((784, 128), (128, 64), (64, 10)):
        layers += [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out), nn.Hardtanh()]
    return nn.Sequential(*layers[:-1])


def plain_mlp_large() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)
    )


# The recipes timed by default, each with its target against the plain net of its size.
TARGETS = {
    "fa-mlp": 1.05,
    "usf-mlp": 1.05,
    "binary-mlp": 1.05,
    "dfa-mlp-large": 0.95,
    "binary-mlp-bn": 1.10,
}
PLAIN = {
    "784-128-64-10": plain_mlp,
    "784-512-256-10": plain_mlp_large,
    "784-128-64-10, float batch norm": float_bn_mlp,
}


def plain_twin(recipe: str) -> str:
    """The size of ``recipe``'s net, as a key of ``PLAIN``; a clear error for other nets."""
    model = recipes.build(recipe)
    sizes = [m.in_features for m in model.modules() if hasattr(m, "in_features")]
    key = "-".join(map(str, [*sizes, 10]))
    if any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
        key += ", float batch norm"
    if key not in PLAIN:
        raise SystemExit(f"epoch_time times MLPs of {' or '.join(PLAIN)}; {recipe} is {key}")
    return key


class BareFeedbackLinear(nn.Linear):
    """``nn.Linear`` with a fixed feedback matrix whose forward is ``BentLinear`` only."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("feedback", nn.init.xavier_uniform_(torch.empty_like(self.weight)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bent_linear_apply(x, self.weight, self.feedback, self.bias)


class SwappedSaveLinear(BareFeedbackLinear):
    """Feedback alignment computed by autograd's own kernels, with no Python backward.

    ``addmm(b, x, Wᵀ)`` saves ``Wᵀ`` only to compute ``∂x = δ W``; a saved-tensor hook stores
    ``Bᵀ`` in its place, so autograd's native backward computes ``∂x = δ B``. bender does not do
    this: it breaks the hooks' contract (an unpacked tensor must equal the packed one), relies on
    which tensor ``addmm`` saves for which gradient, and overrides any hooks the user has set
    (activation checkpointing, ``save_on_cpu``). It is timed here as the floor of the cost.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wt, bt = self.weight.t(), self.feedback.t()
        swapped = False

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal swapped
            if t is wt:
                swapped = True
                return bt
            return t

        with saved_tensors_hooks(pack, lambda t: t):
            y = torch.addmm(self.bias, x, wt)
        if x.requires_grad and torch.is_grad_enabled() and not swapped:
            raise RuntimeError("addmm did not save Wᵀ: this torch saves other tensors")
        return y


def check_swapped_gradient() -> None:
    """Fail loudly unless ``SwappedSaveLinear`` gives ``∂x = δ B`` and ``∂W = δᵀ x``."""
    layer = SwappedSaveLinear(6, 4)
    x = torch.randn(3, 6, requires_grad=True)
    delta = torch.randn(3, 4)
    layer(x).backward(delta)
    torch.testing.assert_close(x.grad, delta @ layer.feedback)
    torch.testing.assert_close(layer.weight.grad, delta.t() @ x.detach())


def _fa_mlp_with(hidden: type[BareFeedbackLinear]) -> nn.Sequential:
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), hidden(128, 64), nn.ReLU(), hidden(64, 10))


def bare_fa_mlp() -> nn.Sequential:
    """fa-mlp's computation without bender's layer: the Function in layers 2 and 3, as fa-mlp."""
    return _fa_mlp_with(BareFeedbackLinear)


def swapped_fa_mlp() -> nn.Sequential:
    """fa-mlp's computation with native kernels in layers 2 and 3 (``SwappedSaveLinear``)."""
    return _fa_mlp_with(SwappedSaveLinear)


def unfused_binary_mlp_bn() -> nn.Sequential:
    """binary-mlp-bn whose layers do not fuse their quantizers into one Function."""
    model = recipes.build("binary-mlp-bn")
    for layer in model.modules():
        if hasattr(layer, "_fusable"):
            layer._fusable = False
    return model


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=list(TARGETS),
        help=f"the recipes to time (default: {' '.join(TARGETS)})",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time bp-mlp, a bare BentLinear net and a native-kernel FA net, to split "
        "fa-mlp's extra time",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time every recipe and its plain net trained with train(compile=True)",
    )
    parser.add_argument(
        "--unfused",
        action="store_true",
        help="also time binary-mlp-bn with each layer's quantizers and product unfused",
    )
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="also time wm-mlp, fa-mlp with a weight mirror step after every optimizer step",
    )


def main() -> None:
    args = parse_args(__doc__, repeats=5, configure=_options, device=True)
    device = args.device
    torch.manual_seed(0)
    data = mnist(args.data_dir)
    header("epoch_time: one training epoch of MNIST, batch 64, Adam 3e-4", device)
    for recipe in args.recipes:
        recipes.get(recipe)  # an unknown name fails before anything is timed
    fa, plain, loader = "fa-mlp", "nn.Linear 784-128-64-10", "nn.Linear 784-128-64-10, DataLoader"
    contenders, ratios = {}, {}
    for recipe in dict.fromkeys([*args.recipes, *(["fa-mlp"] if args.breakdown else [])]):
        size = plain_twin(recipe)
        twin = f"nn.Linear {size}"
        contenders.setdefault(twin, lambda b=PLAIN[size]: bender_epoch(b, data, device=device))
        built = recipes.get(recipe)
        contenders[recipe] = lambda r=built: bender_epoch(
            r.build, data, device=device, after_step=list(r.after_step)
        )
        target = TARGETS.get(recipe)
        ratios[f"{recipe} / {twin}"] = (recipe, twin, f"<= {target}" if target else "-")
    if fa in contenders:
        contenders[loader] = lambda: dataloader_epoch(plain_mlp, data, device=device)
        ratios["fa-mlp / nn.Linear (DataLoader loop)"] = (fa, loader, "<= 1.00")
    if args.breakdown:
        bp, bare = "bp-mlp", "bare BentLinear MLP"
        contenders[bp] = lambda: bender_epoch(recipes.get("bp-mlp").build, data, device=device)
        contenders[bare] = lambda: bender_epoch(bare_fa_mlp, data, device=device)
        ratios["bp-mlp / nn.Linear (GenDense wrapper)"] = (bp, plain, "-")
        ratios["bare BentLinear / nn.Linear (Function alone)"] = (bare, plain, "-")
        check_swapped_gradient()
        swapped = "swapped saved tensor MLP"
        contenders[swapped] = lambda: bender_epoch(swapped_fa_mlp, data, device=device)
        ratios["swapped saved tensor / nn.Linear (no Python backward)"] = (swapped, plain, "-")
    if args.compile:  # each net compiled once, by a first untimed epoch, then trained on
        for recipe in args.recipes:
            built, twin = recipes.get(recipe), f"nn.Linear {plain_twin(recipe)}"
            steps = list(built.after_step)
            for name, build, after in (
                (recipe, built.build, steps),
                (twin, PLAIN[plain_twin(recipe)], []),
            ):
                if f"{name} compiled" in contenders:
                    continue
                model = build().to(device)
                first = bender_epoch(
                    lambda m=model: m, data, device=device, after_step=after, compile=True
                )
                print(f"first epoch of {name} under torch.compile (compiling): {first:.1f} s")
                contenders[f"{name} compiled"] = lambda m=model, a=after: bender_epoch(
                    lambda: m, data, device=device, after_step=a, compile=True
                )
            ratios[f"{recipe} compiled / {recipe}"] = (f"{recipe} compiled", recipe, "-")
            ratios[f"{recipe} compiled / {twin} compiled"] = (
                f"{recipe} compiled",
                f"{twin} compiled",
                "-",
            )
            ratios[f"{recipe} compiled / {twin}"] = (f"{recipe} compiled", twin, "-")
    if args.mirror:
        wm, hidden = "wm-mlp", "wm-mlp, layers 1 and 2 only"
        mirror = recipes.get("wm-mlp")
        spared = WeightMirror(layers=["1", "2"])
        contenders[wm] = lambda: bender_epoch(
            mirror.build, data, device=device, after_step=mirror.after_step
        )
        contenders[hidden] = lambda: bender_epoch(
            mirror.build, data, device=device, after_step=[spared]
        )
        ratios["wm-mlp / fa-mlp (mirror mode)"] = (wm, fa, "-")
        ratios["wm-mlp, layers 1 and 2 / fa-mlp"] = (hidden, fa, "-")
    if args.unfused:
        bn, unfused = "binary-mlp-bn", "binary-mlp-bn, unfused"
        steps = recipes.get(bn).after_step
        contenders.setdefault(
            bn, lambda: bender_epoch(recipes.get(bn).build, data, device=device, after_step=steps)
        )
        contenders[unfused] = lambda: bender_epoch(
            unfused_binary_mlp_bn, data, device=device, after_step=list(steps)
        )
        ratios["binary-mlp-bn / unfused"] = (bn, unfused, "-")
    report(time_contenders(contenders, args.repeats), ratios)


if __name__ == "__main__":
    main()

"""Feedback alignment's dense product and the sign STE as C++ autograd Functions, built here.

A backward written in Python costs PyTorch about 20–40 µs a call more than autograd's own C++
one: a feedback-alignment layer of 64×128 → 64 takes 1.1–1.2× the time of ``F.linear``, and
so do small MLPs per epoch. The same Function written in C++ (``torch::autograd::Function``:
``y = x Wᵀ + b``, ``∂x = δ B``, ``∂W = δᵀ x``, ``∂b = Σ_n δ_n``) costs what ``F.linear`` costs
(``benchmarks/layer_speed.py --cpp``). The sign with the straight-through estimator
(:func:`bender.functional.ste.sign_ste`, behind ``linear_binary_weights``) is built with it.

It is opt-in, since it is compiled on the user's machine by
:func:`torch.utils.cpp_extension.load_inline` (a C++ compiler and ninja; about a minute the
first time, then cached per torch release and Python under ``~/.cache/bender/native``, or
``$BENDER_NATIVE_CACHE``):
:func:`enable` (or ``BENDER_NATIVE=1`` in the environment) builds it. Then every eager call of
:func:`bender.functional.dense.bent_linear` with a fixed feedback matrix, a 2-D input and one
dtype, outside autocast, runs it, and so does every eager ``sign_ste``. A build that fails warns
with the compiler's reason and leaves the Python Functions in place. torch.compile and
torch.func always take the Python Functions, which they trace.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import SubprocessError

import torch

SOURCE = r"""
#include <ATen/autocast_mode.h>
#include <torch/extension.h>

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// y = x Wᵀ + b; backward: ∂x = δ B, ∂W = δᵀ x, ∂b = Σ_n δ_n, B gets no gradient.
struct BentLinear : public torch::autograd::Function<BentLinear> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& feedback, const Tensor& bias) {
    ctx->save_for_backward({x, feedback});
    return torch::addmm(bias, x, weight.t());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor& grad = grads[0];
    Tensor grad_x, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) grad_x = grad.mm(saved[1]);
    if (ctx->needs_input_grad(1)) grad_weight = grad.t().mm(saved[0]);
    if (ctx->needs_input_grad(3)) grad_bias = grad.sum(0);
    return {grad_x, grad_weight, Tensor(), grad_bias};
  }
};

// The same without a bias: y = x Wᵀ.
struct BentLinearNoBias : public torch::autograd::Function<BentLinearNoBias> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& feedback) {
    ctx->save_for_backward({x, feedback});
    return x.mm(weight.t());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor& grad = grads[0];
    Tensor grad_x, grad_weight;
    if (ctx->needs_input_grad(0)) grad_x = grad.mm(saved[1]);
    if (ctx->needs_input_grad(1)) grad_weight = grad.t().mm(saved[0]);
    return {grad_x, grad_weight, Tensor()};
  }
};

// sign(x) with the straight-through estimator: backward ∂x = g.
struct SignSTE : public torch::autograd::Function<SignSTE> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x) { return torch::sign(x); }
  static variable_list backward(AutogradContext* ctx, variable_list grads) { return {grads[0]}; }
};

Tensor sign_ste(const Tensor& x) { return SignSTE::apply(x); }

// The C++ Function where it applies, else None (the caller takes the Python Function, which
// also raises the errors for shapes that do not fit): a fixed feedback matrix other than the
// weight, an input of N × in that needs a gradient in grad mode, one dtype, no autocast.
std::optional<Tensor> bent_linear(const Tensor& x, const Tensor& weight,
                                  const std::optional<Tensor>& feedback,
                                  const std::optional<Tensor>& bias) {
  if (!feedback.has_value() || feedback->is_same(weight) || feedback->requires_grad() ||
      !x.requires_grad() || !torch::GradMode::is_enabled() || x.dim() != 2 ||
      weight.dim() != 2 || x.size(1) != weight.size(1) ||
      !feedback->sizes().equals(weight.sizes()) || x.scalar_type() != weight.scalar_type() ||
      feedback->scalar_type() != weight.scalar_type() ||
      at::autocast::is_autocast_enabled(x.device().type())) {
    return std::nullopt;
  }
  if (bias.has_value()) {
    if (bias->dim() != 1 || bias->size(0) != weight.size(0) ||
        bias->scalar_type() != weight.scalar_type()) {
      return std::nullopt;
    }
    return BentLinear::apply(x, weight, *feedback, *bias);
  }
  return BentLinearNoBias::apply(x, weight, *feedback);
}
"""

NativeLinear = Callable[..., torch.Tensor]

_built: object | None = None  # the compiled module, once built in this process
_failed = False  # a build failed in this process: not tried again
# the entries in use: the compiled module's while enabled, else None
_linear: NativeLinear | None = None
_sign_ste: Callable[[torch.Tensor], torch.Tensor] | None = None


def build_folder() -> Path:
    """Where the build is cached: one folder per source, torch release and Python version."""
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    root = Path(os.environ.get("BENDER_NATIVE_CACHE", Path.home() / ".cache" / "bender" / "native"))
    return root / f"torch-{torch.__version__}-{python}-{digest}"


def enable() -> bool:
    """Build (once per process; from the cache when it holds this build) and use the C++
    Function; ``True`` when it is in use, ``False`` (with a warning) when it could not be built."""
    global _built, _failed
    if _built is None and not _failed:
        from torch.utils.cpp_extension import load_inline

        folder = build_folder()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with _building(folder):
                module = load_inline(
                    "bender_native",
                    cpp_sources=SOURCE,
                    functions=["bent_linear", "sign_ste"],
                    extra_cflags=["-O2"],  # load_inline passes no optimization flag of its own
                    build_directory=str(folder),
                )
        except (OSError, RuntimeError, ImportError, SubprocessError) as err:
            _failed = True
            warnings.warn(
                f"bender could not build its C++ feedback-alignment Function in {folder} "
                f"({err}); the Python Function is used, to the same numbers (delete that "
                "folder to build it afresh)",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            _built = module
    _use(_built)
    return _linear is not None


def _use(module: object | None) -> None:
    """Route the eager calls to ``module``'s entries (``None``: the Python Functions)."""
    global _linear, _sign_ste
    _linear = None if module is None else module.bent_linear
    _sign_ste = None if module is None else module.sign_ste


@contextmanager
def _building(folder: Path) -> Iterator[None]:
    """Held while loading or building in ``folder``, one process at a time.

    Before torch 2.14, ``load_inline`` marks a build by the mere existence of a ``lock`` file,
    which a build killed midway leaves behind, and every later call then waits for it forever.
    This lock is the operating system's (``flock``), released when its holder dies, so a
    ``lock`` file found while holding it is such a leftover, and is removed.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock alone
        yield
        return
    with open(folder / "bender.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        (folder / "lock").unlink(missing_ok=True)
        yield


def native_linear() -> NativeLinear | None:
    """The C++ entry ``f(x, weight, feedback, bias)`` when it is enabled: the product with
    the C++ Function where it applies, else ``None``."""
    return _linear


def native_sign_ste() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The C++ :func:`~bender.functional.ste.sign_ste` (``sign(x)``, ``∂x = g``) when enabled."""
    return _sign_ste


def disable() -> None:
    """Use the Python Functions again (:func:`enable` takes the C++ ones back, without a build)."""
    _use(None)


if os.environ.get("BENDER_NATIVE", "") not in ("", "0"):
    enable()

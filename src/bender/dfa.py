"""Train any ``nn.Sequential`` with direct feedback alignment."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bender._modes import eval_mode
from bender.functional.direct_feedback import (
    Signal,
    check_feedback_shapes,
    check_signal,
    hidden_sizes,
    inject_direct_feedback,
)

# Normalization layers stay with the layer before them, as activations do.
NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.RMSNorm,
)


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _blocks(model: nn.Sequential) -> tuple[list[nn.Module], list[nn.Module]]:
    """Split ``model`` into a parameter-free prefix and one block per module with parameters.

    A block is a module with parameters (a ``GenDense``/``GenConv``, an ``nn.Linear``, or a
    whole sub-network such as an ``nn.Sequential`` or a transformer layer) followed by the
    parameter-free modules and normalization layers after it (activations, pooling, flatten,
    dropout, batch or layer norm); its output is where direct feedback arrives, and inside it
    gradients flow by the layers' own rules.
    """
    prefix: list[nn.Module] = []
    blocks: list[list[nn.Module]] = []
    for module in model:
        if _has_parameters(module) and not (blocks and isinstance(module, NORMS)):
            blocks.append([module])
        else:
            (blocks[-1] if blocks else prefix).append(module)
    if not blocks:
        raise TypeError(
            "DFA needs at least one module with parameters (a GenDense, GenConv or any layer "
            "that learns) in the model"
        )
    return prefix, [b[0] if len(b) == 1 else nn.Sequential(*b) for b in blocks]


class DFA(nn.Module):
    """Wrap an ``nn.Sequential`` so that ``loss.backward()`` performs direct feedback alignment.

    Each child with parameters starts a block, which takes the parameter-free children and
    normalization layers after it. Each block gets its input detached, so no gradient flows
    from a block to the one below it; the output of hidden block ``i`` receives ``e B_iᵀ``, with
    ``e = ∂L/∂y`` the error at the network output, from one product with the stacked feedback
    matrix. Any loss works: ``F.cross_entropy(dfa(x), y).backward()``.

    A block of one layer (``GenDense``, ``GenConv``, ``nn.Linear``, ...) is Nøkland's DFA;
    hidden layers are usually built with ``forward=linear_blocked_dx`` (Bender.jl's DFA
    layers), and the detach makes any mapping safe. A block that is a sub-network (an
    ``nn.Sequential`` child, a transformer layer) is trained inside by its layers' own rules
    from the feedback at its output, so its layers must pass gradients to their inputs; trainable
    parameters that no gradient reaches from their block's output (cut off by a blocked layer
    after them) are named in a warning when the wrapper is built. (DFA on modern architectures,
    transformers among them: Launay et al. 2020, arXiv:2006.12878.)

    Args:
        model: the network, an ``nn.Sequential``.
        num_outputs: expected size ``C`` of the network output (checked), or ``None``.
        input_shape: shape of one input sample; needed unless the first module is a layer
            with ``in_features`` (``GenDense``, ``nn.Linear``).
        input_dtype: dtype of that sample for the set-up pass that measures the hidden outputs
            (default: the parameters' dtype; ``torch.long`` for a model that starts with an
            ``nn.Embedding``).
        feedback: optional list of matrices ``B_i`` of shape ``(d_i, C)``; by default they are
            drawn Glorot-uniform. Stored stacked as the buffer ``feedback`` (``Σ d_i × C``).
        signal: a function of the output error ``e`` (``N×C``) whose result the hidden outputs
            receive instead, ``signal(e) B_iᵀ``; the output layer keeps ``e``. ``torch.sign``
            gives sDFA, one bit per output and sample (Frenkel, Lefebvre, Bol 2021,
            arXiv:1909.01311). Default ``None``: ``e`` itself.
    """

    def __init__(
        self,
        model: nn.Sequential,
        num_outputs: int | None = None,
        *,
        input_shape: Sequence[int] | None = None,
        input_dtype: torch.dtype | None = None,
        feedback: Sequence[Tensor] | None = None,
        signal: Signal | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"DFA wraps an nn.Sequential, got {type(model).__name__}")
        check_signal(signal)
        self.signal = signal
        self.model = model
        # the same modules as in ``model``, kept in plain lists so they are registered once
        self.prefix, self.blocks = _blocks(model)
        hidden, output = self._dry_run(input_shape, input_dtype)
        classes = output.shape[-1]
        if num_outputs is not None and classes != num_outputs:
            raise ValueError(
                f"the model's output has {classes} features, but num_outputs={num_outputs}"
            )
        self.num_outputs = classes
        self.sizes = hidden_sizes(hidden, output)
        weight = next(model.parameters())
        self._draws_feedback = feedback is None
        if feedback is None:
            feedback = [torch.empty(d, classes) for d in self.sizes]
        else:
            check_feedback_values(feedback)
        check_feedback_shapes(feedback, hidden, output)
        stacked = torch.cat([b.detach() for b in feedback]) if hidden else torch.empty(0, classes)
        self.register_buffer("feedback", stacked.to(weight.device, weight.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the feedback matrices again, each Glorot-uniform as when built (matrices given
        as ``feedback`` are kept). Only the wrapper's own buffer: the network's layers have
        their own ``reset_parameters``. Draws from the global CPU RNG, then moves to the
        buffer's device and dtype."""
        if not self._draws_feedback:
            return
        with torch.no_grad():
            for b in self.feedback_matrices:
                b.copy_(nn.init.xavier_uniform_(torch.empty(b.shape, device="cpu")))

    def _dry_run(
        self, input_shape: Sequence[int] | None, input_dtype: torch.dtype | None
    ) -> tuple[list[Tensor], Tensor]:
        """The hidden outputs and the output for one zero sample; warns about parameters that
        no gradient would reach (see :meth:`_warn_unreached`)."""
        first = self.blocks[0]  # the first module with parameters, or it and what follows it
        if input_shape is None:
            entry = first
            while isinstance(entry, nn.Sequential) and len(entry):  # a sub-network block
                entry = entry[0]
            in_features = getattr(entry, "in_features", None)
            if not isinstance(in_features, int) or self.prefix:
                raise ValueError(
                    "DFA cannot infer the input size of this model; pass input_shape, the shape "
                    "of one sample, e.g. input_shape=(1, 28, 28)"
                )
            input_shape = (in_features,)
        # eval mode: no batch-norm statistics or spectral-norm steps; grad: for the check below
        with eval_mode(self.model), torch.enable_grad():
            weight = next(first.parameters())
            dtype = input_dtype or weight.dtype
            x = torch.zeros(1, *input_shape, dtype=dtype, device=weight.device)
            outputs = self._outputs(x)
            self._warn_unreached(outputs)
        outputs = [out.detach() for out in outputs]
        return outputs[:-1], outputs[-1]

    def _warn_unreached(self, outputs: list[Tensor]) -> None:
        """Warn, naming them, about trainable parameters that get no gradient from the output
        of their own block, so that DFA would never train them.

        The usual cause: inside a sub-network block, a layer that passes nothing to its input
        (``linear_blocked_dx``, ``conv_linear_blocked_dx``) cuts off the layers before it, as
        ``convert(model, conv="conv_linear_blocked_dx")`` does to every layer of a residual
        stage. Which parameters are reached is a property of the graph, not of the values, so
        the zero sample of the set-up pass shows it.
        """
        names = {id(p): name for name, p in self.model.named_parameters()}
        cut = []
        for block, out in zip(self.blocks, outputs, strict=True):
            params = [p for p in block.parameters() if p.requires_grad]
            if not params:
                continue
            grads = (
                torch.autograd.grad(out.sum(), params, allow_unused=True)
                if out.requires_grad
                else [None] * len(params)
            )
            cut += [names[id(p)] for p, g in zip(params, grads, strict=True) if g is None]
        if cut:
            warnings.warn(
                "DFA will not train these parameters, since no gradient reaches them from the "
                f"output of their block: {', '.join(cut)}. Inside a sub-network block the layers "
                "train by their own rules, and a layer that passes nothing to its input "
                "(linear_blocked_dx, conv_linear_blocked_dx) cuts off the layers before it: give "
                "those layers an exact or feedback-alignment mapping (e.g. conv='conv_linear' in "
                "convert), or set requires_grad=False on parameters you mean to keep fixed.",
                stacklevel=4,  # the caller of DFA(...)
            )

    def _outputs(self, x: Tensor) -> list[Tensor]:
        for module in self.prefix:
            x = module(x)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else x.detach())
            if not isinstance(x, Tensor):
                raise TypeError(
                    f"DFA needs each block to return one tensor, the input of the next: block "
                    f"{i} ({type(block).__name__}) returned {type(x).__name__}; wrap the module "
                    "in one that returns the tensor to pass on (e.g. the first of a tuple)"
                )
            outputs.append(x)
        return outputs

    @property
    def feedback_matrices(self) -> list[Tensor]:
        """The matrices ``B_i`` (views into the stacked buffer), one per hidden output."""
        return list(self.feedback.split(self.sizes))

    def forward(self, x: Tensor) -> Tensor:
        *hidden, output = self._outputs(x)
        if not torch.is_grad_enabled():
            return output
        return inject_direct_feedback(output, hidden, self.feedback, self.sizes, self.signal)

    def __repr__(self) -> str:
        sizes = " + ".join(map(str, self.sizes)) or "0"
        inner = repr(self.model).replace("\n", "\n  ")
        signal = "" if self.signal is None else f", signal={_name(self.signal)}"
        return (
            f"DFA(feedback {self.feedback.shape[0]}×{self.num_outputs} = hidden outputs "
            f"{sizes}{signal}, model={inner})"
        )


def check_feedback_values(feedback: object) -> None:
    """Refuse ``feedback`` unless it is a list of finite tensors with values (not on the meta
    device), naming the first that is not."""
    if isinstance(feedback, Tensor):
        raise TypeError(
            "feedback must be a list of matrices B_i, one per hidden output, got one tensor of "
            f"shape {tuple(feedback.shape)}; to give them stacked, pass "
            "list(stacked.split(sizes)) with each hidden output's feature count"
        )
    if not isinstance(feedback, (list, tuple)):
        raise TypeError(f"feedback must be a list of matrices, got {type(feedback).__name__}")
    for i, b in enumerate(feedback):
        if not isinstance(b, Tensor):
            raise TypeError(f"feedback matrix {i} must be a tensor, got {type(b).__name__}")
        if b.is_meta:
            raise ValueError(
                f"feedback matrix {i} is on the meta device, which holds no values; give "
                "matrices with data, or none to have them drawn"
            )
        if not torch.isfinite(b).all():
            raise ValueError(f"feedback matrix {i} holds NaN or infinite values")


def _name(fn: Signal) -> str:
    """``torch.sign`` for torch's own functions, a function's qualified name, else its repr."""
    name = getattr(fn, "__name__", None)
    if name is None:
        return repr(fn)
    if (getattr(fn, "__module__", None) or "").startswith("torch"):
        return f"torch.{name}"
    return getattr(fn, "__qualname__", name)

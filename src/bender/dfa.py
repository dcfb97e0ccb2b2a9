"""Direct feedback alignment for any model: the output error sent straight to hidden tensors.

Where the projection arrives. By default, at what each layer reads: the input of every
``GenDense``, ``GenConv``, ``nn.Linear`` and ``nn.Conv1d/2d/3d`` call (the layers
:func:`~bender.conversion.convert` makes or keeps), except inputs that need no gradient (the
data). For a chain ``layer → norm → activation → pooling → layer`` that tensor is the previous
layer's output after its normalization, activation and pooling, so hidden layer ``i`` learns
from Nøkland's local error ``δ_i = (e B_iᵀ) ⊙ σ'(a_i)``, with batch norm's and pooling's own
backward in between (batch norm's scale and shift learn from it too). With ``blocks=[names]``
the projection arrives at the outputs of the named modules instead (each residual block of a
ResNet, each transformer layer: Launay et al. 2020, arXiv:2006.12878), and inside a block
gradients flow by its layers' own rules.

What flows where. Each such target tensor ``h_i`` receives exactly ``e B_iᵀ`` as its gradient:
whatever else would reach it from above (a residual connection's copy of the gradient, the
``∂x`` of a layer that reads it) is replaced, so no error is backpropagated across a target.
Below a target, ordinary autograd runs, by each module's own rule, down to the next targets:
through activations, normalization, pooling and residual additions. A residual block's input
is read by its first convolution, so it is a target; the block's output is read by the next
block's first convolution, so it is one too: the skip connection carries no gradient across
blocks. The network's output gets the ordinary error ``e = ∂L/∂y``, so the classifier learns
exactly as with backprop. All projections come from one product ``e Bᵀ`` with the stacked
feedback matrix, per step.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

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
from bender.layers import GenConv, GenDense

# The layers whose inputs receive direct feedback by default.
LAYERS = (GenDense, GenConv, nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

Key = tuple[str, int]  # a module's path and which of its calls in one forward pass


class _Capture:
    """The tensors one forward pass shows at the target points: a layer's input or a block's
    output, keyed by the module's path and the number of its call."""

    def __init__(self, wanted: set[Key] | None) -> None:
        self.wanted = wanted  # None: every call (the set-up pass)
        self.calls: dict[str, int] = {}
        self.tensors: dict[Key, Tensor] = {}

    def _key(self, path: str) -> Key | None:
        count = self.calls.get(path, 0)
        self.calls[path] = count + 1
        key = (path, count)
        return key if self.wanted is None or key in self.wanted else None

    def layer_input(self, path: str, module: nn.Module, args: tuple) -> None:
        key = self._key(path)
        if key is not None and args and isinstance(args[0], Tensor):
            self.tensors[key] = args[0]

    def block_output(self, path: str, module: nn.Module, args: tuple, output) -> None:
        key = self._key(path)
        if key is None:
            return
        if not isinstance(output, Tensor):
            raise TypeError(
                f"DFA needs each block to return one tensor, which receives the feedback: block "
                f"{path!r} ({type(module).__name__}) returned {type(output).__name__}; name "
                "a module that returns the tensor to pass on"
            )
        self.tensors[key] = output


class DFA(nn.Module):
    """Wrap any model so that ``loss.backward()`` performs direct feedback alignment.

    The projections ``e B_iᵀ``, with ``e = ∂L/∂y`` the error at the network output, arrive at
    the inputs of the model's layers, or at the outputs of the modules named in ``blocks``
    (see the module docstring for exactly what receives them and what flows where), and
    replace every other gradient there. Any loss works: ``F.cross_entropy(dfa(x), y)
    .backward()``. Hidden layers are usually built with a mapping that passes nothing to its
    input (``linear_blocked_dx``, ``conv_linear_blocked_dx``: Bender.jl's DFA layers), which
    saves computing a gradient that would be replaced; any mapping gives the same result.
    Trainable parameters that no gradient reaches are named in a warning when the wrapper is
    built. (Nøkland, NeurIPS 2016, arXiv:1609.01596; modern architectures: Launay et al. 2020,
    arXiv:2006.12878.)

    Args:
        model: the network, any ``nn.Module`` that returns one tensor of class scores.
        num_outputs: expected size ``C`` of the network output (checked), or ``None``.
        blocks: names of modules (as in ``model.named_modules()``) whose outputs receive the
            feedback, in place of the layers' inputs; e.g. ``["layer1.0", "layer1.1", ...]``.
        input_shape: shape of one input sample; needed unless the model is an
            ``nn.Sequential`` that starts with a layer with ``in_features`` (``nn.Linear``).
        input_dtype: dtype of that sample for the set-up pass that finds the targets and
            measures them (default: the parameters' dtype; ``torch.long`` for a model that
            starts with an ``nn.Embedding``).
        feedback: optional list of matrices ``B_i`` of shape ``(d_i, C)``; by default they are
            drawn Glorot-uniform. Stored stacked as the buffer ``feedback`` (``Σ d_i × C``).
        signal: a function of the output error ``e`` (``N×C``) whose result the hidden targets
            receive instead, ``signal(e) B_iᵀ``; the output keeps ``e``. ``torch.sign``
            gives sign-of-error DFA (Frenkel et al. 2021, arXiv:1909.01311).

    ``targets`` lists where the feedback arrives (``"layer1.0.conv1 input"``), ``sizes`` the
    features ``d_i`` of each, ``feedback_matrices`` the ``B_i`` as views. Each hidden target must
    start with the output's leading dims (the batch; batch-first sequences): row ``n`` of the
    error goes to row ``n`` of every target. Without gradients (``torch.no_grad()``,
    evaluation) the wrapper runs the plain model.
    """

    def __init__(
        self,
        model: nn.Module,
        num_outputs: int | None = None,
        *,
        blocks: Sequence[str] | None = None,
        input_shape: Sequence[int] | None = None,
        input_dtype: torch.dtype | None = None,
        feedback: Sequence[Tensor] | None = None,
        signal: Signal | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"DFA wraps an nn.Module, got {type(model).__name__}")
        if next(model.parameters(), None) is None:
            raise TypeError(
                "DFA needs at least one module with parameters (a GenDense, GenConv or any layer "
                "that learns) in the model"
            )
        check_signal(signal)
        self.signal = signal
        self.model = model
        self.blocks = _check_blocks(model, blocks)
        self._keys, hidden, output = self._set_up(input_shape, input_dtype)
        self._chain = self._chain_targets()
        classes = output.shape[-1]
        if num_outputs is not None and classes != num_outputs:
            raise ValueError(
                f"the model's output has {classes} features, but num_outputs={num_outputs}"
            )
        self.num_outputs = classes
        self.sizes = hidden_sizes(hidden, output)
        where = "output" if self.blocks is not None else "input"
        self.targets = [f"{path or type(model).__name__} {where}" for path, _ in self._keys]
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
        self._warn_unreached(input_shape, input_dtype)

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

    @contextmanager
    def _capturing(self, wanted: set[Key] | None) -> Iterator[_Capture]:
        """Hooks that record the target tensors of one forward pass, removed afterwards."""
        capture = _Capture(wanted)
        handles = []
        if self.blocks is None:
            for path, module in self.model.named_modules():
                if isinstance(module, LAYERS):
                    hook = partial(capture.layer_input, path)
                    handles.append(module.register_forward_pre_hook(hook))
        else:
            for path in self.blocks:
                hook = partial(capture.block_output, path)
                handles.append(self.model.get_submodule(path).register_forward_hook(hook))
        try:
            yield capture
        finally:
            for handle in handles:
                handle.remove()

    def _sample(self, input_shape: Sequence[int] | None, dtype: torch.dtype | None) -> Tensor:
        """Two zero samples of the input, for the set-up passes."""
        if input_shape is None:
            first = self.model
            while isinstance(first, nn.Sequential) and len(first):  # a nested Sequential
                first = first[0]
            in_features = getattr(first, "in_features", None)
            if not isinstance(in_features, int):
                raise ValueError(
                    "DFA cannot infer the input size of this model; pass input_shape, the shape "
                    "of one sample, e.g. input_shape=(1, 28, 28)"
                )
            input_shape = (in_features,)
        weight = next(self.model.parameters())
        return torch.zeros(2, *input_shape, dtype=dtype or weight.dtype, device=weight.device)

    def _run(self, x: Tensor, wanted: set[Key] | None) -> tuple[dict[Key, Tensor], Tensor]:
        with self._capturing(wanted) as capture:
            output = self.model(x)
        if not isinstance(output, Tensor):
            raise TypeError(
                f"DFA needs a model that returns one tensor of class scores, got "
                f"{type(output).__name__}; wrap the model in one that returns the logits"
            )
        return capture.tensors, output

    def _set_up(
        self, input_shape: Sequence[int] | None, input_dtype: torch.dtype | None
    ) -> tuple[list[Key], list[Tensor], Tensor]:
        """The target points, their tensors and the output for a zero sample: every captured
        tensor that needs a gradient and is not the output, each tensor once (a block's input
        read by its first convolution and by its shortcut's is one target)."""
        # eval mode: no batch-norm statistics or spectral-norm steps
        with eval_mode(self.model), torch.enable_grad():
            tensors, output = self._run(self._sample(input_shape, input_dtype), None)
        keys, seen = [], {id(output)}
        for key, tensor in tensors.items():
            if tensor.requires_grad and id(tensor) not in seen:
                seen.add(id(tensor))
                keys.append(key)
        return keys, [tensors[k].detach() for k in keys], output.detach()

    def _warn_unreached(
        self, input_shape: Sequence[int] | None, input_dtype: torch.dtype | None
    ) -> None:
        """Warn, naming them, about trainable parameters that no gradient reaches, so that
        DFA would never train them.

        The usual cause: inside a named block, a layer that passes nothing to its input
        (``linear_blocked_dx``, ``conv_linear_blocked_dx``) cuts off the layers before it.
        Which parameters are reached is a property of the graph, not of the values, so a zero
        sample shows it.
        """
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        with eval_mode(self.model), torch.enable_grad():
            output = self._forward(self._sample(input_shape, input_dtype))
            grads = torch.autograd.grad(
                output.sum(), [p for _, p in params], allow_unused=True, materialize_grads=False
            )
        cut = [name for (name, _), g in zip(params, grads, strict=True) if g is None]
        if cut:
            warnings.warn(
                f"DFA will not train these parameters, since no gradient reaches them: "
                f"{', '.join(cut)}. Inside a named block the layers train by their own rules, "
                "and a layer that passes nothing to its input (linear_blocked_dx, "
                "conv_linear_blocked_dx) cuts off the layers before it: give those layers an "
                "exact or feedback-alignment mapping, or set requires_grad=False on parameters "
                "you mean to keep fixed.",
                stacklevel=3,  # the caller of DFA(...)
            )

    @property
    def feedback_matrices(self) -> list[Tensor]:
        """The matrices ``B_i`` (views into the stacked buffer), one per hidden target."""
        return list(self.feedback.split(self.sizes))

    def _chain_targets(self) -> list[int] | None:
        """For an ``nn.Sequential`` whose children are layers or hold none (activations,
        norms, pooling), each called once, with the default targets: the indices of the
        children whose inputs are targets. There each input is read by that child alone, so
        giving the child a detached input and the projection to the input is the same
        replacement as the hooks' (and it traces under ``torch.compile``). ``None`` otherwise."""
        if self.blocks is not None or not isinstance(self.model, nn.Sequential):
            return None
        for child in self.model:
            if not isinstance(child, LAYERS) and any(
                isinstance(m, LAYERS) for m in child.modules()
            ):
                return None
        if any(call > 0 or path not in self.model._modules for path, call in self._keys):
            return None
        names = list(self.model._modules)
        return [names.index(path) for path, _ in self._keys]

    def _chain_forward(self, x: Tensor) -> Tensor:
        hidden = []
        for i, child in enumerate(self.model):
            if i in self._chain:
                hidden.append(x)
                x = x.detach()
            x = child(x)
        return inject_direct_feedback(x, hidden, self.feedback, self.sizes, self.signal)

    @torch.compiler.disable  # hooks made per pass; under torch.compile this part runs eagerly
    def _forward(self, x: Tensor) -> Tensor:
        tensors, output = self._run(x, set(self._keys))
        missing = [f"{p} (call {c + 1})" for p, c in self._keys if (p, c) not in tensors]
        if missing:
            raise RuntimeError(
                f"this forward pass did not reach {', '.join(missing)}, where the set-up pass "
                "found a target: DFA needs the same modules called in every pass"
            )
        hidden = [tensors[key] for key in self._keys]
        delivered: list[Tensor] = []
        for i, h in enumerate(hidden):
            if h.requires_grad:
                h.register_hook(partial(_delivered, delivered, i))
        return inject_direct_feedback(
            output, hidden, self.feedback, self.sizes, self.signal, delivered
        )

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return self.model(x)
        if self._chain is not None:
            return self._chain_forward(x)
        return self._forward(x)

    def __repr__(self) -> str:
        sizes = " + ".join(map(str, self.sizes)) or "0"
        inner = repr(self.model).replace("\n", "\n  ")
        signal = "" if self.signal is None else f", signal={_name(self.signal)}"
        where = "" if self.blocks is None else f", blocks={list(self.blocks)}"
        return (
            f"DFA(feedback {self.feedback.shape[0]}×{self.num_outputs} = hidden targets "
            f"{sizes}{where}{signal}, model={inner})"
        )


def _delivered(parts: list[Tensor], i: int, grad: Tensor) -> Tensor | None:
    """The hook on hidden target ``i``: its gradient is the projection alone (``None``, no
    change, when this backward did not come through the network output's direct feedback)."""
    return parts[i] if parts else None


def _check_blocks(model: nn.Module, blocks: Sequence[str] | None) -> tuple[str, ...] | None:
    """``blocks`` as a tuple of module names of ``model``; a clear error naming any other."""
    if blocks is None:
        return None
    if isinstance(blocks, str) or not all(isinstance(b, str) for b in blocks):
        raise TypeError(f"blocks must be a list of module names, got {blocks!r}")
    if not blocks:
        raise ValueError("blocks is empty: name at least one module, or pass None")
    names = dict(model.named_modules())
    unknown = [b for b in blocks if b not in names or b == ""]
    if unknown:
        known = [n for n in names if n]
        shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
        raise ValueError(
            f"blocks names {', '.join(map(repr, unknown))}, not a submodule of this "
            f"{type(model).__name__}; its modules are {shown}"
        )
    return tuple(dict.fromkeys(blocks))


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

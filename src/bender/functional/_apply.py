"""The fast path for bender's autograd Functions: the ``forward(ctx, ...)`` form in eager mode.

bender writes each Function in the form with a separate ``setup_context`` (``forward`` without
``ctx``), which torch.func transforms (``grad``, ``vmap``) and torch.compile need. That form
costs more per call than the older ``forward(ctx, ...)`` form, and how much more depends on
the torch release: through the C ``apply`` it cost about 5 µs more on torch 2.13 and about 45 µs
more on torch 2.14, where it made every bent layer 1.15–1.5× as slow as ``F.linear``
(``benchmarks/layer_speed.py``). bender's Functions run once per bent layer and step, so
:func:`direct_apply` runs the ``forward(ctx, ...)`` form in eager mode and keeps the
``setup_context`` form for where it is needed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

# What ``Function.apply`` itself asks; private, so a torch without it takes the usual path.
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)
_is_compiling = torch.compiler.is_compiling


def ctx_form(function: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """``function`` rewritten in the ``forward(ctx, ...)`` form, with the same backward.

    The new ``forward`` runs ``function.forward`` and then ``function.setup_context`` on the
    same ``ctx``, which is what the ``setup_context`` form means; the backward is
    ``function.backward`` itself. A Function whose every call counts may spell the two out in
    one ``eager_forward(ctx, ...)`` static method instead, two Python calls fewer; the tests run
    both forms against the same formulas.
    """
    forward_with_ctx = getattr(function, "eager_forward", None)
    if forward_with_ctx is None:
        forward, setup_context = function.forward, function.setup_context

        def forward_with_ctx(ctx, *args):
            output = forward(*args)
            setup_context(ctx, args, output)
            return output

    return type(  # the same name, so that its graph nodes print as the original's
        function.__name__,
        (torch.autograd.Function,),
        {
            "__doc__": f"{function.__name__} in the forward(ctx, ...) form, for eager calls.",
            "__module__": function.__module__,
            "__qualname__": function.__qualname__ + ".ctx_form",
            "forward": staticmethod(forward_with_ctx),
            "backward": staticmethod(function.backward),
        },
    )


def direct_apply(function: type[torch.autograd.Function]) -> Callable[..., Tensor]:
    """``function.apply``, by the cheapest route that gives the same result.

    Under a torch.func transform (``grad``, ``vmap``, ...), or while torch.compile traces, it is
    ``function.apply`` itself (the ``setup_context`` form, which those need). Otherwise it is the
    C ``apply`` of :func:`ctx_form`'s twin, skipping ``Function.apply``'s Python layer too: that
    layer fills in default arguments (bender's ``forward`` methods have none, which is checked
    here) and unwraps tensors left over from finished transforms.
    """
    defaults = [
        name
        for name, parameter in inspect.signature(function.forward).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    ]
    if defaults:
        raise TypeError(
            f"{function.__name__}.forward has default arguments ({', '.join(defaults)}), which "
            "only Function.apply fills in; give every argument at the call instead"
        )
    eager = ctx_form(function)
    c_apply = super(torch.autograd.Function, eager).apply

    def apply(*args) -> Tensor:
        if _is_compiling() or _transforms_active():  # Dynamo 2.4 cannot trace the second
            return function.apply(*args)
        return c_apply(*args)

    return apply

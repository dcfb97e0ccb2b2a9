"""Multi-head attention whose projections are bender layers, so that they follow any rule.

``GenAttention`` computes what ``nn.MultiheadAttention`` computes (Vaswani et al. 2017,
arXiv:1706.03762)::

    q = query Wqᵀ + bq,   k = key Wkᵀ + bk,   v = value Wvᵀ + bv        (split into H heads)
    head_h = softmax(q_h k_hᵀ / √d + mask) v_h,   out = [head_1 … head_H] Woᵀ + bo

but its four projections are :class:`~bender.layers.GenDense` layers (``q_proj``, ``k_proj``,
``v_proj``, ``out_proj``), each with the forward mapping given: with ``linear_asym_dx`` the
gradient that reaches ``query`` is ``δq Bq`` instead of ``δq Wq``, and likewise for the others;
the softmax and the products between q, k and v keep their exact gradients (there are no
weights in them to replace). ``from_module`` builds one from an ``nn.MultiheadAttention``
with the same weights and so the same outputs. It stands in for ``self_attn`` in torch's
``nn.TransformerEncoderLayer`` and ``nn.TransformerDecoderLayer``; their fused inference path
(which reads ``in_proj_weight``) does not apply to it, so they always call it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bender.functional._checks import check_positive_int
from bender.layers import GenDense, Init
from bender.mappings import Mapping, linear, resolve_mapping


def _additive(mask: Tensor | None, name: str, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (``True``: may not attend) as ``-inf``/``0``; a float mask as given."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, float("-inf")
        )
    if not mask.is_floating_point():
        raise TypeError(f"{name} must be a bool or float tensor, got {mask.dtype}")
    return mask.to(dtype)


class GenAttention(nn.Module):
    """Multi-head attention with bender layers as its projections (see the module docstring).

    Args:
        embed_dim, num_heads, dropout, bias, kdim, vdim, batch_first: as in
            ``nn.MultiheadAttention``.
        forward: the mapping of all four projections (a function or its registered name).
        feedback: ``True`` gives each projection a fixed random feedback matrix, as
            :class:`~bender.layers.GenDense` does (mappings that need one).
        init: initialiser of the weights and feedback matrices (default Glorot-uniform).

    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False)`` returns ``(output, weights)`` as
    ``nn.MultiheadAttention`` does: masks are boolean (``True``: may not attend) or additive
    floats; ``attn_mask`` is ``(L, S)`` or ``(N·H, L, S)``; ``weights`` is ``None`` unless
    ``need_weights``. Inputs are ``(N, L, E)`` with ``batch_first``, else ``(L, N, E)``, or
    unbatched ``(L, E)``; inside, the projections always see batch-first tensors.
    """

    # torch's transformer layers read these to decide on their fused inference path; with
    # separate projections there is no packed in_proj_weight, and that path is off
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        *,
        forward: Mapping | str = linear,
        feedback: bool = False,
        init: Init | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("embed_dim", embed_dim)
        check_positive_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim must be divisible by num_heads, got {embed_dim} and {num_heads}"
            )
        if isinstance(dropout, bool) or not (0 <= dropout < 1):
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        layer = {
            "forward": forward,
            "feedback": feedback,
            "bias": bias,
            "init": init,
            "device": device,
            "dtype": dtype,
        }
        self.q_proj = GenDense(embed_dim, embed_dim, **layer)
        self.k_proj = GenDense(self.kdim, embed_dim, **layer)
        self.v_proj = GenDense(self.vdim, embed_dim, **layer)
        self.out_proj = GenDense(embed_dim, embed_dim, **layer)

    @classmethod
    def from_module(
        cls, attention: nn.MultiheadAttention, forward: Mapping | str, init: Init | None = None
    ) -> GenAttention:
        """A ``GenAttention`` with ``attention``'s settings and weights (copies) and
        ``forward`` as the mapping of its projections; feedback matrices, where the mapping
        needs them, drawn fresh."""
        if attention.bias_k is not None or attention.add_zero_attn:
            raise ValueError(
                "nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported; "
                "build it without them"
            )
        weight = attention.out_proj.weight
        forward = resolve_mapping(forward)
        new = cls(
            attention.embed_dim,
            attention.num_heads,
            attention.dropout,
            bias=attention.in_proj_bias is not None,
            kdim=attention.kdim,
            vdim=attention.vdim,
            batch_first=attention.batch_first,
            forward=forward,
            feedback=bool(getattr(forward, "needs_feedback", False)),
            init=init,
            device=weight.device,
            dtype=weight.dtype,
        )
        if attention._qkv_same_embed_dim:
            weights = attention.in_proj_weight.chunk(3)
        else:
            weights = (attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight)
        biases = (None,) * 3 if attention.in_proj_bias is None else attention.in_proj_bias.chunk(3)
        projections = (new.q_proj, new.k_proj, new.v_proj)
        with torch.no_grad():
            for layer, w, b in zip(projections, weights, biases, strict=True):
                layer.weight.copy_(w)
                layer.weight.requires_grad_(w.requires_grad)
                if b is not None:
                    layer.bias.copy_(b)
                    layer.bias.requires_grad_(b.requires_grad)
            for name in ("weight", "bias"):
                source = getattr(attention.out_proj, name)
                if source is not None:
                    getattr(new.out_proj, name).copy_(source)
                    getattr(new.out_proj, name).requires_grad_(source.requires_grad)
        return new.train(attention.training)

    def _heads(self, x: Tensor) -> Tensor:
        """``(N, L, E)`` → ``(N, H, L, d)``."""
        n, length, _ = x.shape
        return x.view(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _mask(
        self,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        shape: tuple[int, int, int],
        dtype: torch.dtype,
    ) -> Tensor | None:
        """One additive mask that broadcasts to ``(N, H, L, S)``, or ``None``."""
        n, length, source = shape
        mask = _additive(attn_mask, "attn_mask", dtype)
        if mask is not None:
            if mask.dim() == 3:  # (N·H, L, S)
                mask = mask.view(n, self.num_heads, length, source)
            elif mask.dim() != 2:
                raise ValueError(
                    f"attn_mask must be (L, S) or (N·num_heads, L, S), got {tuple(mask.shape)}"
                )
        padding = _additive(key_padding_mask, "key_padding_mask", dtype)
        if padding is not None:
            if padding.shape != (n, source):
                raise ValueError(
                    f"key_padding_mask must be (N, S) = {(n, source)}, got {tuple(padding.shape)}"
                )
            padding = padding.view(n, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, _ = query.shape
        source = key.shape[1]
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        mask = self._mask(attn_mask, key_padding_mask, (n, length, source), q.dtype)
        causal = is_causal and mask is None  # with a mask, is_causal is only a hint about it
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if causal:
                upper = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
                scores = scores.masked_fill(upper, float("-inf"))
            elif mask is not None:
                scores = scores + mask
            weights = scores.softmax(-1)
            heads = F.dropout(weights, dropout, self.training) @ v
            weights = weights.mean(1) if average_attn_weights else weights
        else:
            heads = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal
            )
        out = self.out_proj(heads.transpose(1, 2).reshape(n, length, self.embed_dim))
        if unbatched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def extra_repr(self) -> str:
        dims = "" if self.kdim == self.vdim == self.embed_dim else f", kdim={self.kdim}"
        dims += "" if self.vdim == self.embed_dim else f", vdim={self.vdim}"
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"
            f"{dims}, batch_first={self.batch_first}"
        )

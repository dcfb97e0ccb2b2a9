"""Small argument checks shared by the primitives: fail early, name expected vs given."""

from __future__ import annotations

import math

from torch import Tensor


def check_same_shape(name: str, given: Tensor, reference_name: str, reference: Tensor) -> None:
    """Raise ``ValueError`` unless ``given`` has the shape of ``reference``."""
    if given.shape != reference.shape:
        raise ValueError(
            f"{name} must have the shape of {reference_name} {tuple(reference.shape)}, "
            f"got {tuple(given.shape)}"
        )


def check_features(x: Tensor, weight: Tensor) -> None:
    """Raise ``ValueError`` unless the last dim of ``x`` is ``weight``'s input size."""
    if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input must have {weight.shape[1]} features in its last dim "
            f"(weight is {tuple(weight.shape)}), got input of shape {tuple(x.shape)}"
        )


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an int above zero (``True`` is not a size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_positive_number(name: str, value: object) -> float:
    """``value`` as a float; ``TypeError`` unless it is a real number (not a bool),
    ``ValueError`` unless it is above zero and finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return float(value)

"""Learning-rate schedules by a short text, as the field's protocols state them.

``step:50,75`` multiplies the learning rate by 0.1 after epochs 50 and 75 (``step:50,75:0.2``
by 0.2; He et al. 2016 and BioTorch's CIFAR protocol); ``cosine`` follows
``½ (1 + cos(π t / T))`` over the run (Loshchilov & Hutter 2017, SGDR, without restarts);
``+warmup:K`` after either (or ``warmup:K`` alone) raises it linearly over the first ``K``
epochs, ``(e + 1) / K`` in epoch ``e + 1`` (Goyal et al. 2017). The factor of each epoch is
a plain object, so a checkpoint saves it with the scheduler and a resumed run goes on with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


class EpochFactor:
    """The factor of the learning rate in the epoch after ``e`` completed ones."""

    def __init__(
        self,
        kind: str,
        epochs: int,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
        warmup: int = 0,
    ) -> None:
        self.kind, self.epochs = kind, epochs
        self.milestones, self.gamma, self.warmup = list(milestones or []), gamma, warmup

    def __call__(self, e: int) -> float:
        if e < self.warmup:
            return (e + 1) / self.warmup
        if self.kind == "step":
            return self.gamma ** sum(m <= e for m in self.milestones)
        if self.kind == "cosine":
            span = max(self.epochs - self.warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(e - self.warmup, span) / span))
        return 1.0


def parse_schedule(text: str, epochs: int) -> EpochFactor:
    """The :class:`EpochFactor` that ``text`` names for a run of ``epochs`` epochs; a
    ``ValueError`` saying what was expected otherwise."""
    expected = (
        "expected step:E1,E2[:GAMMA], cosine, warmup:K, or step/cosine followed by +warmup:K "
        f"(e.g. step:50,75, cosine+warmup:5), got {text!r}"
    )
    main, plus, extra = text.partition("+")
    warmup = 0
    parts = [main] + ([extra] if plus else [])
    kind, milestones, gamma = "constant", [], 0.1
    for i, part in enumerate(parts):
        name, _, args = part.partition(":")
        try:
            if name == "warmup" and (i == len(parts) - 1):
                warmup = int(args)
                if warmup < 1:
                    raise ValueError
            elif name == "step" and i == 0:
                epochs_text, _, gamma_text = args.partition(":")
                milestones = [int(m) for m in epochs_text.split(",")]
                gamma = float(gamma_text) if gamma_text else 0.1
                if not milestones or min(milestones) < 1 or milestones != sorted(set(milestones)):
                    raise ValueError
                if not (0 < gamma < 1):
                    raise ValueError
                kind = "step"
            elif name == "cosine" and i == 0 and not args:
                kind = "cosine"
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"--schedule: {expected}") from None
    if warmup >= epochs and kind == "cosine":
        raise ValueError(f"--schedule: a warm-up of {warmup} epochs leaves no cosine in {epochs}")
    return EpochFactor(kind, epochs, milestones, gamma, warmup)


def scheduler_factory(
    text: str, epochs: int
) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR]:
    """``train``'s ``scheduler`` for the schedule ``text`` (checked now, not at the first
    epoch): ``LambdaLR`` with the :class:`EpochFactor`, stepped once after every epoch."""
    factor = parse_schedule(text, epochs)
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

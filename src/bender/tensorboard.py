"""The per-epoch numbers of a run as TensorBoard scalars (``pip install 'bender-torch[dev]'``
or ``tensorboard``), written through ``torch.utils.tensorboard``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class EpochScalars:
    """Writes each epoch's row (losses, accuracies, seconds), the learning rate and alignment
    angles under ``folder``; a resumed run drops the events a killed run wrote after its last
    checkpoint (``start`` is the first epoch to be written)."""

    def __init__(self, folder: Path, start: int = 1) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(
                "--tensorboard needs the tensorboard package: pip install tensorboard"
            ) from None
        self.writer = SummaryWriter(str(folder), purge_step=start)

    def __call__(self, row: dict[str, Any], lr: float, angles: dict[str, float] | None) -> None:
        epoch = int(row["epoch"])
        for name in ("loss_train", "loss_test", "acc_train", "acc_test", "seconds"):
            self.writer.add_scalar(name.replace("_", "/", 1), row[name], epoch)
        self.writer.add_scalar("lr", lr, epoch)
        for name, value in (angles or {}).items():
            if name != "epoch":
                kind, _, layer = name.partition("_angle_")
                self.writer.add_scalar(f"{kind}_angle/{layer}", value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

"""Shared fixtures: batch sizes, dtypes, tolerances, the data folder and the test device.

``BENDER_TEST_DEVICE=cuda`` makes CUDA torch's default device for the whole run, so every tensor
a test makes without naming a device (``torch.randn(...)``) lives there and the formula tests
check the primitives on the GPU. TF32 is switched off there: the tolerances are full float32's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

BATCH_SIZES = [1, 37]
DTYPES = [torch.float32, torch.float64]
DATA_ROOT = Path(
    os.environ.get("BENDER_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
TEST_DEVICE = os.environ.get("BENDER_TEST_DEVICE", "cpu")


def pytest_configure(config) -> None:
    if TEST_DEVICE == "cpu":
        return
    device = torch.device(TEST_DEVICE)
    torch.empty(0, device=device)  # an unusable device fails here, before any test runs
    torch.set_default_device(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def pytest_report_header(config) -> str:
    return f"bender test device: {TEST_DEVICE}"


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """assert_close with tolerances that suit the dtype (sums are reordered by BLAS)."""
    tol = 1e-4 if actual.dtype == torch.float32 else 1e-10
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def cpu_uniform(shape: tuple[int, ...] | torch.Size, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """``U(0, 1)`` drawn by a CPU generator seeded with ``seed``, moved to the test device: what
    a layer's own ``torch.Generator()`` draws, computed without bender."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    drawn = torch.rand(shape, generator=generator, dtype=dtype, device="cpu")
    return drawn.to(torch.get_default_device())


def global_rng_state() -> torch.Tensor:
    """The state of the global generator that draws on the test device."""
    return torch.cuda.get_rng_state() if TEST_DEVICE.startswith("cuda") else torch.get_rng_state()


def dense_gradcheck_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 ``x`` (batch×4), ``W`` (2×4) and bias (2), all requiring grad, for gradcheck."""
    return tuple(
        torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        for shape in ((batch, 4), (2, 4), (2,))
    )


def gradcheck_with_weight_as_feedback(function, x, weight, bias, *settings) -> bool:
    """gradcheck of ``function.apply(x, W, copy of W, bias, *settings)``.

    With the feedback equal to ``W`` (a copy, so the custom backward still runs) a bent rule's
    backward must give the exact gradient.
    """

    def exact(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return function.apply(x, w, w.detach().clone(), b, *settings)

    return torch.autograd.gradcheck(exact, (x, weight, bias))


@pytest.fixture(params=BATCH_SIZES, ids=lambda n: f"n{n}")
def batch(request) -> int:
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "MNIST" / "raw").is_dir():
        pytest.fail(f"MNIST not found under {DATA_ROOT}; set BENDER_DATA to the data folder")
    return DATA_ROOT


@pytest.fixture(scope="session")
def mnist(data_root):
    from bender.data import load

    return load("mnist", data_root)


@pytest.fixture(scope="session")
def small_mnist(mnist):
    return mnist.subset(2048, 1000)

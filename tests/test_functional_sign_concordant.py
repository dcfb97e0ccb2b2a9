import math

import pytest
import torch

from bender.functional.sign_concordant import glorot_bound, random_magnitudes, sign_concordant
from tests.conftest import cpu_uniform


@pytest.mark.parametrize(
    ("shape", "fan_in", "fan_out"),
    [((4, 6), 6, 4), ((3, 2, 5, 5), 50, 75), ((8, 1, 3), 3, 24), ((2, 3, 2, 2, 2), 24, 16)],
)
def test_glorot_bound_is_xavier_uniform_bound(shape, fan_in, fan_out):
    a = math.sqrt(6 / (fan_in + fan_out))
    assert glorot_bound(torch.empty(shape)) == pytest.approx(a, rel=1e-12)


def test_glorot_bound_refuses_a_vector():
    with pytest.raises(ValueError, match=r"at least 2 dims .*\(5,\)"):
        glorot_bound(torch.empty(5))


def test_random_magnitudes_range_mean_and_reproducibility(dtype):
    weight = torch.empty(300, 200, dtype=dtype)
    a = math.sqrt(6 / 500)
    m = random_magnitudes(weight, torch.Generator().manual_seed(5))
    assert m.dtype == dtype and m.shape == weight.shape
    assert m.min() >= 0 and m.max() <= a
    assert m.mean().item() == pytest.approx(a / 2, rel=0.01)  # U(0, a): mean a/2
    again = random_magnitudes(weight, torch.Generator().manual_seed(5))
    assert torch.equal(m, again)
    expected = cpu_uniform(weight.shape, 5, dtype)
    torch.testing.assert_close(m, expected * a)


def test_random_magnitudes_use_the_global_generator_without_one():
    weight = torch.empty(3, 4)
    torch.manual_seed(11)
    first = random_magnitudes(weight)
    torch.manual_seed(11)
    assert torch.equal(random_magnitudes(weight), first)


def test_sign_concordant_uniform_and_with_magnitudes(dtype):
    weight = torch.tensor([[0.5, -2.0, 0.0], [-0.1, 3.0, 1e-9]], dtype=dtype, requires_grad=True)
    signs = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 1.0]], dtype=dtype)
    b = sign_concordant(weight)
    assert torch.equal(b, signs)
    assert not b.requires_grad
    m = torch.tensor([[0.2, -0.3, 0.4], [0.5, 0.6, -0.7]], dtype=dtype, requires_grad=True)
    b = sign_concordant(weight, m)
    expected = torch.tensor([[0.2, -0.3, 0.0], [-0.5, 0.6, 0.7]], dtype=dtype)
    assert torch.equal(b, expected)  # |M| carries the magnitude, W the sign
    assert not b.requires_grad


def test_sign_concordant_refuses_magnitudes_of_another_shape():
    with pytest.raises(ValueError, match=r"weight's shape \(2, 3\), got \(3, 2\)"):
        sign_concordant(torch.ones(2, 3), torch.ones(3, 2))

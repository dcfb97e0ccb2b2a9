"""Bop against its two-line rule, worked by hand; Bop beside Adam in train; the flip ratio."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bender import GenDense, recipes
from bender.optimizers import Bop, FlipRatio, binarize_latent, binary_weights, bop_with
from bender.training import train


def test_bop_flips_where_the_gradient_average_agrees_with_the_weight_and_passes_the_threshold():
    w = nn.Parameter(torch.tensor([1.0, -1.0, 1.0, -1.0]))
    opt = Bop([w], threshold=0.5, gamma=0.5)
    # step 1: m = 0.5·g = [0.6, -0.6, -0.6, 0.2]; w·m = [0.6, 0.6, -0.6, -0.2] > 0.5 at 0 and 1
    w.grad = torch.tensor([1.2, -1.2, -1.2, 0.4])
    opt.step()
    assert w.tolist() == [-1.0, 1.0, 1.0, -1.0]
    assert (opt.last_flips, opt.last_total) == (2, 4)
    # step 2: m = 0.5·m + 0.5·g = [0.3+0.5, -0.3-0.5, -0.3+0.1, 0.1-0.6] = [0.8, -0.8, -0.2, -0.5]
    # w·m = [-0.8, -0.8, -0.2, 0.5]: nothing above 0.5 (0.5 itself does not flip)
    w.grad = torch.tensor([1.0, -1.0, 0.2, -1.2])
    opt.step()
    assert w.tolist() == [-1.0, 1.0, 1.0, -1.0]
    torch.testing.assert_close(opt.state[w]["momentum"], torch.tensor([0.8, -0.8, -0.2, -0.5]))
    # step 3: m = [0.4+1.0, -0.4-1.0, -0.1+0.5, -0.25-0.5]: w·m = [-1.4, -1.4, 0.4, 0.75]
    w.grad = torch.tensor([2.0, -2.0, 1.0, -1.0])
    opt.step()
    assert w.tolist() == [-1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bop_on_a_batch_of_weights_matches_the_rule_elementwise(dtype):
    torch.manual_seed(0)
    w = nn.Parameter(torch.randint(0, 2, (37, 5)).to(dtype) * 2 - 1)
    opt = Bop([w], threshold=1e-3, gamma=0.1)
    m, expected = torch.zeros_like(w), w.detach().clone()
    for _ in range(4):
        g = torch.randn_like(w) * 0.05
        w.grad = g
        opt.step()
        m = 0.9 * m + 0.1 * g
        expected = torch.where(expected * m > 1e-3, -expected, expected)
        assert torch.equal(w.detach(), expected)


def test_bop_refuses_a_weight_that_is_not_binary_and_bad_settings():
    with pytest.raises(ValueError, match=r"parameter 0 of group 0 \(shape \(3,\)\) holds 0\.5"):
        Bop([nn.Parameter(torch.tensor([1.0, 0.5, -1.0]))])
    w = [nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="threshold must be positive and finite, got 0"):
        Bop(w, threshold=0)
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\], got 2"):
        Bop(w, gamma=2)


def test_binarize_latent_sets_the_latent_weights_to_their_signs():
    model = recipes.build("binary-mlp-bn")
    weights = binarize_latent(model)
    assert len(weights) == 3 and all(set(w.unique().tolist()) == {-1.0, 1.0} for w in weights)
    assert weights == binary_weights(model)
    with pytest.raises(ValueError, match="no layer with a 1-bit kernel quantizer"):
        binarize_latent(nn.Sequential(GenDense(3, 2)))


def test_bop_beside_adam_trains_the_binary_mlp(small_mnist):
    model = recipes.build("binary-mlp-bn", seed=0)
    flips = FlipRatio(model)
    data = small_mnist.subset(1024, 500)
    table = train(model, data, epochs=2, optimizer=bop_with(model, gamma=1e-3), callbacks=[flips])
    assert all(set(w.unique().tolist()) <= {-1.0, 1.0} for w in binary_weights(model))
    assert table["acc_test"].iloc[-1] > 0.6  # well above chance (0.1) after 32 steps
    assert len(flips.ratios) == 2
    assert all(0 < r < 0.5 for r in flips.ratios)  # flips happen, few of them


def test_flip_ratio_counts_the_share_of_signs_that_changed():
    model = nn.Sequential(GenDense(4, 2, kernel_quantizer="ste_sign"))
    ratio = FlipRatio(model)
    with torch.no_grad():
        model[0].latent_weight()[0, :2].neg_()  # 2 of 8 weights change sign
    row = {}
    ratio(row, model)
    assert row["flip_ratio"] == 0.25
    ratio(row, model)
    assert row["flip_ratio"] == 0.0 and ratio.ratios == [0.25, 0.0]
    with pytest.raises(ValueError, match="has no binary layer"):
        FlipRatio(nn.Sequential(GenDense(3, 2)))

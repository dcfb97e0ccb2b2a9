import torch
from torch import nn

from bender import GenDense, HardSigmoid, HardtanhAdaSTE, SignSTE, StocSignSTE


def test_modules_match_their_formulas_and_fit_in_sequential():
    x = torch.tensor([[-2.0, -0.5, 0.0, 0.5, 2.0]])
    assert SignSTE()(x).tolist() == [[-1.0, -1.0, 0.0, 1.0, 1.0]]
    assert HardSigmoid()(x).tolist() == [[0.0, 0.25, 0.5, 0.75, 1.0]]
    assert HardtanhAdaSTE()(x).tolist() == [[-1.0, -0.5, 0.0, 0.5, 1.0]]
    a = StocSignSTE(torch.Generator().manual_seed(0))(x)
    b = StocSignSTE(torch.Generator().manual_seed(0))(x)
    assert torch.equal(a, b) and set(a.flatten().tolist()) <= {-1.0, 1.0}
    model = nn.Sequential(GenDense(5, 4, SignSTE()), HardtanhAdaSTE(), GenDense(4, 2))
    assert model(x).shape == (1, 2)


def test_sign_ste_as_layer_activation_passes_gradient_straight_through():
    layer = GenDense(3, 2, SignSTE())
    x = torch.randn(4, 3)
    g = torch.randn(4, 2)
    layer(x).backward(g)
    torch.testing.assert_close(layer.weight.grad, g.T @ x)

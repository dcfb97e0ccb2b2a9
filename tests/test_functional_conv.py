import pytest
import torch
import torch.nn.functional as F

from bender.functional import conv, conv_asym_dx, conv_blocked_dx, conv_kp_dx
from bender.functional.conv import BentConv, KolenPollackConv, bent_conv
from bender.layers import GenConv
from tests.conftest import close, gradcheck_with_weight_as_feedback

PLAIN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
# (dims, in, out, kernel, stride, padding, dilation, groups, spatial size)
CASES = [
    (1, 4, 6, (3,), 2, 1, 1, 2, (11,)),
    (2, 3, 5, (3, 2), 1, (1, 0), 1, 1, (8, 7)),
    (2, 4, 4, (3, 3), 2, 2, 2, 4, (9, 9)),
    (3, 2, 4, (2, 3, 2), 1, 1, (1, 2, 1), 2, (5, 6, 5)),
    # padding by name
    (1, 2, 3, (4,), 1, "same", 1, 1, (9,)),  # even kernel: one more after than before
    (2, 2, 4, (3, 2), 1, "same", (1, 3), 2, (6, 8)),  # odd total 3 in the second dim
    (3, 2, 2, (2, 3, 2), 1, "same", 1, 1, (4, 5, 4)),
    (2, 3, 2, (3, 3), 1, "valid", 2, 1, (7, 8)),
]


def _ids(case):
    return f"{case[0]}d-s{case[4]}-p{case[5]}-g{case[7]}"


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's reference
@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("rule", ["asym", "kp"])
def test_conv_asym_dx_and_conv_kp_dx(rule, case, batch, dtype):
    dims, cin, cout, k, stride, pad, dil, groups, size = case
    x = torch.randn(batch, cin, *size, dtype=dtype, requires_grad=True)
    w = torch.randn(cout, cin // groups, *k, dtype=dtype, requires_grad=True)
    b = torch.randn_like(w).requires_grad_(rule == "kp")  # Kolen-Pollack's B learns
    y = (conv_asym_dx if rule == "asym" else conv_kp_dx)(x, w, b, stride, pad, dil, groups)
    close(y, PLAIN[dims](x.detach(), w.detach(), None, stride, pad, dil, groups))
    if pad == "same":
        assert y.shape[2:] == x.shape[2:]
    delta = torch.randn_like(y)
    y.backward(delta)
    # Expected: ∂x is the input gradient of a plain convolution with B (transposed conv of δ
    # with B); ∂W is the weight gradient of the plain convolution with W; Kolen-Pollack's ∂B
    # is that ∂W too.
    xr = x.detach().clone().requires_grad_()
    PLAIN[dims](xr, b.detach(), None, stride, pad, dil, groups).backward(delta)
    wr = w.detach().clone().requires_grad_()
    PLAIN[dims](x.detach(), wr, None, stride, pad, dil, groups).backward(delta)
    close(x.grad, xr.grad)
    close(w.grad, wr.grad)
    assert not torch.allclose(x.grad, torch.zeros_like(x))
    if rule == "kp":
        close(b.grad, wr.grad)
    else:
        assert b.grad is None


def test_padding_by_name_errors():
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    w, b = torch.randn(3, 2, 3, 3), torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match=r"padding='same' needs stride 1, got stride \(2, 2\)"):
        conv_asym_dx(x, w, b, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding must be 'valid', 'same', an int or a tuple"):
        conv_asym_dx(x, w, b, padding="full")


@pytest.mark.parametrize("case", CASES[:2], ids=_ids)
def test_conv_blocked_dx(case, dtype):
    dims, cin, cout, k, stride, pad, dil, groups, size = case
    x = torch.randn(3, cin, *size, dtype=dtype, requires_grad=True)
    w = torch.randn(cout, cin // groups, *k, dtype=dtype, requires_grad=True)
    y = conv_blocked_dx(x, w, stride, pad, dil, groups)
    delta = torch.randn_like(y)
    y.backward(delta)
    assert x.grad is None
    wr = w.detach().clone().requires_grad_()
    PLAIN[dims](x.detach(), wr, None, stride, pad, dil, groups).backward(delta)
    close(w.grad, wr.grad)


def test_gradcheck_conv_linear():
    layer = GenConv(2, 3, (2, 3), stride=2, padding=1, dtype=torch.float64)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: conv(x, w, b, 2, 1), (x, layer.weight, layer.bias)
    )


@pytest.mark.parametrize("batch", [1, 2])
def test_gradcheck_bent_conv_with_feedback_equal_to_the_kernel(batch):
    # B = a copy of W: the custom backward must then give the exact gradient
    layer = GenConv(2, 3, (2, 3), stride=2, padding=1, dtype=torch.float64)
    x = torch.randn(batch, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    settings = (2, 2), (1, 1), (1, 1), 1  # stride, padding, dilation, groups
    assert gradcheck_with_weight_as_feedback(BentConv, x, layer.weight, layer.bias, *settings)
    exact = conv_asym_dx(x, layer.weight, layer.weight)  # B is W itself: autograd's own kernels
    assert exact.grad_fn.name() == "ConvolutionBackward0"


def test_conv_errors():
    with pytest.raises(
        ValueError, match=r"shape of the kernel W \(4, 3, 3, 3\), got \(4, 3, 2, 2\)"
    ):
        conv_asym_dx(torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(4, 3, 2, 2))
    with pytest.raises(ValueError, match="1 to 3 spatial dims"):
        conv(torch.randn(1, 3, 5, 5, 5, 5), torch.randn(4, 3, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="batched input of 4 dims"):
        conv_asym_dx(torch.randn(3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3))


def test_conv_input_without_grad_gives_exact_kernel_gradient(dtype):
    x = torch.randn(2, 3, 6, 6, dtype=dtype)
    w = torch.randn(4, 3, 3, 3, dtype=dtype, requires_grad=True)
    b = torch.randn_like(w)
    y = conv_asym_dx(x, w, b, 1, 1)
    delta = torch.randn_like(y)
    y.backward(delta)
    wr = w.detach().clone().requires_grad_()
    F.conv2d(x, wr, None, 1, 1).backward(delta)
    close(w.grad, wr.grad)


def test_conv_asym_dx_backward_does_not_read_the_kernel(dtype):
    # ∂x uses B and ∂W = δ ⋆ x, so a kernel changed in place between forward and backward
    # (as by an optimizer step on another loss) trips no version check and changes nothing.
    x = torch.randn(2, 3, 6, 6, dtype=dtype, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=dtype, requires_grad=True)
    fb, bias = torch.randn_like(w), torch.randn(4, dtype=dtype, requires_grad=True)
    y = BentConv.apply(x, w, fb, bias, [1, 1], [1, 1], [1, 1], 1)
    delta = torch.randn_like(y)
    with torch.no_grad():
        w.mul_(-3.0)
    y.backward(delta)
    xr = x.detach().clone().requires_grad_()
    F.conv2d(xr, fb, None, 1, 1).backward(delta)
    wr = w.detach().clone().requires_grad_()
    F.conv2d(x.detach(), wr, None, 1, 1).backward(delta)
    close(x.grad, xr.grad)
    close(w.grad, wr.grad)
    close(bias.grad, delta.sum((0, 2, 3)))


def test_kolen_pollack_conv_with_bias_and_an_input_without_gradient(dtype):
    x = torch.randn(2, 3, 6, 6, dtype=dtype)
    w = torch.randn(4, 3, 3, 3, dtype=dtype, requires_grad=True)
    fb = torch.randn_like(w).requires_grad_()
    bias = torch.randn(4, dtype=dtype, requires_grad=True)
    y = bent_conv(x, w, fb, bias, 1, 1, feedback_learns=True)
    delta = torch.randn_like(y)
    y.backward(delta)
    wr, br = w.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    F.conv2d(x, wr, br, 1, 1).backward(delta)
    close(w.grad, wr.grad)
    close(fb.grad, wr.grad)
    close(bias.grad, br.grad)
    assert fb.grad.data_ptr() != w.grad.data_ptr()


def test_kolen_pollack_conv_with_fixed_feedback_is_feedback_alignment():
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w, fb = torch.randn(4, 3, 3, 3, requires_grad=True), torch.randn(4, 3, 3, 3)
    assert conv_kp_dx(x, w, fb, 1, 1).grad_fn.name() == "BentConvBackward"


@pytest.mark.parametrize("batch", [1, 2])
def test_gradcheck_kolen_pollack_conv_with_feedback_equal_to_the_kernel(batch):
    layer = GenConv(2, 3, (2, 3), stride=2, padding=1, dtype=torch.float64)
    x = torch.randn(batch, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    settings = (2, 2), (1, 1), (1, 1), 1  # stride, padding, dilation, groups
    assert gradcheck_with_weight_as_feedback(
        KolenPollackConv, x, layer.weight, layer.bias, *settings
    )


def test_kolen_pollack_conv_errors():
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(
        ValueError, match=r"shape of the kernel W \(4, 3, 3, 3\), got \(4, 3, 2, 2\)"
    ):
        conv_kp_dx(torch.randn(1, 3, 5, 5), w, torch.randn(4, 3, 2, 2, requires_grad=True))
    with pytest.raises(ValueError, match="batched input of 4 dims"):
        conv_kp_dx(torch.randn(3, 5, 5), w, torch.randn(4, 3, 3, 3, requires_grad=True))
    with pytest.raises(ValueError, match="conv_kp_dx needs a feedback kernel"):
        conv_kp_dx(torch.randn(1, 3, 5, 5), w, None)


@pytest.mark.parametrize("rule", ["asym", "kp"])
def test_bent_conv_in_channels_last_memory_follows_the_formula(rule, batch, dtype):
    """channels_last inputs, kernels and feedback (a conv net trained with --channels-last):
    the same ∂x (transposed convolution of δ with B) and ∂W as in contiguous memory."""
    last = torch.channels_last
    x = torch.randn(batch, 4, 9, 8, dtype=dtype).contiguous(memory_format=last)
    w = torch.randn(6, 4, 3, 3, dtype=dtype).contiguous(memory_format=last)
    b = torch.randn(6, 4, 3, 3, dtype=dtype).contiguous(memory_format=last)
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_(rule == "kp")
    y = (conv_asym_dx if rule == "asym" else conv_kp_dx)(x, w, b, 1, 1, 1, 1)
    delta = torch.randn(y.shape, dtype=dtype)
    y.backward(delta)
    xr = x.detach().contiguous().requires_grad_()
    wr = w.detach().contiguous().requires_grad_()
    close(y, F.conv2d(xr.detach(), wr.detach(), None, 1, 1))
    F.conv2d(xr, b.detach().contiguous(), None, 1, 1).backward(delta)
    F.conv2d(x.detach().contiguous(), wr, None, 1, 1).backward(delta)
    close(x.grad, xr.grad)
    close(w.grad, wr.grad)
    if rule == "kp":
        close(b.grad, wr.grad)

"""bender.functional.native: feedback alignment's dense product and the sign STE in C++.

Built once per test session (about a minute; then from the cache under ~/.cache/bender). The
gradients are checked against the formula written here, as for the Python Function; training
through it gives the Python Function's numbers exactly (the same ATen products in the same
order)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bender.functional import native
from bender.functional.dense import bent_linear
from tests.conftest import close


@pytest.fixture(scope="module")
def compiled():
    if not native.enable():
        pytest.fail("the C++ Function did not build: see the warning (a compiler and ninja?)")
    yield native.native_linear()
    native.disable()


@pytest.mark.parametrize("batch", [1, 37])
@pytest.mark.parametrize("with_bias", [True, False])
def test_native_gradients_follow_the_formula(compiled, batch, with_bias, dtype):
    torch.manual_seed(batch)
    x = torch.randn(batch, 6, dtype=dtype, requires_grad=True)
    weight = torch.randn(4, 6, dtype=dtype, requires_grad=True)
    feedback = torch.randn(4, 6, dtype=dtype)
    bias = torch.randn(4, dtype=dtype, requires_grad=True) if with_bias else None
    y = bent_linear(x, weight, feedback, bias)
    assert type(y.grad_fn).__name__ == "CppFunction"  # the C++ Function ran
    delta = torch.randn(batch, 4, dtype=dtype)
    y.backward(delta)
    expected = sum(x[:, i : i + 1] * weight[:, i] for i in range(6)).detach()
    close(y, expected + (0 if bias is None else bias.detach()))
    # ∂x_ni = Σ_o δ_no B_oi, ∂W_oi = Σ_n δ_no x_ni, ∂b_o = Σ_n δ_no, written out elementwise
    close(x.grad, (delta[:, :, None] * feedback[None]).sum(1))
    close(weight.grad, (delta[:, :, None] * x.detach()[:, None, :]).sum(0))
    if with_bias:
        close(bias.grad, delta.sum(0))


@pytest.mark.parametrize("batch", [1, 37])
def test_native_sign_ste_follows_the_formula(compiled, batch, dtype):
    from bender.functional.ste import sign_ste

    x = torch.randn(batch, 6, dtype=dtype)
    x[0, :3] = torch.tensor([0.0, -0.0, 2.0], dtype=dtype)
    x.requires_grad_()
    y = sign_ste(x)
    assert type(y.grad_fn).__name__ == "CppFunction"
    expected = torch.where(x > 0, 1.0, torch.where(x < 0, -1.0, 0.0)).to(dtype)  # sign(0) = 0
    assert torch.equal(y, expected.detach())
    g = torch.randn(batch, 6, dtype=dtype)
    y.backward(g)
    assert torch.equal(x.grad, g)  # straight through: ∂x = g, also where |x| > 1


def test_native_computes_only_the_gradients_asked_for(compiled):
    x = torch.randn(5, 6, requires_grad=True)
    weight, feedback, bias = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4)
    bent_linear(x, weight, feedback, bias).sum().backward()  # a frozen layer: ∂x only
    close(x.grad, torch.ones(5, 4) @ feedback)
    assert weight.grad is None and bias.grad is None


def test_native_steps_aside_where_the_python_function_is_needed(compiled):
    x = torch.randn(3, 5, 6, requires_grad=True)
    weight, feedback = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6)
    assert type(bent_linear(x, weight, feedback).grad_fn).__name__ != "CppFunction"  # 3-D
    with torch.autocast("cpu", torch.bfloat16):
        y = bent_linear(x[0], weight, feedback)
    assert type(y.grad_fn).__name__ != "CppFunction" and y.dtype == torch.bfloat16
    grad = torch.func.grad(lambda w: bent_linear(x[0], w, feedback).sum())(weight.detach())
    close(grad, torch.ones(5, 4).t() @ x[0].detach())


@pytest.mark.parametrize("recipe", ["fa-mlp", "usf-mlp", "binary-mlp"])
def test_training_through_native_gives_the_python_numbers(compiled, small_mnist, recipe):
    from bender import recipes
    from bender.training import train

    data = small_mnist.subset(512, 256)
    numbers = ["loss_train", "loss_test", "acc_train", "acc_test"]
    fast = train(recipes.build(recipe), data, epochs=2)
    native.disable()
    try:
        python = train(recipes.build(recipe), data, epochs=2)
    finally:
        native.enable()
    assert fast[numbers].equals(python[numbers])


def test_a_failed_build_warns_and_keeps_the_python_function(monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(torch.utils.cpp_extension, "load_inline", no_compiler)
    monkeypatch.setattr(native, "_built", None)
    monkeypatch.setattr(native, "_failed", False)
    monkeypatch.setattr(native, "_linear", None)
    monkeypatch.setattr(native, "_sign_ste", None)
    with pytest.warns(RuntimeWarning, match="could not build .*Ninja is required.*the Python"):
        assert native.enable() is False
    assert native.enable() is False and native.native_linear() is None  # not tried again
    x = torch.randn(2, 6, requires_grad=True)
    y = bent_linear(x, torch.randn(4, 6), torch.randn(4, 6))
    assert type(y.grad_fn).__name__ != "CppFunction"


def test_bender_native_in_the_environment_enables_it_at_import(compiled, tmp_path):
    code = "from bender.functional import native; print(native.native_linear() is not None)"
    env = {**__import__("os").environ, "BENDER_NATIVE": "1"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True"  # from the cache the module fixture built


def test_a_build_killed_midway_does_not_stop_the_next(compiled, tmp_path):
    """A kill during the build leaves torch's ``lock`` file (before torch 2.14, a file whose
    existence blocks every later build forever); the next process removes it and loads."""
    import os
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(native.build_folder(), cache / native.build_folder().name)
    (cache / native.build_folder().name / "lock").touch()  # what the killed build left
    code = "from bender.functional import native; print(native.native_linear() is not None)"
    env = {**os.environ, "BENDER_NATIVE": "1", "BENDER_NATIVE_CACHE": str(cache)}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True"

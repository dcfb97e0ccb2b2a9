"""Training away from the CPU: generators that stay on the CPU, reproducible conv nets on CUDA.

The CUDA tests run where torch sees a GPU (``BENDER_TEST_DEVICE=cuda`` also runs the formula tests
there); the rest check the same code paths with devices every machine has.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bender import GenDense, recipes
from bender.functional._uniform import uniform
from bender.nonlinearities import StocSignSTE
from bender.training import deterministic_cudnn, train
from tests.conftest import cpu_uniform

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_uniform_draws_on_the_generators_device_and_moves_the_numbers():
    generator = torch.Generator(device="cpu").manual_seed(3)
    on_meta = uniform((4, 5), generator, torch.float32, torch.device("meta"))
    assert on_meta.device.type == "meta" and on_meta.shape == (4, 5)
    again = torch.Generator(device="cpu").manual_seed(3)
    torch.rand(4, 5, generator=again, device="cpu")
    assert torch.equal(generator.get_state(), again.get_state())  # drawn from the CPU generator
    device = torch.get_default_device()  # the test device (conftest)
    here = uniform((4, 5), torch.Generator().manual_seed(3), torch.float64, device)
    assert here.device.type == device.type
    assert torch.equal(here, cpu_uniform((4, 5), 3, torch.float64))


def test_deterministic_cudnn_holds_and_restores_the_flags():
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    try:
        cudnn.deterministic, cudnn.benchmark = False, True
        with deterministic_cudnn(torch.device("cpu")):
            assert (cudnn.deterministic, cudnn.benchmark) == (False, True)  # CPU: untouched
        with pytest.raises(KeyError), deterministic_cudnn(torch.device("cuda")):
            assert (cudnn.deterministic, cudnn.benchmark) == (True, False)
            raise KeyError("a failing run")
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


def _stochastic_net(generator: torch.Generator) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        GenDense(784, 32, StocSignSTE(generator), forward="linear_asym_dx", feedback=True),
        GenDense(32, 10, forward="linear_stoc_binary_weights", generator=generator),
    )


@cuda
def test_a_layer_keeps_its_cpu_generator_on_the_gpu_and_draws_the_same_numbers(small_mnist):
    data = small_mnist.subset(256, 100)
    generators = {}
    for device in ("cpu", "cuda"):
        generators[device] = torch.Generator().manual_seed(7)
        model = _stochastic_net(generators[device])
        train(model, data, epochs=1, device=device)
        assert model[0].weight.is_cuda == (device == "cuda")
    assert torch.equal(generators["cpu"].get_state(), generators["cuda"].get_state())
    x = torch.randn(5, 784, device="cpu")
    gpu = _stochastic_net(torch.Generator().manual_seed(1)).cuda()
    cpu = _stochastic_net(torch.Generator().manual_seed(1)).cpu()
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-4, atol=1e-4)


@cuda
def test_a_conv_net_on_cuda_gives_the_same_table_from_the_same_seed(small_mnist):
    data = small_mnist.subset(1024, 200)
    tables = []
    for _ in range(2):
        torch.manual_seed(0)
        tables.append(train(recipes.build("fa-cnn"), data, epochs=2, device="cuda"))
    columns = ["loss_train", "loss_test", "acc_train", "acc_test"]
    assert tables[0][columns].equals(tables[1][columns])

"""DistributedDataParallel: two CPU processes (gloo) give the gradient of the whole batch.

Each process builds its recipe with its own seed, so its weights and fixed feedback matrices
differ at first; DDP must copy rank 0's parameters and buffers (the feedback matrices) to every
process, then average the bent gradients of the two half batches. A weight mirror run in each
process draws its own noise; DDP's broadcast of the buffers before every forward pass then
gives every process rank 0's mirrored feedback.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from bender import recipes
from tests.conftest import close

RECIPES = ["fa-mlp", "dfa-mlp", "binary-mlp"]
WORLD = 2

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed/gloo"
)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(8, 784, generator=generator), torch.randint(0, 10, (8,), generator=generator)


def _worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    store = f"file://{Path(folder) / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=WORLD)
    try:
        x, y = _batch()
        for name in RECIPES:
            model = recipes.build(name, seed=rank)  # differs between the processes
            ddp = DistributedDataParallel(model)
            F.cross_entropy(ddp(x.chunk(WORLD)[rank]), y.chunk(WORLD)[rank]).backward()
            state = {k: v.clone() for k, v in model.state_dict().items()}
            grads = [p.grad.clone() for p in model.parameters()]
            torch.save((state, grads), Path(folder) / f"{name}-rank{rank}.pt")
        model = recipes.build("wm-mlp", seed=rank)
        ddp = DistributedDataParallel(model)
        for mirror in recipes.get("wm-mlp").after_step:  # each process draws its own noise
            mirror(model)
        ddp(x.chunk(WORLD)[rank])  # DDP sends rank 0's buffers before every forward pass
        torch.save(model.state_dict(), Path(folder) / f"mirrored-rank{rank}.pt")
        dist.barrier()  # neither process tears gloo down while the other still talks
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's teardown: now and then (a few runs in a hundred, under pytest) a
    # thread that torch leaves behind aborts the exiting process with SIGABRT ("terminate called
    # without an active exception"), after all the work above is done and saved.
    os._exit(0)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """The folder where the two processes saved what they hold."""
    folder = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(str(folder),), nprocs=WORLD, start_method="spawn")
    return folder


def test_ddp_syncs_feedback_and_averages_bent_gradients(results):
    x, y = _batch()
    for name in RECIPES:
        (state0, grads0), (state1, grads1) = (
            torch.load(results / f"{name}-rank{rank}.pt", weights_only=True)
            for rank in range(WORLD)
        )
        for key, value in state0.items():  # rank 1 now holds rank 0's weights and feedback
            assert torch.equal(state1[key], value), (name, key)
        seed1 = recipes.build(name, seed=1).state_dict()  # what rank 1 built
        drawn = [k for k in state0 if not k.endswith("bias")]  # biases start at zero
        assert all(not torch.equal(seed1[k], state0[k]) for k in drawn)
        reference = recipes.build(name, seed=0)
        reference.load_state_dict(state0)
        F.cross_entropy(reference(x), y).backward()  # the whole batch in one process
        for g0, g1, p in zip(grads0, grads1, reference.parameters(), strict=True):
            close(g0, p.grad)
            close(g1, p.grad)


def test_under_ddp_every_process_trains_with_rank_0s_mirrored_feedback(results):
    state0, state1 = (
        torch.load(results / f"mirrored-rank{rank}.pt", weights_only=True) for rank in range(WORLD)
    )
    built = recipes.build("wm-mlp", seed=0).state_dict()
    for key in ("0.feedback", "1.feedback", "2.feedback"):
        assert not torch.equal(state0[key], built[key])  # the mirror moved rank 0's B
        assert torch.equal(state1[key], state0[key])  # and rank 1 holds it

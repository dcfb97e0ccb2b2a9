"""DistributedDataParallel: two CPU processes (gloo) give the gradient of the whole batch.

Each process builds its recipe with its own seed, so its weights and fixed feedback matrices
differ at first; DDP must copy rank 0's parameters and buffers (the feedback matrices) to every
process, then average the bent gradients of the two half batches. A weight mirror run in each
process draws its own noise; DDP's broadcast of the buffers before every forward pass then
gives every process rank 0's mirrored feedback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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


def _torchrun(tmp_path, data_root, *args, procs=WORLD):
    """``torchrun --nproc_per_node procs -m bender ARGS`` on the CPU (gloo); its output."""
    env = {**os.environ, "BENDER_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}"]
    command += ["--master_port", str(_free_port()), "-m", "bender", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", weights_only=True)


def test_bender_train_on_torchrun_equals_one_process_and_rank_0_alone_writes(tmp_path, data_root):
    from bender import cli

    flags = ["fa-mlp", "--epochs", "1", "--limit", "2000", "--device", "cpu", "--no-progress"]
    printed = _torchrun(tmp_path, data_root, "train", *flags, "--out", str(tmp_path / "two"))
    assert printed.count("epoch  loss_train") == 1  # rank 1 prints nothing
    assert cli.main(["train", *flags, "--out", str(tmp_path / "one"), "--threads", "1"]) == 0
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in one:  # the same steps: the whole batch's gradient, in two halves
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)
    record = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert record["processes"] == 2
    files = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert files == ["checkpoint.pt", "curves.png", "metrics.csv", "metrics.json", "model.pt"]


def test_a_two_process_run_resumes_on_two_processes(tmp_path, data_root):
    flags = ["fa-mlp", "--limit", "1000", "--device", "cpu", "--no-progress"]
    _torchrun(
        tmp_path, data_root, "train", *flags, "--epochs", "2", "--out", str(tmp_path / "whole")
    )
    _torchrun(
        tmp_path, data_root, "train", *flags, "--epochs", "1", "--out", str(tmp_path / "half")
    )
    _torchrun(
        tmp_path, data_root, "resume", str(tmp_path / "half"), "--epochs", "2", "--no-progress"
    )
    whole, half = _weights(tmp_path / "whole"), _weights(tmp_path / "half")
    for key in whole:
        torch.testing.assert_close(half[key], whole[key], rtol=1e-5, atol=1e-6)
    assert len(json.loads((tmp_path / "half" / "metrics.json").read_text())["epochs"]) == 2


def test_a_batch_that_does_not_split_among_the_processes_is_refused(tmp_path, data_root):
    env = {**os.environ, "BENDER_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += ["--master_port", str(_free_port()), "-m", "bender", "train", "fa-mlp"]
    command += ["--batch-size", "63", "--device", "cpu", "--out", str(tmp_path / "odd")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode != 0
    assert "--batch-size 63 must split evenly among the 2 processes" in done.stderr


def test_a_world_size_without_torchrun_is_an_error_not_a_hang(tmp_path, monkeypatch, capsys):
    from bender import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["train", "fa-mlp", "--device", "cpu", "--out", str(tmp_path / "r")]) == 1
    assert "WORLD_SIZE=2 asks for a process group" in capsys.readouterr().err

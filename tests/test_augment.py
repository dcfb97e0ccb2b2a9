import math

import pytest
import torch

from bender.data.augment import CropFlip, channel_stats, normalized
from bender.schedules import EpochFactor, parse_schedule, scheduler_factory


def test_crop_flip_takes_a_window_of_the_padded_image_and_flips_it_by_a_coin():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    torch.manual_seed(3)
    out = CropFlip(padding=2)(x)
    torch.manual_seed(3)
    offsets = torch.randint(0, 5, (2, 2, 1))  # what CropFlip draws, in its order
    flips = torch.rand(2) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(2):
        r, c = int(offsets[0, n]), int(offsets[1, n])
        expected = padded[n, :, r : r + 5, c : c + 5]
        torch.testing.assert_close(out[n], expected.flip(-1) if flips[n] else expected)


def test_the_same_seed_gives_the_same_batches_and_another_seed_others():
    x = torch.rand(64, 3, 32, 32)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(CropFlip()(x))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert runs[0].shape == x.shape
    with pytest.raises(ValueError, match=r"takes images N × C × H × W, got \(3, 32, 32\)"):
        CropFlip()(x[0])


def test_normalization_by_channel_statistics():
    x = torch.rand(10, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    mean, std = channel_stats(x)
    z = normalized(x, mean, std)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3)), torch.ones(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("text", "factors"),
    [
        ("step:2,4", [1, 1, 0.1, 0.1, 0.01, 0.01]),
        ("step:2,4:0.5", [1, 1, 0.5, 0.5, 0.25, 0.25]),
        ("cosine", [1.0, 0.5 * (1 + math.cos(math.pi / 6)), 0.75, 0.5, 0.25]),
        ("warmup:3", [1 / 3, 2 / 3, 1, 1, 1, 1]),
        ("step:4+warmup:2", [0.5, 1, 1, 1, 0.1, 0.1]),
    ],
)
def test_schedules_give_the_stated_factor_per_epoch(text, factors):
    factor = parse_schedule(text, 6)
    assert [factor(e) for e in range(len(factors))] == pytest.approx(factors)


def test_cosine_with_warm_up_follows_the_formula():
    factor = parse_schedule("cosine+warmup:2", 6)
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert [factor(e) for e in range(6)] == pytest.approx(expected)


def test_a_scheduler_steps_the_learning_rate_and_keeps_its_state():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = scheduler_factory("step:1", 3)(opt)
    opt.step()  # an epoch's steps, then the schedule's
    schedule.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    state = schedule.state_dict()
    assert state["lr_lambdas"][0]["milestones"] == [1]  # plain numbers: a safe checkpoint


@pytest.mark.parametrize(
    "text",
    [
        "step",
        "step:",
        "step:5,3",
        "step:0",
        "step:2:1.5",
        "cos",
        "warmup:0",
        "cosine+warmup:6",
        "warmup:2+step:3",
    ],
)
def test_schedules_that_do_not_parse_are_refused(text):
    with pytest.raises(ValueError, match="--schedule: "):
        parse_schedule(text, 6)
    assert isinstance(parse_schedule("cosine", 6), EpochFactor)

import pytest
import torch
from torch import nn

from bender.models import MODELS, build_model, cifar_resnet, model_image_size


def tiny(in_channels, image_size, num_classes):
    """A user's builder, reached as tests.test_models:tiny."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * image_size[0] * image_size[1], num_classes)
    )


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(("channels", "classes"), [(1, 10), (3, 7)])
def test_every_zoo_model_takes_the_datasets_shape(name, channels, classes):
    size = model_image_size(name) or (28, 28)
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, image_size=size, num_classes=classes)
    assert model(torch.rand(2, channels, *size)).shape == (2, classes)


@pytest.mark.parametrize(
    ("depth", "params"), [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6)]
)
def test_cifar_resnets_have_the_papers_sizes(depth, params):
    # He et al. 2016, Table 6: 0.27M, 0.46M, 0.66M, 0.85M parameters
    model = cifar_resnet(depth, 3, 10)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(params, rel=0.01)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == depth  # 6n + 1 convolutions and the dense layer
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_lenet5_is_biotorchs_on_32_by_32_images():
    model = build_model("lenet5", image_size=(32, 32))
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [
        (6, 1, 5, 5),
        (6,),
        (16, 6, 5, 5),
        (16,),
        (120, 400),
        (120,),
        (84, 120),
        (84,),
        (10, 84),
        (10,),
    ]
    with pytest.raises(ValueError, match="lenet5 takes 32×32 images, got 28×28"):
        build_model("lenet5", image_size=(28, 28))


def test_the_row_transformer_has_one_token_per_row():
    model = build_model("transformer")
    assert model.patch_size == (1, 28) and model.position.shape == (1, 28, 64)
    assert isinstance(model.encoder.layers[0].self_attn, nn.MultiheadAttention)


def test_a_builder_by_import_path_and_its_errors():
    model = build_model("tests.test_models:tiny", in_channels=2, image_size=(3, 3), num_classes=4)
    assert model(torch.rand(5, 2, 3, 3)).shape == (5, 4)
    with pytest.raises(ValueError, match="cannot import no_such_package"):
        build_model("no_such_package.nets:build")
    with pytest.raises(ValueError, match=r"tests\.test_models has no function 'nothing'"):
        build_model("tests.test_models:nothing")
    with pytest.raises(ValueError, match=r"returned int, not an nn\.Module"):
        build_model("tests.test_models:_number")


def _number(in_channels, image_size, num_classes):
    return 3


def test_unknown_names_list_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown model 'resnet18'; choose one of mlp, .*resnet20"
    ):
        build_model("resnet18")
    with pytest.raises(TypeError, match="a model name must be a string, got int"):
        build_model(3)


def test_torchvision_models_by_name_take_grey_images():
    pytest.importorskip("torchvision")
    model = build_model("torchvision:resnet18", in_channels=1, image_size=(32, 32), num_classes=10)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="torchvision has no classification model 'resnet7'"):
        build_model("torchvision:resnet7")

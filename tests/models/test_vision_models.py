"""Shape, gradient and argument tests for the vision models."""

import pytest
import torch
from torch import nn

from attnlab.models.autoencoder import ConvAutoencoder
from attnlab.models.cnn import CNN
from attnlab.models.mlp import MLPClassifier
from attnlab.models.vit import ViT, vit_small, vit_tiny

MNIST = {"in_channels": 1, "image_size": 28}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _check_gradients(model: nn.Module, out: torch.Tensor) -> None:
    out.float().pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


@pytest.mark.parametrize(
    ("build", "image", "num_classes"),
    [
        (lambda: CNN(num_classes=10, **MNIST), (1, 28), 10),
        (
            lambda: CNN(in_channels=3, num_classes=5, image_size=32, channels=(8, 16, 32), convs_per_stage=1),
            (3, 32),
            5,
        ),
        (lambda: MLPClassifier(num_classes=10, **MNIST), (1, 28), 10),
        (lambda: MLPClassifier(in_channels=3, image_size=8, num_classes=4, hidden=()), (3, 8), 4),
        (lambda: vit_tiny(num_classes=10, patch_size=7, **MNIST), (1, 28), 10),
        (
            lambda: ViT(num_classes=7, patch_size=4, d_model=32, n_layers=2, pool="mean", dropout=0.1, **MNIST),
            (1, 28),
            7,
        ),
    ],
    ids=["cnn", "cnn-rgb", "mlp", "mlp-linear", "vit-cls", "vit-mean"],
)
def test_classifier_shape_and_gradients(build, image: tuple[int, int], num_classes: int) -> None:
    model = build()
    c, side = image
    out = model(torch.rand(3, c, side, side))
    assert out.shape == (3, num_classes)
    _check_gradients(model, out)


def test_cnn_rejects_indivisible_image_size() -> None:
    with pytest.raises(ValueError, match="image_size 28 is not divisible by 8.*use at most 2 stages"):
        CNN(num_classes=10, channels=(8, 16, 32), **MNIST)
    with pytest.raises(ValueError, match="channels is empty"):
        CNN(num_classes=10, channels=(), **MNIST)
    with pytest.raises(ValueError, match="convs_per_stage"):
        CNN(num_classes=10, convs_per_stage=0, **MNIST)


def test_autoencoder_shapes_range_and_gradients() -> None:
    model = ConvAutoencoder(latent_dim=16, **MNIST)
    x = torch.rand(4, 1, 28, 28)
    z = model.encode(x)
    assert z.shape == (4, 16)
    assert model.decode(z).shape == x.shape
    out = model(x)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    _check_gradients(model, out - x)


def test_autoencoder_other_sizes() -> None:
    model = ConvAutoencoder(in_channels=3, image_size=32, channels=(8, 16, 32), latent_dim=8).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="image_size 28 is not divisible by 8"):
        ConvAutoencoder(channels=(8, 16, 32), **MNIST)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_pooling(pool: str) -> None:
    model = ViT(num_classes=10, patch_size=14, d_model=16, n_layers=1, n_heads=2, pool=pool, **MNIST)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_vit_pools_differ() -> None:
    kw = dict(num_classes=10, patch_size=14, d_model=16, n_layers=1, n_heads=2, **MNIST)
    torch.manual_seed(0)
    cls = ViT(pool="cls", **kw).eval()
    torch.manual_seed(0)
    mean = ViT(pool="mean", **kw).eval()
    x = torch.rand(2, 1, 28, 28)
    assert not torch.allclose(cls(x), mean(x))


def test_vit_bad_arguments_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"patch_size 5; choose a patch_size that divides it \(e.g. .*4, 7, 14"):
        ViT(num_classes=10, patch_size=5, **MNIST)
    with pytest.raises(ValueError, match="unknown pool 'max'; choose one of: cls, mean"):
        ViT(num_classes=10, patch_size=7, pool="max", **MNIST)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not divisible by n_heads 3"):
        ViT(num_classes=10, patch_size=7, d_model=64, n_heads=3, **MNIST)


def test_vit_builders_sizes_and_overrides() -> None:
    tiny = vit_tiny(num_classes=10, patch_size=7, **MNIST)
    assert (tiny.head.in_features, len(tiny.blocks), tiny.blocks[0].attn.n_heads) == (64, 4, 4)
    assert tiny.pos.max_len == 4 * 4 + 1
    small = vit_small(num_classes=10, patch_size=4, **MNIST)
    assert (small.head.in_features, len(small.blocks)) == (128, 6)
    assert small.blocks[0].mlp.fc1.out_features == 4 * 128  # d_ff defaults to 4 * d_model
    custom = vit_tiny(num_classes=3, patch_size=7, n_layers=2, d_model=32, d_ff=48, **MNIST)
    assert (custom.head.in_features, custom.head.out_features, len(custom.blocks)) == (32, 3, 2)
    assert custom.blocks[0].mlp.fc1.out_features == 48
    assert vit_tiny.__annotations__["return"] is ViT and vit_small.__annotations__["return"] is ViT

"""ImageNormalization: the one definition of how raw 8-bit images become a model's input."""

import pytest
import torch

from attnlab.data.images import ImageNormalization
from attnlab.data.mnist import PIXELS, MNISTBatch


def test_pixels_become_unit_floats_with_a_channel_dim():
    raw = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)  # (1, 2, 2)
    x = ImageNormalization(channels=1, image_size=2)(raw)
    assert x.dtype == torch.float32 and x.shape == (1, 1, 2, 2)
    assert torch.allclose(x.flatten(), torch.tensor([0.0, 1.0, 0.2, 0.4]))
    assert raw.dtype == torch.uint8  # the input is left as it was


def test_the_training_batches_use_the_same_normalisation():
    raw = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    x, _ = MNISTBatch()((raw, torch.zeros(4, dtype=torch.long)))
    assert torch.equal(x, PIXELS(raw))


@pytest.mark.parametrize("images, message", [
    (torch.zeros(2, 28, 28), "expected uint8 pixels"),
    (torch.zeros(2, 27, 28, dtype=torch.uint8), r"expected images of shape \(B, 28, 28\) or \(B, 1, 28, 28\), got \(2, 27, 28\)"),
    (torch.zeros(2, 3, 28, 28, dtype=torch.uint8), "got \\(2, 3, 28, 28\\)"),
])
def test_wrong_images_are_refused_with_the_expected_shape(images, message):
    with pytest.raises(ValueError, match=message):
        PIXELS(images)

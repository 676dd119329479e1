"""The box and label conventions."""

from __future__ import annotations

import torch

from tinyssd.boxes import PAD_CLASS, pad_labels, pad_rows, pixel_scale, to_normalised, to_pixels, valid_rows


def test_padding_round_trip():
    a = torch.tensor([[0.0, 0.1, 0.1, 0.5, 0.5]])
    b = torch.tensor([[1.0, 0.2, 0.2, 0.4, 0.6], [0.0, 0.0, 0.0, 1.0, 1.0]])
    batch = pad_labels([a, b])
    assert batch.shape == (2, 2, 5) and batch[0, 1, 0] == PAD_CLASS
    assert valid_rows(batch).tolist() == [[True, False], [True, True]]
    assert torch.equal(batch[0][valid_rows(batch[0])], a)
    assert pad_rows(a, 4).shape == (4, 5) and valid_rows(pad_rows(a, 4)).sum() == 1
    assert pad_labels([torch.zeros(0, 5)]).shape == (1, 1, 5)  # a picture with no object: one padding row


def test_pixels_and_back():
    boxes = torch.tensor([[0.25, 0.5, 0.75, 1.0]])
    pixels = to_pixels(boxes, 200, 100)
    assert pixels.tolist() == [[50.0, 50.0, 150.0, 100.0]]
    assert torch.allclose(to_normalised(pixels, 200, 100), boxes)
    assert pixel_scale(3, 4).tolist() == [3.0, 4.0, 3.0, 4.0]

"""01_convolution.py and 02_padding_pooling.py: the hand-written operations against torch,
the formulas against real layers, and both scripts as a student runs them."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from conftest import load_script, run_main

conv = load_script("01_convolution.py")
pad = load_script("02_padding_pooling.py")


# ----------------------------------------------------------------------------- 01

@pytest.mark.parametrize("h,w,kh,kw", [(3, 3, 2, 2), (8, 9, 3, 2), (16, 16, 5, 5), (5, 7, 1, 3)])
def test_corr2d_equals_conv2d(h, w, kh, kw):
    g = torch.Generator().manual_seed(h * 100 + w)
    X, K = torch.randn(h, w, generator=g), torch.randn(kh, kw, generator=g)
    expected = F.conv2d(X.view(1, 1, h, w), K.view(1, 1, kh, kw))[0, 0]
    assert torch.allclose(conv.corr2d(X, K), expected, atol=1e-5)


def test_corr2d_hand_checked_example():
    X = torch.arange(9.0).view(3, 3)
    K = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert conv.corr2d(X, K).tolist() == [[19.0, 25.0], [37.0, 43.0]]


def test_convolution_is_correlation_with_flipped_kernel():
    g = torch.Generator().manual_seed(0)
    X, K = torch.randn(6, 6, generator=g), torch.randn(3, 3, generator=g)
    assert torch.allclose(conv.conv2d_true(X, K), conv.corr2d(X, torch.flip(K, (0, 1))))
    assert not torch.allclose(conv.conv2d_true(X, K), conv.corr2d(X, K))
    x, k = np.array([0.0, 1, 2, 3, 0, 0]), np.array([1.0, 2, -1])
    assert np.allclose(conv.conv1d(x, k), np.convolve(x, k, mode="valid"))
    assert np.allclose(conv.corr1d(x, k), np.correlate(x, k, mode="valid"))


def test_sobel_x_responds_only_along_a_vertical_edge():
    img = torch.zeros(1, 1, 12, 12)
    img[..., 6:] = 1.0                                   # dark left half, bright right half
    with torch.no_grad():
        gx, gy = conv.sobel_layer()(img)[0]
    inner = gx[1:-1, 1:-1]                               # away from the zero padding
    assert inner[:, 4:6].min() > 0                       # columns 5 and 6 straddle the edge
    assert inner[:, :4].abs().max() == 0 and inner[:, 6:].abs().max() == 0
    assert gy[1:-1, 1:-1].abs().max() == 0               # no horizontal edge anywhere


def test_conv_param_formula():
    for c_in, c_out, k in [(3, 3, 3), (3, 16, 3), (64, 128, 5)]:
        layer = nn.Conv2d(c_in, c_out, k)
        assert conv.conv_params(c_in, c_out, k) == sum(p.numel() for p in layer.parameters())


# ----------------------------------------------------------------------------- 02

def test_conv_output_size_matches_real_layers():
    for w, k, p, s in itertools.product((5, 8, 31, 32), (1, 2, 3, 5, 7), (0, 1, 2, 3), (1, 2, 3)):
        if w + 2 * p < k or p > k // 2:
            continue
        out = nn.Conv2d(1, 1, k, stride=s, padding=p)(torch.zeros(1, 1, w, w)).shape[-1]
        assert pad.conv_output_size(w, k, p, s) == out, (w, k, p, s)
        pooled = nn.MaxPool2d(k, stride=s, padding=p)(torch.zeros(1, 1, w, w)).shape[-1]
        assert pad.conv_output_size(w, k, p, s) == pooled, (w, k, p, s)


@pytest.mark.parametrize("layers,expected", [
    ([(3, 1)], 3), ([(3, 1)] * 2, 5), ([(3, 1)] * 3, 7), ([(5, 1)], 5),
    ([(3, 1), (2, 2), (3, 1)], 8), ([(3, 2), (3, 2)], 7), ([(3, 1), (3, 1), (2, 2)] * 3, 36),
])
def test_receptive_field_formula_equals_gradient(layers, expected):
    assert common.receptive_field(layers) == expected
    assert pad.receptive_field_by_gradient(layers) == expected


@pytest.mark.parametrize("c", [8, 64])
def test_vgg_rule_counts_exactly(c):
    five, two = pad.vgg_rule(c, size=16)
    assert five["weights"] == 25 * c * c and two["weights"] == 18 * c * c
    assert five["macs"] == 25 * c * c * 16 * 16 and two["macs"] == 18 * c * c * 16 * 16
    assert five["receptive_field"] == two["receptive_field"] == 5


def test_halving_map_and_doubling_channels_keeps_macs():
    rows = pad.halve_and_double(16, 32)
    assert len({r["macs"] for r in rows}) == 1
    assert [r["memory"] for r in rows] == [16384, 8192, 4096]


def test_conv_relu_pool_shapes():
    img = torch.randn(3, 32, 32)
    shapes = [tuple(t.shape) for _, t in pad.conv_relu_pool_stages(img)]
    assert shapes == [(8, 32, 32), (8, 32, 32), (8, 16, 16),
                      (16, 16, 16), (16, 16, 16), (16, 8, 8)]


# ----------------------------------------------------------------------------- images, runs

def test_image_falls_back_to_sample_photo_offline(tmp_path):
    array, source = common.load_image(None, "auto", str(tmp_path), download=False)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8
    assert "grace_hopper" in source


def test_image_is_cifar_train_4_when_present(tiny_cifar):
    root, train, _ = tiny_cifar
    array, source = common.load_image(None, "auto", root, download=False)
    expected = train[0][0][4].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(array, expected) and "train image 4" in source


def test_transform_matches_torchvision(tmp_path):
    import torchvision.transforms as T
    from PIL import Image

    array, _ = common.load_image(None, "synthetic", str(tmp_path))
    ref = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])(Image.fromarray(array))
    assert torch.allclose(common.to_tensor(array), ref, atol=1e-6)


@pytest.mark.parametrize("script,figures", [
    ("01_convolution.py", ["image.png", "equivariance_1d.png", "sobel.png", "feature_maps.png"]),
    ("02_padding_pooling.py", ["pooling.png", "conv_relu_pool.png"]),
])
@pytest.mark.usefixtures("figures_fit_their_canvas")
def test_script_runs_offline_and_saves_figures(script, figures, tmp_path, capsys):
    proc = run_main(load_script(script), ["--no-download", "--data-dir", str(tmp_path / "none"),
                                          "--out-dir", str(tmp_path)], capsys)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout and "0 check(s) failed" in proc.stdout
    folder = tmp_path / script[:-3]
    for name in figures:
        assert (folder / name).stat().st_size > 0, name


def test_pooling_figure_says_what_its_row_of_lines_shows(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(common, "save_figure", lambda fig, *a: figures.append(fig))
    pad.plot_pooling(torch.zeros(3, 32, 32), str(tmp_path / "pooling.png"), False)
    fig = figures[0]
    values = [set(np.unique(ax.get_images()[0].get_array())) for ax in fig.axes[4:7]]
    assert values == [{0, 1}, {0, 1}, {0, 0.5, 0.75}]  # lines; max: white; avg: greys
    assert "white lines 1 pixel wide on black" in fig._supxlabel.get_text()
    assert "grey, light grey where lines cross" in fig._supxlabel.get_text()


def test_own_image_is_used(tmp_path, capsys):
    from PIL import Image

    path = tmp_path / "mine.png"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(path)
    proc = run_main(conv, ["--image", str(path), "--out-dir", str(tmp_path)], capsys)
    assert proc.returncode == 0, proc.stderr
    assert f"your image {path}" in proc.stdout
    assert "(32, 32, 3)" in proc.stdout


@pytest.mark.parametrize("script", ["01_convolution.py", "02_padding_pooling.py"])
def test_missing_image_exits_2(script, tmp_path, capsys):
    proc = run_main(load_script(script), ["--image", str(tmp_path / "nope.jpg"), "--out-dir",
                                          str(tmp_path)], capsys)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: cannot read the picture")


def test_show_without_display_says_so_and_still_saves(tmp_path, capsys):
    proc = run_main(load_script("02_padding_pooling.py"), ["--show", "--no-download", "--data",
                    "synthetic", "--out-dir", str(tmp_path)], capsys)  # headless: Agg
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == \
        "--show: no display here, so figures are only saved as PNG"
    assert (tmp_path / "02_padding_pooling" / "pooling.png").stat().st_size > 0

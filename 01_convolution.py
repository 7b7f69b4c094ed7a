"""3.3.1-3.3.2 Convolution: from an image tensor to feature maps.

    python 01_convolution.py [--image me.jpg]   # the lecture's car, or a picture of yours

Prints each slide's statement, checked against numpy or torch; figures: runs/01_convolution/."""
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common


# ----------------------------------------------------------------------------- 1-D

def corr1d(x, k):
    """Cross-correlation, 'valid': y[i] = sum_j x[i + j] * k[j] (what deep learning calls
    convolution: slide the kernel, multiply, sum; no flip). x and k may be lists, numpy
    arrays or tensors, as for corr2d."""
    x, k = torch.as_tensor(x), torch.as_tensor(k)
    return torch.stack([(x[i:i + len(k)] * k).sum() for i in range(len(x) - len(k) + 1)])


def conv1d(x, k):
    """True convolution, 'valid': flip the kernel, then slide, multiply, sum."""
    return corr1d(x, torch.flip(torch.as_tensor(k), dims=(0,)))


# ----------------------------------------------------------------------------- 2-D

def corr2d(X, K):
    """2-D cross-correlation of a (H, W) input with a (kh, kw) kernel, 'valid' padding:
    Y[i, j] = sum of X[i:i+kh, j:j+kw] * K. Output (H - kh + 1, W - kw + 1).
    X and K may be tensors or numpy arrays."""
    X, K = torch.as_tensor(X), torch.as_tensor(K)
    kh, kw = K.shape
    Y = torch.zeros(X.shape[0] - kh + 1, X.shape[1] - kw + 1,
                    dtype=torch.result_type(X, K))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + kh, j:j + kw] * K).sum()
    return Y


def conv2d_true(X, K):
    """True 2-D convolution: cross-correlation with the kernel flipped in both axes."""
    return corr2d(X, torch.flip(K, dims=(0, 1)))


# Sobel kernels: a smoothed derivative across x (responds to vertical edges) and across y
SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0],
                        [-2.0, 0.0, 2.0],
                        [-1.0, 0.0, 1.0]])
SOBEL_Y = SOBEL_X.t().contiguous()


def sobel_layer():
    """A Conv2d(1, 2, 3) whose two filters are set by hand to Sobel x and Sobel y."""
    conv = nn.Conv2d(1, 2, kernel_size=3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.stack([SOBEL_X, SOBEL_Y]).unsqueeze(1))  # (2, 1, 3, 3)
    return conv


def grayscale(img):
    """(3, H, W) -> (1, H, W) with the ITU-R 601 luma weights."""
    w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    return (img * w).sum(0, keepdim=True)


def conv_params(c_in, c_out, k):
    """Weights plus one bias per output channel: out * (in * k * k + 1)."""
    return c_out * (c_in * k * k + 1)


def plot_equivariance(x, k, shift, path, show):
    y = corr1d(x, k)
    xs = np.roll(x, shift)
    ys = corr1d(xs, k)
    fig, axes = common.subplots(2, 1, figsize=(7, 4.8), sharex=True)
    axes[0].plot(x, "o-", label="input x")
    axes[0].plot(xs, "s--", label=f"x shifted by {shift}")
    axes[0].set(title="input", ylabel="x[i]")
    axes[1].plot(y, "o-", label="corr(x, k)")
    axes[1].plot(ys, "s--", label="corr(shifted x, k)")
    axes[1].set(title=f"output with kernel k = {k.astype(int).tolist()}:\nshifted by the same "
                      f"{shift} (translation equivariance)", ylabel="y[i]", xlabel="position i")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return common.save_figure(fig, path, show)


def plot_shift(img, moved, path, show):
    """The picture, the same picture 1 pixel to the right, and how much each input changed."""
    fig, axes = common.subplots(1, 3, figsize=(9.5, 3.6))
    for ax, t, title in ((axes[0], img, "the picture"), (axes[1], moved, "moved 1 pixel right")):
        ax.imshow(common.unnormalize(t).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    im = axes[2].imshow((moved - img).abs().amax(0).numpy(), cmap="magma",
                        interpolation="nearest")
    axes[2].set_title("|change| of each input value:\nto an MLP, a new picture", fontsize=9)
    axes[2].axis("off")
    fig.colorbar(im, ax=axes[2], shrink=0.8, label="change (-1..1 scale)")
    return common.save_figure(fig, path, show)


def plot_maps(maps, titles, path, suptitle, show, cmap="gray"):
    """A row of 2-D maps, each with its own colour scale and a colour bar for it; the axes
    show pixel positions, so a map's size can be read off."""
    fig, axes = common.subplots(1, len(maps), figsize=(3.4 * len(maps), 3.3))
    for ax, m, t in zip(np.atleast_1d(axes), maps, titles):
        im = ax.imshow(m.detach().cpu().numpy(), cmap=cmap)
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(t, fontsize=9)
        ax.set(xticks=[0, m.shape[-1] - 1], yticks=[0, m.shape[-2] - 1])
        ax.tick_params(labelsize=7)
    fig.suptitle(suptitle, fontsize=10)
    return common.save_figure(fig, path, show)


def build_parser():
    p = common.Parser(description=__doc__.split("\n\n")[0])
    common.add_data_args(p, picture=True)
    return p


def main(argv=None):
    args, out, check, array, source = common.start_picture_script(build_parser(), argv,
                                                                  "01_convolution")

    # 3.3.1 An image is an array of numbers --------------------------------------------
    common.section("3.3.1 The image as numbers")
    print(f"image: {source}")
    print(f"as an array (H, W, C): {array.shape}, dtype {array.dtype}, "
          f"values {array.min()}..{array.max()}")
    img = common.to_tensor(array)
    print(f"after transform (ToTensor + Normalize 0.5/0.5) (C, H, W): {tuple(img.shape)}, "
          f"values {img.min():.2f}..{img.max():.2f}")
    print(f"an MLP on the flattened image sees {img.numel()} separate inputs, one weight "
          f"each:")
    moved = torch.roll(img, 1, dims=2)                        # the picture 1 pixel right
    change = (moved - img).abs()
    big = (change > 0.1).float().mean().item()                # 0.1 = 5% of the value range
    print(f"  shift the picture 1 pixel right: {100 * big:.0f}% of the {img.numel()} input "
          f"values change by more than 0.1 (mean change {change.mean():.2f} on a -1..1 "
          f"scale), so an MLP's weights meet different numbers: to it this is a different "
          f"picture")
    probe = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        same = torch.allclose(probe(moved.unsqueeze(0))[..., 1:-1, 2:-1],
                              torch.roll(probe(img.unsqueeze(0)), 1, dims=3)[..., 1:-1, 2:-1],
                              atol=1e-5)
    check("a convolution's output just moves along (conv(shift(x)) == shift(conv(x)) "
          "away from the border): it finds the same features wherever they are", same)
    path = plot_shift(img, moved, os.path.join(out, "image.png"), args.show)
    print(f"saved {path}")

    # 3.3.2 Convolution in 1-D -------------------------------------------------------
    common.section("3.3.2 Convolution vs cross-correlation in 1-D")
    x = np.array([0, 0, 1, 2, 3, 2, 1, 0, 0, 0, 0, 0], dtype=float)
    k = np.array([1.0, 0.0, -1.0])
    print(f"signal x = {x.astype(int).tolist()}, kernel k = {k.astype(int).tolist()}")
    conv, corr = conv1d(x, k), corr1d(x, k)
    print(f"convolution (flip k, multiply, sum): {conv.int().tolist()}")
    print(f"cross-correlation (no flip):         {corr.int().tolist()}")
    print("  with this antisymmetric kernel the two differ only in sign; deep learning "
          "uses cross-correlation, and learns the kernel, so the flip does not matter")
    check("conv1d == numpy.convolve(mode='valid')",
          np.allclose(conv, np.convolve(x, k, mode="valid")))
    check("corr1d == numpy.correlate(mode='valid')",
          np.allclose(corr, np.correlate(x, k, mode="valid")))
    torch_corr = F.conv1d(torch.tensor(x).view(1, 1, -1), torch.tensor(k).view(1, 1, -1))
    check("corr1d == torch.nn.functional.conv1d", np.allclose(corr, torch_corr.flatten()))
    shift = 3
    shifted = corr1d(np.roll(x, shift), k)
    check(f"shift the input by {shift} -> the output shifts by {shift}",
          np.allclose(shifted[shift:], corr[:-shift]))
    path = plot_equivariance(x, k, shift, os.path.join(out, "equivariance_1d.png"), args.show)
    print(f"saved {path}")

    # 3.3.2 Convolution in 2-D: sliding window ----------------------------------------
    common.section("3.3.2 2-D: slide, multiply, sum")
    X = torch.arange(9.0).view(3, 3)
    K = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    print(f"X =\n{X}\nK =\n{K}\ncorr2d(X, K) =\n{corr2d(X, K)}")
    print("  top-left: 0*0 + 1*1 + 3*2 + 4*3 = 19")
    gen = torch.Generator().manual_seed(args.seed)
    Xr, Kr = torch.randn(8, 9, generator=gen), torch.randn(3, 2, generator=gen)
    lib = F.conv2d(Xr.view(1, 1, 8, 9), Kr.view(1, 1, 3, 2)).view(6, 8)
    check("corr2d == F.conv2d on a random 8x9 input, 3x2 kernel",
          torch.allclose(corr2d(Xr, Kr), lib, atol=1e-5),
          f"max |diff| {(corr2d(Xr, Kr) - lib).abs().max():.1e}")
    check("true convolution == cross-correlation with the kernel flipped",
          torch.allclose(conv2d_true(Xr, Kr), corr2d(Xr, Kr.flip(0).flip(1))))

    kernels_and_layers(img, array, source.split(",")[0], out, check, args.show)
    print(f"\nfigures in {out}/; {check.failed} check(s) failed")
    return 1 if check.failed else 0


def kernels_and_layers(img, array, label, out, check, show):
    """3.3.2 Hand-set kernels (Sobel), nn.Conv2d's weight, bias and feature maps, and how
    each valid convolution shrinks the map."""
    common.section("3.3.2 Hand-set kernels: Sobel edges")
    print(f"Sobel x =\n{SOBEL_X}")
    gray = grayscale(img)                                     # (1, 32, 32)
    with torch.no_grad():
        edges = sobel_layer()(gray.unsqueeze(0))[0]           # (2, 32, 32)
    magnitude = edges.pow(2).sum(0).sqrt()
    print(f"Conv2d(1, 2, 3, padding=1) with Sobel weights: {tuple(gray.unsqueeze(0).shape)} -> "
          f"{tuple(edges.unsqueeze(0).shape)} (padding keeps the size; see 02)")
    check("Sobel layer == corr2d with the Sobel x kernel",
          torch.allclose(edges[0, 1:-1, 1:-1], corr2d(gray[0], SOBEL_X), atol=1e-5))
    path = plot_maps([gray[0], edges[0], edges[1], magnitude],
                     ["gray", "Sobel x (vertical edges)", "Sobel y (horizontal edges)",
                      "edge magnitude\n(bright frame: the zero padding)"],
                     os.path.join(out, "sobel.png"), label, show)
    print(f"saved {path}")
    print("  Sobel and Haar-like kernels were designed by hand; a CNN learns its kernels "
          "from data, and its first layer often ends up with edge detectors like these")

    # 3.3.2 nn.Conv2d: weight, bias, feature maps, receptive field --------------------
    common.section("3.3.2 nn.Conv2d(3, 3, 3) on the image")
    conv = nn.Conv2d(3, 3, 3)
    print(f"weight shape (out, in, k, k): {tuple(conv.weight.shape)}, bias shape "
          f"{tuple(conv.bias.shape)}")
    count = sum(p.numel() for p in conv.parameters())
    print(f"parameters: out * (in * k * k + 1) = 3 * (3 * 3 * 3 + 1) = {conv_params(3, 3, 3)}")
    check("formula == sum(p.numel())", count == conv_params(3, 3, 3), str(count))
    with torch.no_grad():
        maps = conv(img.unsqueeze(0))                          # (1, 3, 30, 30)
    print(f"input {tuple(img.unsqueeze(0).shape)} -> output {tuple(maps.shape)}: "
          f"3 kernels give 3 feature maps; more kernels, more kinds of feature")
    print("  each output pixel sees a 3x3 patch of all 3 input channels: "
          "its receptive field is 3x3")
    path = plot_maps(list(maps[0]), [f"feature map {i}: {tuple(maps.shape[-2:])}"
                                     for i in range(3)],
                     os.path.join(out, "feature_maps.png"),
                     f"random (untrained) Conv2d(3, 3, 3) on a {tuple(img.shape)} image: "
                     f"no padding, so 32 -> 30", show, cmap="viridis")
    print(f"saved {path}")

    # 3.3.2 Valid convolutions shrink the map -----------------------------------------
    common.section("3.3.2 Each valid 3x3 convolution shrinks the map")
    y = img.unsqueeze(0)
    sizes = [y.shape[-1]]
    with torch.no_grad():
        for _ in range(3):
            y = conv(y)
            sizes.append(y.shape[-1])
            print(f"  after conv: {tuple(y.shape)}")
    print(" -> ".join(map(str, sizes)) + "  (each 3x3 conv loses one pixel on every border)")
    check("32 -> 30 -> 28 -> 26", sizes == [32, 30, 28, 26] or array.shape[0] != 32)


if __name__ == "__main__":
    common.launch(main)

"""3.3.3-3.3.5 Padding, stride, pooling, the conv-ReLU-pool stack, receptive fields and
the VGG rule in numbers.

    python 02_padding_pooling.py [--image me.jpg]   # the lecture's car, or a picture of yours

Prints what each slide states, checks each formula against real layers; figures go to
runs/02_padding_pooling/."""
import itertools
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


def conv_output_size(w, k, p=0, s=1):
    """Output width of a convolution or pooling: floor((w - k + 2p) / s) + 1."""
    return (w - k + 2 * p) // s + 1


def receptive_field_by_gradient(layers, size=64):
    """The same, measured: the input pixels with a non-zero gradient of one output pixel.

    Weights are all ones (no cancellation), so every pixel that the output depends on
    gets a positive gradient; the width of that region is the receptive field.
    """
    convs = []
    for k, s in layers:
        conv = nn.Conv2d(1, 1, k, stride=s, bias=False)
        nn.init.ones_(conv.weight)
        convs.append(conv)
    x = torch.zeros(1, 1, size, size, requires_grad=True)
    y = nn.Sequential(*convs)(x)
    h, w = y.shape[-2:]
    y[0, 0, h // 2, w // 2].backward()
    cols = (x.grad[0, 0].abs().sum(0) > 0).nonzero()
    return int(cols.max() - cols.min() + 1)


def vgg_rule(c=64, size=32):
    """One 5x5 conv against two 3x3 convs (C -> C, no bias): weights and multiply-adds."""
    x = torch.zeros(1, c, size, size)
    one = nn.Conv2d(c, c, 5, padding=2, bias=False)
    two = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.ReLU(),
                        nn.Conv2d(c, c, 3, padding=1, bias=False))
    rows = []
    for name, net, k_terms in (("one 5x5 conv", one, [5]), ("two 3x3 convs", two, [3, 3])):
        rows.append({
            "name": name,
            "weights_formula": sum(c * c * k * k for k in k_terms),     # c_in * c_out * k * k
            "weights": sum(p.numel() for p in net.parameters()),
            "macs_formula": sum(c * size * size * c * k * k for k in k_terms),  # c_out*h*w*c_in*k*k
            "macs": common.count_macs(net, x),
            "receptive_field": common.receptive_field([(k, 1) for k in k_terms]),
            "nonlinearities": len(k_terms),
        })
    return rows


def halve_and_double(c=64, size=32, stages=3):
    """Each pool halves H and W and the next conv doubles C: a 3x3 conv then costs the same
    multiply-adds at every stage while the activation memory H*W*C halves."""
    rows = []
    for i in range(stages):
        ci, hi = c * 2 ** i, size // 2 ** i
        conv = nn.Conv2d(ci, ci, 3, padding=1, bias=False)
        rows.append({"stage": i + 1, "h": hi, "w": hi, "c": ci,
                     "memory": hi * hi * ci,
                     "params": sum(p.numel() for p in conv.parameters()),
                     "macs_formula": ci * hi * hi * ci * 9,
                     "macs": common.count_macs(conv, torch.zeros(1, ci, hi, hi))})
    return rows


def conv_relu_pool_stages(img, seed=0):
    """The lecture's 3.3.5 sequence on one image with random 3x3 'same' convs:
    returns [(name, tensor)] after each conv, ReLU and pool of two stages."""
    torch.manual_seed(seed)
    layers = [("conv 3->8", nn.Conv2d(3, 8, 3, padding=1)), ("ReLU", nn.ReLU()),
              ("max pool", nn.MaxPool2d(2)),
              ("conv 8->16", nn.Conv2d(8, 16, 3, padding=1)), ("ReLU", nn.ReLU()),
              ("max pool", nn.MaxPool2d(2))]
    x, out = img.unsqueeze(0), []
    with torch.no_grad():
        for name, layer in layers:
            x = layer(x)
            out.append((name, x[0]))
    return out


def plot_pooling(img, path, show):
    """Pooling on the picture and on 1-pixel lines, where max and average differ most: max
    keeps a thin line at full strength, the average of its 2x2 window turns it grey."""
    lines = torch.full((1, 3, 32, 32), -1.0)                # black, on the [-1, 1] scale
    lines[..., 5::8, :], lines[..., :, 2::8] = 1.0, 1.0     # white lines, 1 pixel wide
    fig, axes = common.subplots(2, 4, figsize=(8.4, 5.2))
    for row, x in zip(axes, (img.unsqueeze(0), lines)):
        panels = [("input 32x32", x), ("max pool 2x2: 16x16", F.max_pool2d(x, 2)),
                  ("avg pool 2x2: 16x16", F.avg_pool2d(x, 2)),
                  ("max pool twice: 8x8", F.max_pool2d(F.max_pool2d(x, 2), 2))]
        for ax, (title, t) in zip(row, panels):
            ax.imshow(common.unnormalize(t[0]).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set(xticks=[], yticks=[])  # a frame, not axis("off"): where the white lines end
    fig.supxlabel("bottom: white lines 1 pixel wide on black. Max pool keeps a line full white "
                  "(and twice as thick, relative\nto the smaller image); average pool mixes it "
                  "with the black of its 2x2 window: grey, light grey where lines cross", size=9)
    return common.save_figure(fig, path, show)


def plot_stages(stages, path, title, show):
    """Channels 0-3 (rows) of each stage's output (columns), one colour scale per column
    (the bar below it); a channel that ReLU zeroed entirely is labelled so."""
    fig, axes = common.subplots(4, len(stages), figsize=(2.3 * len(stages), 8.2))
    for col, (name, t) in enumerate(stages):
        lo, hi = t[:4].min().item(), t[:4].max().item()
        for row in range(4):
            ax = axes[row, col]
            im = ax.imshow(t[row].numpy(), cmap="viridis", interpolation="nearest",
                           vmin=lo, vmax=hi if hi > lo else lo + 1)
            if not t[row].any():
                ax.text(0.5, 0.5, "all zero\n(ReLU cut\nevery value)", ha="center",
                        va="center", fontsize=7, color="white", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"channel {row}", fontsize=8)
        fig.colorbar(im, ax=axes[:, col].tolist(), orientation="horizontal", shrink=0.9)
        axes[0, col].set_title(f"{name}\n{tuple(t.shape)}", fontsize=8)
    fig.suptitle(f"{title}\ncolumns: each step in order; rows: its channels 0-3", fontsize=10)
    return common.save_figure(fig, path, show)


# at most 1024: a 5x5 C->C conv at C = 1024 holds 26M weights; more is only slow
channels = common.number(int, low=1, high=1024, what="between 1 and 1024")


def build_parser():
    p = common.Parser(description=" ".join(__doc__.split("\n\n")[0].split()))
    common.add_data_args(p, picture=True)
    p.add_argument("--channels", type=channels, default=64,
                   help="C for the VGG-rule tables, 1 to 1024")
    return p


def main(argv=None):
    args, out, check, array, source = common.start_picture_script(build_parser(), argv,
                                                                  "02_padding_pooling")
    label = source.split(",")[0]  # short form for figure titles
    img = common.to_tensor(array)
    print(f"image: {source}, tensor {tuple(img.shape)}")

    # 3.3.3 Padding and stride ---------------------------------------------------------
    common.section("3.3.3 Padding, stride and the output-size formula")
    print("output = floor((w - k + 2p) / s) + 1")
    x = img.unsqueeze(0)
    for k, p, s, why in ((3, 0, 1, "valid: shrinks by k - 1"),
                         (3, 1, 1, "'same': 1 row of padding for 3x3"),
                         (5, 2, 1, "'same': 2 rows of padding for 5x5"),
                         (3, 1, 2, "stride 2 halves the map")):
        layer = nn.Conv2d(3, 3, k, padding=p, stride=s)
        got = layer(x).shape[-1]
        print(f"  Conv2d(k={k}, padding={p}, stride={s}): 32 -> {got:2d}   "
              f"formula {conv_output_size(32, k, p, s):2d}   ({why})")
        check(f"k={k} p={p} s={s}", got == conv_output_size(32, k, p, s))
    same = nn.Conv2d(3, 3, 3, padding=1)
    sizes = [x.shape[-1]]
    with torch.no_grad():
        y = x
        for _ in range(3):
            y = same(y)
            sizes.append(y.shape[-1])
    print(f"  padding=1, three times: {' -> '.join(map(str, sizes))}")
    grid = list(itertools.product((7, 8, 32), (1, 2, 3, 5), (0, 1, 2), (1, 2, 3)))
    bad = [(w, k, p, s) for w, k, p, s in grid if w + 2 * p >= k and
           nn.Conv2d(1, 1, k, padding=p, stride=s)(torch.zeros(1, 1, w, w)).shape[-1]
           != conv_output_size(w, k, p, s)]
    check(f"formula == real Conv2d over {len(grid)} (w, k, p, s) cases", not bad,
          f"failing cases {bad[:3]}" if bad else "")

    # 3.3.4 Pooling ---------------------------------------------------------------------
    common.section("3.3.4 Pooling halves the map")
    pool = nn.MaxPool2d(2)
    sizes = [x.shape[-1], pool(x).shape[-1], pool(pool(x)).shape[-1]]
    print(f"MaxPool2d(2): {' -> '.join(map(str, sizes))} (no weights: "
          f"{sum(p.numel() for p in pool.parameters())} parameters)")
    check("32 -> 16 -> 8", sizes == [32, 16, 8])
    patch = torch.tensor([[1.0, 3.0], [2.0, 6.0]])
    print(f"a 2x2 window {patch.flatten().tolist()}: max pool keeps {patch.max():.0f}, "
          f"average pool gives {patch.mean():.0f}")
    print(f"saved {plot_pooling(img, os.path.join(out, 'pooling.png'), args.show)}")

    # 3.3.5 conv -> ReLU -> pool ------------------------------------------------------
    common.section("3.3.5 conv -> ReLU -> pool, twice")
    stages = conv_relu_pool_stages(img, args.seed)
    for name, t in stages:
        extra = f", {100 * (t == 0).float().mean():.0f}% zeros" if name == "ReLU" else ""
        print(f"  after {name:10s}: {tuple(t.shape)}{extra}")
    print("  ReLU zeroes the negative responses; each pool halves the map, so the next "
          "conv sees a larger part of the image")
    path = plot_stages(stages, os.path.join(out, "conv_relu_pool.png"),
                       f"random convs on: {label}", args.show)
    print(f"saved {path}")

    fields_and_the_vgg_rule(args.channels, check)
    print(f"\nfigures in {out}/; {check.failed} check(s) failed")
    return 1 if check.failed else 0


def fields_and_the_vgg_rule(c, check):
    """Receptive fields by formula and by gradient; 3.4.3 the VGG rule in numbers."""
    common.section("Receptive field")
    stacks = {"one 3x3": [(3, 1)], "two 3x3": [(3, 1)] * 2, "three 3x3": [(3, 1)] * 3,
              "one 5x5": [(5, 1)], "3x3, 2x2 stride-2 pool, 3x3": [(3, 1), (2, 2), (3, 1)],
              "the lecture's CNN (6 convs, 3 pools)": [(3, 1), (3, 1), (2, 2)] * 3}
    for name, layers in stacks.items():
        rf, measured = common.receptive_field(layers), receptive_field_by_gradient(layers)
        print(f"  {name:38s}: {rf:2d}x{rf:<2d} (gradient of one output pixel: {measured})")
        check(f"{name}: formula == gradient", rf == measured)
    print("  two stacked 3x3 convs see 5x5, three see 7x7; pooling multiplies what "
          "every later layer adds")

    common.section(f"VGG rule: two 3x3 convs vs one 5x5 (C = {c}, 32x32 map)")
    print(f"  {'':15s} {'weights':>10s} {'formula':>10s} {'mult-adds':>13s} {'formula':>13s}"
          f" {'field':>6s} {'ReLUs':>6s}")
    rows = vgg_rule(c)
    for r in rows:
        print(f"  {r['name']:15s} {r['weights']:10,d} {r['weights_formula']:10,d} "
              f"{r['macs']:13,d} {r['macs_formula']:13,d} {r['receptive_field']:4d}x"
              f"{r['receptive_field']:<2d}{r['nonlinearities']:5d}")
    for r in rows:
        check(f"{r['name']}: counted == formula",
              r["weights"] == r["weights_formula"] and r["macs"] == r["macs_formula"])
    check(f"two 3x3 = 18C^2 = {18 * c * c:,d}, one 5x5 = 25C^2 = {25 * c * c:,d}",
          rows[1]["weights"] == 18 * c * c and rows[0]["weights"] == 25 * c * c)
    print(f"  same receptive field, {1 - 18 / 25:.0%} fewer weights and mult-adds, one more "
          f"non-linearity")

    common.section("VGG rule: halve the map, double the channels")
    print(f"  {'stage':>5s} {'H x W x C':>14s} {'memory H*W*C':>13s} {'3x3 weights':>12s} "
          f"{'mult-adds':>14s}")
    table = halve_and_double(c)
    for r in table:
        print(f"  {r['stage']:5d} {r['h']:4d} x{r['w']:3d} x{r['c']:4d} {r['memory']:13,d} "
              f"{r['params']:12,d} {r['macs']:14,d}")
    for r in table:
        check(f"stage {r['stage']}: counted mult-adds == c_out*h*w*c_in*k*k",
              r["macs"] == r["macs_formula"])
    check("mult-adds equal at every stage", len({r["macs"] for r in table}) == 1)
    print("  the cost per conv stays constant while activation memory halves at each "
          "stage; the weights grow 4x, which is why deep stages hold most parameters")


if __name__ == "__main__":
    common.launch(main)

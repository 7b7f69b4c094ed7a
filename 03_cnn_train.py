"""3.3.5 A ConvNet for CIFAR-10: the lecture's CNN, trained and measured.

    python 03_cnn_train.py                      # default recipe, 40 epochs
    python 03_cnn_train.py --epochs 10          # a shorter run
    python 03_cnn_train.py --lr 0.1 0.03 0.01   # the lecture's exp1_lr: one run per lr
    python 03_cnn_train.py --act relu tanh      # one run per activation, compared
    python 03_cnn_train.py --benchmark          # one epoch: this data path vs the notebook's

Everything a run makes goes to a new folder runs/<exp-name>/ (see README).
"""
import common  # first: it turns a Ctrl-C while torch loads into one line

import argparse
import functools
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# 3.3.5 conv -> ReLU -> conv -> ReLU -> pool, three times, then one fully connected layer
class CNN(nn.Module):
    """The lecture's ConvNet for 32x32 CIFAR-10 images (82,330 parameters).

    Three stages of two 3x3 'same' convolutions and a 2x2 max pool; each pool halves the
    map and the next stage doubles the channels (16, 32, 64), as VGG does. act is the
    non-linearity after every conv (the notebook's args.act). init 'auto' matches it: He
    et al. 2015 for ReLU, Glorot and Bengio 2010 for tanh and sigmoid.
    """
    ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
    # the convs and pools in the order forward() applies them
    LAYER_ORDER = ("conv1_1", "conv1_2", "pool", "conv2_1", "conv2_2", "pool",
                   "conv3_1", "conv3_2", "pool")

    def __init__(self, num_classes=10, init="auto", act="relu"):
        super().__init__()
        self.act = self.ACTIVATIONS[act]  # a function, not a layer: the layer list is the lecture's
        self.conv1_1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1_2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2_1 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv2_2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3_1 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3_2 = nn.Conv2d(64, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 64, num_classes)
        if init == "auto":
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    if act == "relu":  # N(0, 2 / fan_in)
                        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    else:  # U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))
                        nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(act))
                    nn.init.zeros_(m.bias)

    def forward(self, x):                            # (B, 3, 32, 32)
        x = self.act(self.conv1_1(x))                # (B, 16, 32, 32)
        x = self.pool(self.act(self.conv1_2(x)))     # (B, 16, 16, 16)
        x = self.act(self.conv2_1(x))                # (B, 32, 16, 16)
        x = self.pool(self.act(self.conv2_2(x)))     # (B, 32, 8, 8)
        x = self.act(self.conv3_1(x))                # (B, 64, 8, 8)
        x = self.pool(self.act(self.conv3_2(x)))     # (B, 64, 4, 4)
        x = torch.flatten(x, 1)                      # (B, 1024)
        return self.fc(x)                            # (B, 10)


# 3.3.5 The lecture's flow: data, model, train with validation, test once, save the curves
def main(argv=None):
    args = parse_args(argv)
    device, precision = common.start(args, None if args.benchmark else [args.exp_name])
    saved = common.or_exit(load_model_file, args.from_model) if args.from_model else None
    partition = common.load_data(args)
    if args.benchmark:
        return benchmark(args, partition, device, precision)
    if args.from_model:
        return figures_from_model(args, partition, device, precision, saved)
    print(f"device: {device} ({common.device_name(device)}), precision {precision}, data: "
          f"{partition['kind']} (train {len(partition['train'][1])}, val "
          f"{len(partition['val'][1])}, test {len(partition['test'][1])})")
    runs = [{"name": name, "settings": settings, "batch_option": "--train-batch-size",
             "build": functools.partial(CNN, len(partition["classes"]), args.init,
                                        settings["act"]),
             "jobs": functools.partial(cnn_figures, partition=partition, args=args),
             "row": {"value": value}}
            for name, value, settings in sweep_plan(args, precision)]
    rows, status = common.train_runs(runs, partition, device, args.out_dir, args.show)
    if args.sweep and rows:
        status = compare_sweep(rows, args, partition, device, precision) or status
    return status


# ----------------------------------------------------------------------------- settings, sweeps

# The lecture's own settings; the defaults below differ because the lecture's plain SGD
# at lr=1e-3 only learned through its gradient-accumulation bug (see README).
LECTURE_SETTINGS = dict(optim=["SGD"], lr=[1e-3], momentum=0.0, l2=[1e-5], schedule="none",
                        augment=False, label_smoothing=0.0, clip_grad=0.0, flip=False,
                        test_batch_size=32, init="pytorch", exp_name="cnn_lecture")
# the options of which one may take several values: one run per value, then a comparison
SWEEPABLE = ("lr", "act", "optim", "l2")
SETTING_KEYS = ("momentum", "schedule", "label_smoothing", "clip_grad", "flip", "init",
                "epochs", "train_batch_size", "test_batch_size", "augment", "seed", "data",
                "limit", "deterministic")


def sweep_plan(args, precision):
    """[(run name, swept value or None, settings)]: one entry per run of the sweep."""
    values = getattr(args, args.sweep) if args.sweep else [None]
    plan = []
    for value in values:
        settings = {k: getattr(args, k) for k in SETTING_KEYS}
        settings.update({k: getattr(args, k)[0] for k in SWEEPABLE}, model="CNN",
                        precision=precision)
        name = args.exp_name
        if args.sweep:
            settings[args.sweep] = value
            name += f"_{args.sweep}{value:g}" if isinstance(value, float) else f"_{value}"
        settings["lr"] = args.act_lr.get(settings["act"], settings["lr"])
        plan.append((name, value, settings))
    return plan


def compare_sweep(rows, args, partition, device, precision):
    """The sweep's table, figure and summary JSON."""
    for r in rows:
        errors = [100 - a for a in r["result"]["train_accs"]]
        r.update(value=str(r["value"]), last_train_error=errors[-1] if errors else None,
                 epochs_to_25=common.first_epoch(errors, lambda e: e < 25.0))
    common.print_table(rows, [(args.sweep, "value", "s"), ("lr", "lr", "g"),
                              ("best val", "val_acc", ".2f"), ("test acc", "test_acc", ".2f"),
                              ("s/epoch", "seconds_per_epoch", ".2f"),
                              ("last train error", "last_train_error", ".2f"),
                              ("epochs to train error < 25%", "epochs_to_25", "d"),
                              ("status", "status", "s")])
    if args.sweep == "act":
        print("AlexNet's claim (ReLU reaches 25% training error six times faster than tanh) "
              "is measured, with seeds and its own network, init and inputs, by: "
              "python 04_case_studies.py --claim relu")
    tag = common.data_tag(partition["kind"])
    label = {r["model"]: f"{args.sweep}={r['value']}" for r in rows}
    fig = common.plot_curves(
        [("training error (%)", {label[r["model"]]: [100 - a for a in r["result"]["train_accs"]]
                                 for r in rows}),
         ("val accuracy (%)", {label[r["model"]]: r["result"]["val_accs"] for r in rows})],
        f"{args.exp_name}: one run per {args.sweep}, {common.epochs_text(args.epochs)}{tag}")
    stem = os.path.join(args.out_dir, f"{args.exp_name}_{args.sweep}")
    png, summary_json = common.reserve(stem + ".png", also=[os.path.basename(stem) + ".json"])
    summary = {"option": args.sweep, **common.environment(device, precision),
               "runs": [{k: v for k, v in r.items() if k not in ("result", "settings")}
                        for r in rows]}
    return common.save([(png, lambda p: common.save_figure(fig, p, args.show)),
                        (summary_json, lambda p: common.save_json(summary, p))],
                       args.out_dir)


# ----------------------------------------------------------------------------- 3.3.5 what each layer sees
# The slide (after Zeiler and Fergus 2014): shallow layers respond to lines and colours,
# deep layers to larger, more complex parts. Three figures show it for the trained CNN.

SEEN_LAYERS = ("conv1_2", "conv2_2", "conv3_2")  # the last conv of each stage


def cnn_figures(net, settings, result, folder, loaders, partition, args):
    """A run's own files as save jobs: confusion.png, filters.png, what each layer sees
    (features.png, top_patches.png), model.pt."""
    tag, name = common.data_tag(partition["kind"]), os.path.basename(folder)
    jobs = [(os.path.join(folder, "filters.png"), lambda path: common.save_figure(
        plot_filters(net.conv1_1.weight, f"{name}: conv1_1 filters{tag}"), path, args.show))]
    if result["test_confusion"] is not None:
        jobs.insert(0, (os.path.join(folder, "confusion.png"), lambda path: common.save_figure(
            common.plot_confusion(result["test_confusion"], partition["classes"],
                                  f"{name}: confusion matrix (test){tag}"), path, args.show)))
    if result["train_losses"] and all(torch.isfinite(p).all() for p in net.parameters()):
        took, figures = layer_figures(net, partition, loaders, settings["precision"], folder,
                                      args.show)
        secs = result["epoch_seconds"]
        print(f"what each layer sees: one pass over the val set with hooks took {took:.2f} s "
              f"({100 * took / (sum(secs) / len(secs)):.1f}% of a training epoch)")
        jobs += figures
    if args.save_model:
        state = {k: v.cpu() for k, v in net.state_dict().items()}  # loads on any machine
        jobs.append((os.path.join(folder, "model.pt"), functools.partial(
            common.save_torch, {"state_dict": state, "settings": settings})))
    return jobs


def plot_filters(weight, title=""):
    """The 16 learned 3x3x3 filters of the first layer on one shared scale: the RGB
    filter (grey = 0), then its red, green and blue weights (blue < 0 < red)."""
    w = weight.detach().float().cpu()                                  # (16, 3, 3, 3)
    fig, axes = common.plt.subplots(2, 2, figsize=(8, 3.4), constrained_layout=True)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if not torch.isfinite(w).all():
        fig.text(0.5, 0.45, "the weights are NaN or infinite: the run diverged",
                 ha="center", va="center")
        fig.suptitle(title)
        return fig
    top = w.abs().max().item() or 1.0
    rgb = [(0.5 + 0.5 * f / top).clamp(0, 1) for f in w]              # one scale for all
    axes[0, 0].imshow(mosaic(rgb, per_row=8, fill=1.0), interpolation="nearest")
    for ax, c in zip(axes.flat[1:], range(3)):
        im = ax.imshow(mosaic([f[c:c + 1] for f in w], per_row=8)[..., 0], cmap="bwr",
                       vmin=-top, vmax=top, interpolation="nearest")
    for ax, text in zip(axes.flat, ("RGB (grey = 0)", "red weights", "green weights",
                                    "blue weights")):
        ax.set_title(text, fontsize=9, pad=9)
        for i in range(16):  # the filter's number above its cell
            ax.text(4 * (i % 8) + 1, 4 * (i // 8) - 0.7, str(i), ha="center", fontsize=6)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="weight")
    fig.suptitle(f"{title}\nan edge detector shows a red/blue split, a colour detector one "
                 f"channel unlike the others", fontsize=9)
    return fig


def layer_geometry(net, upto):
    """(kernel, stride, padding) of every conv and pool from the input up to `upto`."""
    layers = []
    for name in CNN.LAYER_ORDER:
        m = getattr(net, name)
        layers.append(tuple(v if isinstance(v, int) else v[0]
                            for v in (m.kernel_size, m.stride, m.padding)))
        if name == upto:
            return layers
    raise ValueError(f"{upto} is not in {CNN.LAYER_ORDER}")


def receptive_box(layers, i, j, size=None):
    """The input rows (top, bottom) and columns (left, right), inclusive, that output unit
    (i, j) after `layers` depends on: an output span [a, b] of a layer with kernel k,
    stride s and padding p reads the input span [a*s - p, b*s - p + k - 1]. Clipped to a
    size x size image when size is given."""
    top, bottom, left, right = i, i, j, j
    for k, s, p in reversed(layers):
        top, bottom = top * s - p, bottom * s - p + k - 1
        left, right = left * s - p, right * s - p + k - 1
    if size is not None:
        top, left = max(top, 0), max(left, 0)
        bottom, right = min(bottom, size - 1), min(right, size - 1)
    return top, bottom, left, right


@torch.no_grad()
def stage_maps(net, image, amp_dtype=None):
    """The maps after each of the three conv-conv-pool stages for one normalised image."""
    maps = []
    hook = net.pool.register_forward_hook(lambda m, i, o: maps.append(o[0].float().cpu()))
    net.eval()
    device = next(net.parameters()).device
    try:
        with common.autocast(device, amp_dtype):
            net(image.unsqueeze(0).to(device))
    finally:
        hook.remove()
    return maps                                  # [(16, 16, 16), (32, 8, 8), (64, 4, 4)]


@torch.no_grad()
def strongest_responses(net, loader, layers=SEEN_LAYERS, units=8, top=9, amp_dtype=None):
    """One forward pass over loader (unshuffled) with hooks: for the first `units`
    channels of each layer, the `top` images whose strongest response is largest, with
    the position of that response. Returns {layer: [(unit, [(image index, i, j)])]}."""
    found = {name: [] for name in layers}
    width = {}

    def keep(name):
        def hook(module, inputs, output):
            width[name] = output.shape[-1]
            values, where = output[:, :units].float().flatten(2).max(2)   # (B, units)
            found[name].append((values, where))
        return hook

    hooks = [getattr(net, name).register_forward_hook(keep(name)) for name in layers]
    net.eval()
    device = next(net.parameters()).device
    try:
        for inputs, _ in loader:
            with common.autocast(device, amp_dtype):
                net(inputs.to(device))
    finally:
        for h in hooks:
            h.remove()
    result = {}
    for name in layers:
        values = torch.cat([v for v, _ in found[name]]).cpu()       # (N, units)
        where = torch.cat([w for _, w in found[name]]).cpu()
        best = values.topk(min(top, len(values)), dim=0).indices   # (top, units)
        result[name] = [(u, [(int(n), *divmod(int(where[n, u]), width[name]))
                             for n in best[:, u]]) for u in range(values.shape[1])]
    return result


def crop_field(image, box, field, fill=128):
    """The part of a uint8 (3, H, W) image inside box, on a field x field canvas (grey
    where the field reaches past the image border)."""
    top, bottom, left, right = box
    canvas = torch.full((3, field, field), fill, dtype=torch.uint8)
    h, w = image.shape[1:]
    t, l = max(top, 0), max(left, 0)
    b, r = min(bottom, h - 1), min(right, w - 1)
    canvas[:, t - top:b - top + 1, l - left:r - left + 1] = image[:, t:b + 1, l:r + 1]
    return canvas


def mosaic(tiles, per_row=3, gap=1, fill=float("nan")):
    """Tiles (C, f, f) laid out per_row to a row with a gap of `fill`, as (H, W, C)."""
    c, f = tiles[0].shape[0], tiles[0].shape[-1]
    rows = -(-len(tiles) // per_row)
    dtype = tiles[0].dtype
    fill = 255 if dtype == torch.uint8 else fill  # uint8 images: a white gap
    out = torch.full((c, rows * (f + gap) - gap, per_row * (f + gap) - gap), fill, dtype=dtype)
    for n, tile in enumerate(tiles):
        r, col = divmod(n, per_row)
        out[:, r * (f + gap):r * (f + gap) + f, col * (f + gap):col * (f + gap) + f] = tile
    return out.permute(1, 2, 0).numpy()


def plot_top_patches(net, responses, images, title=""):
    """Per layer (row) and unit (column): the 9 val images that excite the unit most, each
    cropped to the unit's receptive field around its strongest position."""
    fig, axes = common.plt.subplots(len(responses), 8, figsize=(13, 5.4), squeeze=False)
    for row, (name, units) in enumerate(responses.items()):
        layers = layer_geometry(net, name)
        field = common.receptive_field(layers)
        for col in range(8):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(units):
                continue
            unit, hits = units[col]
            tiles = [crop_field(images[n], receptive_box(layers, i, j), field)
                     for n, i, j in hits]
            ax.imshow(mosaic(tiles), interpolation="nearest")
            ax.set_title(f"unit {unit}", fontsize=8)
        axes[row, 0].text(-0.15, 0.5, f"{name}\n{field}x{field} px", fontsize=9,
                          ha="right", va="center", transform=axes[row, 0].transAxes)
    fig.suptitle(f"{title}\nthe 9 val images that excite each unit most, cropped to its "
                 f"receptive field (grey: outside the image)", fontsize=10)
    return fig


def plot_features(image, maps, title=""):
    """One image, then channels 0-7 of the maps after each of the three stages, one
    colour scale per stage."""
    fig, axes = common.plt.subplots(len(maps) + 1, 1, figsize=(9, 7.5))
    axes[0].imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    axes[0].set_title(f"input {tuple(image.shape)}", fontsize=8)
    for stage, (ax, m) in enumerate(zip(axes[1:], maps), 1):
        tiles = [t.unsqueeze(0) for t in m[:8]]
        im = ax.imshow(mosaic(tiles, per_row=8)[..., 0], cmap="viridis",
                       interpolation="nearest")
        ax.set_title(f"after stage {stage}: {tuple(m.shape)}, channels 0-7 "
                     f"from left", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return fig


def layer_figures(net, partition, loaders, precision, folder, show):
    """features.png and top_patches.png as save jobs; the hook pass is timed here."""
    dtype = common.AMP_DTYPES[precision]
    name, tag = os.path.basename(folder), common.data_tag(partition["kind"])
    x_test = partition["test"][0][0]
    maps = stage_maps(net, common.normalize(x_test.unsqueeze(0))[0], dtype)
    common.synchronize(loaders["val"].device)
    start = time.perf_counter()
    responses = strongest_responses(net, loaders["val"], amp_dtype=dtype)
    took = time.perf_counter() - start
    return took, [
        (os.path.join(folder, "features.png"), lambda path: common.save_figure(
            plot_features(x_test, maps, f"{name}: test image 0 through the three stages{tag}"),
            path, show)),
        (os.path.join(folder, "top_patches.png"), lambda path: common.save_figure(
            plot_top_patches(net, responses, partition["val"][0], f"{name}{tag}"), path,
            show))]


def load_model_file(path):
    """The state_dict and settings of a model.pt, or UsageError with one line."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        CNN(act=saved["settings"]["act"]).load_state_dict(saved["state_dict"])
        return saved
    except FileNotFoundError:
        raise common.UsageError(f"--from-model {path}: no such file") from None
    except Exception as err:
        raise common.UsageError(f"--from-model {path}: not a model.pt of this script "
                                f"({common.short_error(err)}); save one with "
                                f"--save-model") from None


def figures_from_model(args, partition, device, precision, saved):
    """features.png and top_patches.png of a saved model, in a new run folder."""
    net = common.to_device(CNN(len(partition["classes"]), "pytorch", saved["settings"]["act"]),
                           device)
    net.load_state_dict(saved["state_dict"])
    loaders = common.make_loaders(partition, device, args.train_batch_size,
                                  args.test_batch_size)
    folder = common.reserve(os.path.join(args.out_dir, args.exp_name), folder=True)
    took, jobs = layer_figures(net, partition, loaders, precision, folder, args.show)
    print(f"what each layer sees ({args.from_model}): one pass over the val set with hooks "
          f"took {took:.2f} s")
    return common.save(jobs, folder)


# ----------------------------------------------------------------------------- benchmark

def notebook_loaders(partition, args):
    """The notebook's data path: a PIL image per sample through torchvision transforms in
    a DataLoader (num_workers=0), rebuilt for the epoch."""
    import torchvision.transforms as T
    from PIL import Image

    class PILSet(torch.utils.data.Dataset):
        def __init__(self, images, labels, transform):
            self.images = images.permute(0, 2, 3, 1).numpy()  # (N, 32, 32, 3) as CIFAR10
            self.labels = labels.tolist()
            self.transform = transform

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.images[i])), self.labels[i]

    norm = [T.ToTensor(), T.Normalize((common.MEAN,) * 3, (common.STD,) * 3)]
    aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if args.augment else []
    train_set = PILSet(*partition["train"], T.Compose(aug + norm))
    val_set = PILSet(*partition["val"], T.Compose(norm))
    return {"train": torch.utils.data.DataLoader(train_set, args.train_batch_size,
                                                 shuffle=True, num_workers=0),
            "val": torch.utils.data.DataLoader(val_set, args.test_batch_size, num_workers=0)}


def timed_epoch(net, loaders, args, device, precision):
    """Seconds for one training epoch plus one validation pass, the device synchronised."""
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr[0], momentum=args.momentum,
                                weight_decay=args.l2[0], nesterov=args.momentum > 0)
    dtype = common.AMP_DTYPES[precision]
    common.synchronize(device)
    start = time.perf_counter()
    common.train(net, loaders["train"], optimizer, criterion, device, amp_dtype=dtype)
    common.validate(net, loaders["val"], criterion, device, amp_dtype=dtype)
    common.synchronize(device)
    return time.perf_counter() - start


def warmup_subset(partition, args):
    """A few images per split with every batch shape the timed epoch meets: one full
    batch and the last, partial one (train and val)."""
    subset = {}
    for split, bs in (("train", args.train_batch_size), ("val", args.test_batch_size)):
        x, y = partition[split]
        rest = len(y) % bs
        n = min(len(y), bs + (rest or bs))
        keep = torch.cat([torch.arange(bs), torch.arange(len(y) - (n - bs), len(y))])[:n] \
            if n > bs else torch.arange(n)
        subset[split] = (x[keep], y[keep])
    subset["test"] = subset["val"]
    return subset


def benchmark(args, partition, device, precision):
    """Time one epoch (train + val) through both data paths in the same process."""
    print(f"benchmark: one epoch (train {len(partition['train'][1])} + val "
          f"{len(partition['val'][1])}), CNN, batch {args.train_batch_size}/"
          f"{args.test_batch_size}, augment={args.augment}, device {device} "
          f"({common.device_name(device)}), data {partition['kind']}, precision "
          f"{precision}; fp32 rows: {common.tf32_note(device)}")

    def fresh(layout=True):
        common.set_seed(args.seed)
        net = common.to_device(CNN(len(partition["classes"]), args.init, args.act[0]), device)
        return net if layout else net.to(memory_format=torch.contiguous_format)

    def ours(part):
        return common.make_loaders(part, device, args.train_batch_size, args.test_batch_size,
                                   args.augment, args.seed)

    # warm-up on every batch shape, so one-time setup costs count for neither path
    small = warmup_subset(partition, args)
    timed_epoch(fresh(), ours(small), args, device, precision)
    timed_epoch(fresh(), notebook_loaders(small, args), args, device, precision)
    timed_epoch(fresh(False), notebook_loaders(small, args), args, device, "fp32")
    project = timed_epoch(fresh(), ours(partition), args, device, precision)
    notebook = timed_epoch(fresh(), notebook_loaders(partition, args), args, device, precision)
    # the notebook as it ran: its data path and fp32 in the default memory layout
    as_written = timed_epoch(fresh(False), notebook_loaders(partition, args), args, device,
                             "fp32")
    print(f"project data path            : {project:8.2f} s/epoch")
    print(f"notebook data path           : {notebook:8.2f} s/epoch (same model settings)")
    print(f"notebook as written (fp32)   : {as_written:8.2f} s/epoch")
    print(f"ratio (project / notebook): {project / notebook:.2f}x "
          f"(target: <= 0.75x on CPU, <= 0.2x on a GPU); "
          f"against the notebook as written: {project / as_written:.2f}x")
    return 0


# ----------------------------------------------------------------------------- command line

def activation(text):
    """'relu' or 'relu=0.05' -> ('relu', None) or ('relu', 0.05)."""
    name, _, lr = text.partition("=")
    if name not in CNN.ACTIVATIONS:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(CNN.ACTIVATIONS)}, got {name!r}")
    return name, common.positive_float(lr) if lr else None


def build_parser():
    p = argparse.ArgumentParser(
        description="Train the lecture's CNN (3.3.5) on CIFAR-10 and save curves, results "
                    "and figures in a new folder OUT_DIR/EXP_NAME. One of --lr, --act, "
                    "--optim, --l2 may take several values: one run per value, all from "
                    "the same seed and data order, then a figure and a table compare them. "
                    "Epochs count from 1.",
        formatter_class=common.HelpFormatter)
    p.add_argument("--optim", choices=("SGD", "RMSprop", "Adam"), nargs="+", default=["SGD"],
                   help="optimizer (SGD uses Nesterov momentum when --momentum > 0)")
    p.add_argument("--momentum", type=common.non_negative_float, default=0.9,
                   help="momentum for SGD and RMSprop")
    p.add_argument("--lr", type=common.positive_float, nargs="+", default=[0.05],
                   help="learning rate (peak rate of the schedule)")
    p.add_argument("--act", type=activation, nargs="+", default=["relu"],
                   metavar="ACT[=LR]",
                   help=f"activation after every conv (the notebook's args.act): "
                        f"{', '.join(CNN.ACTIVATIONS)}; ACT=LR gives that run its own "
                        f"learning rate (e.g. --act relu=0.05 tanh=0.02)")
    p.add_argument("--l2", type=common.non_negative_float, nargs="+", default=[5e-4],
                   help="L2 penalty (weight decay)")
    p.add_argument("--schedule", choices=("onecycle", "cosine", "none"), default="onecycle",
                   help="learning-rate schedule: onecycle warms up for 20%% of the steps "
                        "then falls linearly to 0; cosine decays to 0; none keeps --lr")
    p.add_argument("--label-smoothing", type=common.fraction, default=0.0,
                   help="cross-entropy label smoothing, 0 (off) to 1")
    p.add_argument("--clip-grad", type=common.non_negative_float, default=5.0,
                   help="clip the gradient norm to this value before each step (guards "
                        "the peak of the schedule against rare spikes); 0 turns it off")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="validate and test each image and its mirror image and average the "
                        "logits (test-time augmentation; result.json also gives the val "
                        "accuracy without it)")
    p.add_argument("--init", choices=("auto", "pytorch"), default="auto",
                   help="weight initialisation: auto matches --act (He et al. 2015 for "
                        "relu, Glorot/Xavier 2010 for tanh and sigmoid); pytorch is the "
                        "library's default, which the lecture used")
    p.add_argument("--epochs", type=common.positive_int, default=40, help="training epochs")
    p.add_argument("--train-batch-size", type=common.positive_int, default=128,
                   help="images per training step")
    p.add_argument("--test-batch-size", type=common.positive_int, default=500,
                   help="batch size for val and test (speed only; the lecture used 32)")
    common.add_training_args(p)
    p.add_argument("--lecture", action="store_true",
                   help="start from the lecture's settings (SGD, lr 1e-3, no momentum, l2 "
                        "1e-5, no schedule, no augmentation, no clipping, PyTorch's default "
                        "init, test batch 32, exp-name cnn_lecture); an option you also give "
                        "explicitly wins. With the gradient bug fixed they stay at chance "
                        "(about 10%% accuracy) for the first epochs: that is the expected "
                        "result")
    common.add_data_args(p)
    out = common.add_output_args(p, default_name="cnn")
    out.add_argument("--save-model", action="store_true",
                     help="also save model.pt (state_dict and settings)")
    out.add_argument("--from-model", metavar="MODEL_PT", default=None,
                     help="no training: load a model.pt saved with --save-model (on any "
                          "machine) and make features.png and top_patches.png from it")
    p.add_argument("--benchmark", action="store_true",
                   help="time one epoch (train + val) through this project's data path and "
                        "through the notebook's (PIL transforms, DataLoader rebuilt), print "
                        "both and their ratio, then exit")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.lecture:  # the lecture's values become the defaults; explicit options still win
        parser.set_defaults(**LECTURE_SETTINGS)
        lecture = parser.parse_args(argv)
        for key, value in LECTURE_SETTINGS.items():
            if getattr(lecture, key) != value:
                print(f"--lecture: your --{key.replace('_', '-')} replaces the lecture's "
                      f"{' '.join(map(str, value)) if isinstance(value, list) else value}")
        args = lecture
        print("--lecture: expect about 10% accuracy (chance) in the first epochs: the "
              "notebook's settings only learned through its gradient bug")
    pairs = [a if isinstance(a, tuple) else (a, None) for a in args.act]  # default: names
    args.act_lr = {name: lr for name, lr in pairs if lr}
    args.act = [name for name, _ in pairs]
    if args.act_lr and len(args.lr) > 1:
        parser.error("give each activation's lr either with --act NAME=LR or with --lr, "
                     "not both")
    swept = [k for k in SWEEPABLE if len(getattr(args, k)) > 1]
    if len(swept) > 1:
        parser.error(f"only one option may take several values; got several for "
                     f"{', '.join('--' + k for k in swept)}: run one sweep at a time")
    for key in SWEEPABLE:
        values = getattr(args, key)
        if len(set(values)) != len(values):
            parser.error(f"--{key}: the values must differ")
    args.sweep = swept[0] if swept else None
    return args


if __name__ == "__main__":
    common.launch(main)

"""3.3.5 A ConvNet for CIFAR-10: the lecture's CNN, trained and measured.

    python 03_cnn_train.py                      # default recipe, 40 epochs
    python 03_cnn_train.py --epochs 10          # a shorter run
    python 03_cnn_train.py --lr 0.1 0.03 0.01   # the lecture's exp1_lr: one run per lr
    python 03_cnn_train.py --act relu tanh      # one run per activation, compared
    python 03_cnn_train.py --predict cat.jpg    # your newest full run's CNN on your picture

Everything a run makes goes to a new folder runs/<exp-name>/ (see README).
"""
import argparse
import contextlib
import glob
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


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
    if args.predict is not None:
        return predict(args)
    device, precision = common.start(args)
    partition = common.load_data(args)
    out, tag = common.out_root(args.out_dir, partition), common.data_tag(partition["kind"])
    print(f"device: {device}, precision {precision}, data: {partition['kind']}{tag} (train "
          f"{len(partition['train'][1])}, val {len(partition['val'][1])}, test "
          f"{len(partition['test'][1])})")
    if args.sweep:  # one folder for the sweep, one run inside it per value
        out = common.reserve(os.path.join(out, f"{args.exp_name}_{args.sweep}"))
    rows, status = [], 0
    for name, value, settings, run in plan(args, precision):
        net, result, folder, code = common.train_and_save(
            name, lambda: CNN(len(partition["classes"]), args.init, run["act"]), settings, run,
            partition, device, out, args.show)
        save_cnn_figures(net, result, folder, partition, run, args)
        rows.append(dict(run, value=str(value), lr=settings["lr"], result=result))
        status = code or status  # a diverged run is kept in the exit code
        if code in (1, 130):  # out of memory or stopped: no further run
            break
    if args.sweep:
        compare_sweep(rows, args, out, tag)
    return status


# ----------------------------------------------------------------------------- settings, sweeps

# The lecture's own settings; the defaults below differ because the lecture's plain SGD
# at lr=1e-3 only learned through its gradient-accumulation bug (see README).
LECTURE_SETTINGS = dict(optim=["SGD"], lr=[1e-3], momentum=0.0, l2=[1e-5], schedule="none",
                        augment=False, clip_grad=0.0, flip=False, test_batch_size=32,
                        init="pytorch", exp_name="cnn_lecture")
SWEEPABLE = ("lr", "act", "optim", "l2")  # options that may take several values


def plan(args, precision):
    """[(run name, swept value, experiment's settings, the rest of the run)], one per value."""
    runs = []
    for value in getattr(args, args.sweep) if args.sweep else [None]:
        pick = {k: getattr(args, k)[0] for k in SWEEPABLE}
        if args.sweep:
            pick[args.sweep] = value
        settings = dict(optim=pick["optim"], lr=pick["lr"], l2=pick["l2"], epochs=args.epochs,
                        momentum=args.momentum, schedule=args.schedule,
                        clip_grad=args.clip_grad, flip=args.flip)
        run = dict(model="CNN", act=pick["act"], init=args.init, precision=precision,
                   seed=args.seed, augment=args.augment, train_batch_size=args.train_batch_size,
                   test_batch_size=args.test_batch_size)
        name = f"{args.sweep}{value:g}" if isinstance(value, float) else str(value)
        runs.append((name if args.sweep else args.exp_name, value, settings, run))
    return runs


def compare_sweep(rows, args, out, tag):
    """The sweep's table, its figure and its summary, in the sweep's folder."""
    for r in rows:
        errors = [100 - a for a in r["result"]["train_accs"]]
        r.update(best_val=r["result"]["val_acc"], test=r["result"]["test_acc"],
                 last_train_error=errors[-1] if errors else None,
                 epochs_to_25=next((e for e, v in enumerate(errors, 1) if v < 25), None))
    common.print_table(rows, [(args.sweep, "value", "s"), ("lr", "lr", "g"),
                              ("best val", "best_val", ".2f"), ("test", "test", ".2f"),
                              ("last train error", "last_train_error", ".2f"),
                              ("epochs to train error < 25%", "epochs_to_25", "d")], tag)
    if args.sweep == "act":
        print("Under this CNN's Glorot/He init tanh is not slow; AlexNet's 6x faster ReLU is "
              "about its tiny init:\n  python 04_case_studies.py --claim relu shows both")
    fig = common.plot_curves(
        [("training error (%)", {r["value"]: [100 - a for a in r["result"]["train_accs"]]
                                 for r in rows}),
         ("val accuracy (%)", {r["value"]: r["result"]["val_accs"] for r in rows})],
        f"{os.path.basename(out)}: one run per {args.sweep}, "
        f"{common.epochs_text(args.epochs)}{tag}")
    common.save_figure(fig, os.path.join(out, f"{args.sweep}.png"), args.show)
    common.save_json([{k: v for k, v in r.items() if k != "result"} for r in rows],
                     os.path.join(out, "summary.json"))
    print(f"sweep figure and summary: {out}/{args.sweep}.png, summary.json")


# ---------------------------------------------------------------------- 3.3.5 what each layer sees
# The slide (after Zeiler and Fergus 2014): shallow layers respond to lines and colours,
# deep layers to larger, more complex parts. Three figures show it for the trained CNN.

SEEN_LAYERS = ("conv1_2", "conv2_2", "conv3_2")  # the last conv of each stage


def save_cnn_figures(net, result, folder, partition, run, args):
    """A run's own files beside its curves: model.pt, confusion.png, mistakes.png,
    filters.png, features.png, top_patches.png."""
    tag, name = common.data_tag(partition["kind"]), os.path.basename(folder)
    state = {k: v.cpu().contiguous() for k, v in net.state_dict().items()}  # loads anywhere
    common.write_atomic(os.path.join(folder, "model.pt"), lambda f: torch.save(dict(
        state_dict=state, act=run["act"], init=run["init"], num_classes=len(partition["classes"]),
        classes=partition["classes"], data=partition["kind"], mean=common.MEAN, std=common.STD,
        test_acc=result["test_acc"], flip=args.flip, status=result["status"], limit=args.limit),
        f), mode="wb")
    dtype, (x, y) = common.AMP_DTYPES[run["precision"]], partition["test"]
    if result["test_acc"] is not None:  # a run stopped before its test makes no test figure
        common.save_figure(plot_confusion(result["test_confusion"], partition["classes"],
                                          f"{name}: confusion matrix (test){tag}"),
                           os.path.join(folder, "confusion.png"), args.show)
        found, wrong = top_mistakes(net, x, y, args.flip, dtype)
        common.save_figure(plot_mistakes(x, y, found, partition["classes"], f"{name}: the "
                                         f"{len(found)} test images it got wrong most surely "
                                         f"({wrong} of {len(y)} wrong){tag}"),
                           os.path.join(folder, "mistakes.png"), args.show)
    common.set_seed(run["seed"])  # the same seed rebuilds the weights the run started from
    start = CNN(len(partition["classes"]), args.init, run["act"]).conv1_1.weight
    common.save_figure(plot_filters(net.conv1_1.weight, start, f"{name}: conv1_1 filters after "
                                    f"{common.epochs_text(len(result['train_accs']))}{tag}"),
                       os.path.join(folder, "filters.png"), args.show)
    if result["train_losses"] and all(torch.isfinite(p).all() for p in net.parameters()):
        maps = stage_maps(net, common.normalize(x[:1])[0], dtype)
        common.save_figure(plot_features(x[0], maps, f"{name}: test image 0 through the "
                                         f"three stages{tag}"),
                           os.path.join(folder, "features.png"), args.show)
        val = common.DeviceLoader(*partition["val"], args.test_batch_size, net.fc.weight.device)
        responses = strongest_responses(net, val, amp_dtype=dtype)
        common.save_figure(plot_top_patches(net, responses, partition["val"][0], name + tag),
                           os.path.join(folder, "top_patches.png"), args.show)
    print(f"model and figures: {folder}/")


def plot_confusion(matrix, classes, title="confusion matrix (test)"):
    """Test images per (true, predicted) class; the diagonal holds the correct ones."""
    fig, ax = common.subplots(figsize=(6.5, 5.5))
    matrix = torch.as_tensor(matrix)
    im = ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i, row in enumerate(matrix.tolist()):  # the count in each cell, white on dark blue
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value > matrix.max().item() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="test images")
    return fig


def top_mistakes(net, images, labels, flip=False, amp_dtype=None, k=16):
    """The k wrongly classified images with the highest softmax probability, as (index,
    predicted class, probability), and how many images were wrong in all."""
    device = next(net.parameters()).device
    probs = [logits.softmax(1).cpu() for logits, _ in common.eval_logits(  # as test() sees
        net, common.DeviceLoader(images, labels, 500, device), device, amp_dtype, flip)]
    confidence, predicted = torch.cat(probs).max(1)
    wrong = (predicted != labels).nonzero().flatten()
    top = wrong[confidence[wrong].argsort(descending=True)[:k]]
    return [(int(i), int(predicted[i]), float(confidence[i])) for i in top], len(wrong)


def plot_mistakes(images, labels, found, classes, title=""):
    """Each mistake: the image, its true class, the predicted class and the probability."""
    fig, axes = common.subplots(2, 8, figsize=(12, 4), layout=None, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.82, wspace=0.05, hspace=0.35)
    for ax, (i, predicted, p) in zip(axes.flat, found):
        ax.imshow(images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"true {classes[labels[i]]}\nsaid {classes[predicted]} {p:.0%}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_filters(weight, start, title=""):
    """The 16 learned 3x3x3 filters of the first layer on one shared scale: the RGB
    filter (grey = 0), then its red, green and blue weights (blue < 0 < red), and how far
    they moved from the random weights the run started from."""
    w = weight.detach().float().cpu()                                  # (16, 3, 3, 3)
    fig, axes = common.subplots(2, 2, figsize=(8, 3.6))
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
    if not torch.isfinite(w).all():
        fig.text(0.5, 0.45, "the weights are NaN or infinite: the run diverged",
                 ha="center", va="center")
        fig.suptitle(title)
        return fig
    moved = ((w - start.detach().float().cpu()).abs().mean() / start.abs().mean()).item()
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
    fig.suptitle(f"{title}: the weights moved {moved:.0%} from their random start\nan edge "
                 f"detector shows a red/blue split, a colour detector one channel unlike the "
                 f"others", fontsize=9)
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
    fig, axes = common.subplots(len(responses), 8, figsize=(13, 5.4), layout=None,
                                squeeze=False)
    fig.subplots_adjust(left=0.09, right=0.99, bottom=0.02, top=0.86, wspace=0.1, hspace=0.3)
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
    fig, axes = common.subplots(len(maps) + 1, 1, figsize=(9, 7.5))
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


# ----------------------------------------------------------------------------- your own picture

def predict(args):
    """--predict: the trained CNN of a run (--run's, else the best of find_runs) on pictures
    prepared as 01 prepares --image; prints the top 3 classes, saves predict_<name>.png."""
    data = "synthetic" if args.data == "synthetic" else "cifar10"
    runs = find_runs(args.out_dir, data)
    if args.run:
        path = os.path.join(args.run, "model.pt")
        if not os.path.isfile(path):
            raise common.UsageError(f"--run {args.run}: no model.pt there; give a folder of a "
                                    f"03_cnn_train.py run")
        rank, folder, (net, saved) = None, args.run, load_model(path)
    elif runs:
        rank, folder, net, saved = max(runs, key=lambda run: run[0])
    else:
        raise common.UsageError(f"no trained model under {args.out_dir}/: train one first "
                                f"(python 03_cnn_train.py --epochs 10), or give --run FOLDER")
    tag, classes, acc = common.data_tag(saved["data"]), saved["classes"], saved["test_acc"]
    name, limit = "CIFAR-10" if data == "cifar10" else "synthetic", saved.get("limit")
    why = "given by --run" if rank is None else f"the newest run that completed on all {name} " \
        "training images" if all(rank[:3]) else f"no run here completed on all {name} training " \
        "images: the nearest"
    tested = f"test acc {acc}%" if acc is not None else \
        f"not tested: run {saved.get('status', 'stopped early')}"  # older files: no status
    limit = f" --limit {limit}" if limit else ""
    print(f"model: {os.path.join(folder, 'model.pt')}, {why} (trained on {saved['data']}{limit}, "
          f"{tested}){tag}")
    best = max(((s["test_acc"], f) for r, f, _, s in runs if r[0] and s["test_acc"] is not None),
               default=(0, None))
    if acc is None or acc < 50:  # the lecture's CNN reaches ~80% in 40 epochs
        weak = "untested" if acc is None else f"weak (chance is {100 / len(classes):g}%)"
        print(f"warning: this net is {weak}; " + (f"{best[1]} has test acc {best[0]}%: "
                                                   f"--run {best[1]}" if best[0] > (acc or 0)
                                                   else "train it longer"))
    if saved["data"] == "synthetic":
        print("[SYNTHETIC DATA] this net learned 10 random patterns, not CIFAR-10: it has "
              "never seen a car, a cat or a person")
    for picture in args.predict or [None]:
        array, source = common.load_image(picture, args.data, args.data_dir,
                                          not args.no_download, split="test")
        # the picture at 256x256 for the figure; a CIFAR-10 car is 32x32 as it is
        photo = array if source.startswith("CIFAR-10") else common.load_image(
            picture, args.data, args.data_dir, not args.no_download, 256)[0]
        with torch.no_grad():
            probs = net.eval()(common.to_tensor(array)[None]).softmax(1)[0]
        top = ", ".join(f"{classes[i]} {100 * p:.1f}%" for p, i in zip(*probs.topk(3)))
        print(f"{source}: {top}{tag}")
        print(f"  the net knows only these {len(classes)} classes, so any picture gets one; "
              f"the % is its confidence, not a measured chance of being right")
        name = os.path.splitext(os.path.basename(picture))[0] if picture else "default"
        common.save_figure(plot_prediction(photo, array, probs, classes, f"{source}{tag}"),
                           os.path.join(folder, f"predict_{name}.png"), args.show)
    print(f"saved in {folder}/")
    return 0


def load_model(path):
    """(net, saved dict) from a run's model.pt; one line (UsageError) when the file is text,
    empty, cut short, or another net's or program's."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = CNN(saved["num_classes"], "pytorch", saved["act"])
        net.load_state_dict(saved["state_dict"])
        if not {"data", "classes", "test_acc"} <= set(saved):
            raise KeyError("no data, classes or test_acc")
        return net, saved
    except Exception as err:
        raise common.UsageError(f"{path} is not a model.pt of this CNN, or is damaged "
                                f"({common.short_error(err)}); train again (python "
                                f"03_cnn_train.py --epochs 10) or give --run FOLDER") from None


def find_runs(out_dir, data):
    """(rank, folder, net, saved) of each run under out_dir whose model.pt load_model reads.
    The highest rank is what a student means by "my trained CNN": the newest run on `data`
    (CIFAR-10 or synthetic) that completed on all its images (no --limit), else the nearest."""
    runs = []
    for path in glob.glob(os.path.join(glob.escape(out_dir), "**", "model.pt"), recursive=True):
        with contextlib.suppress(common.UsageError):  # a damaged file is no candidate
            net, saved = load_model(path)
            runs.append(((saved["data"] == data, saved.get("status", "completed") == "completed",
                          saved.get("limit") is None, os.path.getmtime(path)),
                         os.path.dirname(path), net, saved))
    return runs


def plot_prediction(photo, array, probs, classes, title=""):
    """The picture, the 32x32 image the net sees, the softmax probability of every class."""
    fig, axes = common.subplots(1, 3, figsize=(11, 3.6), width_ratios=(1, 1, 1.4))
    for ax, image, text in ((axes[0], photo, "the picture, cropped square"),
                            (axes[1], array, f"what the net sees: {array.shape[0]}x"
                                             f"{array.shape[1]}")):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(text, fontsize=9)
        ax.axis("off")
    axes[2].barh(classes, 100 * probs.numpy())
    axes[2].invert_yaxis()
    axes[2].set(xlim=(0, 100), xlabel="softmax probability (%): the net's confidence")
    fig.suptitle(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------- command line

def build_parser():
    p = common.Parser(description="Train the lecture's CNN (3.3.5) on CIFAR-10; curves, "
                      "results and figures go to a new folder OUT_DIR/EXP_NAME. One of --lr, "
                      "--act, --optim, --l2 may take several values: one run per value, "
                      "then a table and a figure compare them.")
    p.add_argument("--optim", choices=("SGD", "RMSprop", "Adam"), nargs="+", default=["SGD"],
                   help="optimizer (SGD with Nesterov momentum when --momentum > 0)")
    p.add_argument("--momentum", type=common.non_negative_float, default=0.9,
                   help="momentum for SGD and RMSprop")
    p.add_argument("--lr", type=common.positive_float, nargs="+", default=[0.05],
                   help="learning rate (the schedule's peak)")
    p.add_argument("--act", choices=tuple(CNN.ACTIVATIONS), nargs="+", default=["relu"],
                   help="activation after every conv (the notebook's args.act)")
    p.add_argument("--l2", type=common.non_negative_float, nargs="+", default=[5e-4],
                   help="L2 penalty (weight decay)")
    p.add_argument("--schedule", choices=("onecycle", "none"), default="onecycle",
                   help="onecycle: 20%% warm-up, then linear decay to 0; none: constant")
    p.add_argument("--clip-grad", type=common.non_negative_float, default=5.0,
                   help="clip the gradient norm to this before each step; 0: off")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="validate and test each image and its mirror image, logits averaged")
    p.add_argument("--init", choices=("auto", "pytorch"), default="auto",
                   help="auto: He (relu) or Glorot (tanh, sigmoid); pytorch: the library's, "
                        "as the lecture")
    p.add_argument("--epochs", type=common.positive_int, default=40, help="training epochs")
    p.add_argument("--train-batch-size", type=common.positive_int, default=128,
                   help="images per training step")
    p.add_argument("--test-batch-size", type=common.positive_int, default=500,
                   help="batch size for val and test (speed only; the lecture used 32)")
    common.add_training_args(p)
    p.add_argument("--lecture", action="store_true",
                   help="start from the notebook's settings (README); an option you also "
                        "give wins. Expect chance (10%%) in the first epochs")
    common.add_data_args(p)
    out = common.add_output_args(p, default_name="cnn")
    out.add_argument("--predict", nargs="*", metavar="PICTURE",
                     help="train nothing: the CNN of --run, else of the newest run completed "
                          "on all training images, on these pictures (none: the first test car)")
    out.add_argument("--run", metavar="FOLDER", help="--predict: the run folder to load")
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
    swept = [k for k in SWEEPABLE if len(getattr(args, k)) > 1]
    if len(swept) > 1:
        parser.error(f"only one option may take several values, got {', '.join(swept)}")
    if any(len(set(getattr(args, k))) != len(getattr(args, k)) for k in SWEEPABLE):
        parser.error("the values of a sweep must differ")
    args.sweep = swept[0] if swept else None
    return args


if __name__ == "__main__":
    common.launch(main)

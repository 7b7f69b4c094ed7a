"""3.4 Case studies: LeNet-5, AlexNet, VGG, GoogLeNet, ResNet, DenseNet and SE-Net, sized
for 32x32 CIFAR-10, compared side by side and each trainable with the shared loop.

    python 04_case_studies.py                          # the comparison table + design rules
    python 04_case_studies.py --train lenet resnet20   # train some under one budget
    python 04_case_studies.py --train all --epochs 30  # all of them
    python 04_case_studies.py --claim degradation      # a slide's claim, 2 seeds, a verdict
    python 04_case_studies.py --claim relu             # AlexNet's Figure 1 on its own net

Outputs go to runs/04_case_studies/ (see README).
"""
import common  # first: it turns a Ctrl-C while torch loads into one line

import argparse
import functools
import math
import os
import re
import sys
import time
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F



# ============================================================================ building blocks

def he_init(model):
    """He et al. 2015 initialisation, N(0, 2 / fan_in), for ReLU nets without batch norm
    (PyTorch's default is too small for a deep ReLU stack; see README)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def conv_bn(c_in, c_out, k, stride=1):
    """Conv -> BatchNorm -> ReLU, 'same' padding."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


# ============================================================================ 3.4.1 LeNet-5

class LeNet5(nn.Module):
    """LeNet-5. LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to
    document recognition", Proc. IEEE 1998. Two 5x5 conv + subsampling stages, then three
    fully connected layers; tanh and average pooling as in the paper, 3 input channels
    for CIFAR-10 (the paper read 32x32 grey digits)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 6, 5), nn.Tanh(), nn.AvgPool2d(2))
        self.c3 = nn.Sequential(nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2))
        self.f5 = nn.Sequential(nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Tanh(),
                                nn.Linear(120, 84), nn.Tanh())
        self.out = nn.Linear(84, num_classes)

    def forward(self, x):        # (B, 3, 32, 32)
        x = self.c1(x)           # (B, 6, 14, 14)
        x = self.c3(x)           # (B, 16, 5, 5)
        x = self.f5(x)           # (B, 84)
        return self.out(x)       # (B, 10)


# ============================================================================ 3.4.2 AlexNet

class AlexNet(nn.Module):
    """AlexNet. Krizhevsky, Sutskever, Hinton, "ImageNet classification with deep
    convolutional neural networks", NeurIPS 2012. Five conv layers with ReLU, max pooling,
    and dropout in the two large fully connected layers. For 32x32 inputs the 11x11
    stride-4 stem becomes 3x3 stride 1 and the FC layers shrink from 4096 to 1024.
    dropout: the drop probability of the two dropout layers (0 removes them in effect)."""

    def __init__(self, num_classes=10, dropout=0.5):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.MaxPool2d(2))
        self.stage3 = nn.Sequential(
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(256 * 4 * 4, 1024),
            nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(1024, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes))
        he_init(self)

    def forward(self, x):            # (B, 3, 32, 32)
        x = self.stage1(x)           # (B, 64, 16, 16)
        x = self.stage2(x)           # (B, 192, 8, 8)
        x = self.stage3(x)           # (B, 256, 4, 4)
        return self.classifier(x)    # (B, 10)


# ============================================================================ 3.4.3 VGG

VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    """VGG-11 (configuration A). Simonyan, Zisserman, "Very deep convolutional networks for
    large-scale image recognition", ICLR 2015. Only 3x3 'same' convs; each max pool halves
    the map and the next convs double the channels (up to 512). batch_norm=True adds
    BatchNorm after every conv (Ioffe, Szegedy 2015). For 32x32 inputs the five pools end
    at 1x1x512, so the classifier is one linear layer."""

    def __init__(self, num_classes=10, cfg=VGG11, batch_norm=False):
        super().__init__()
        stages, layers, c_in = [], [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                stages.append(nn.Sequential(*layers))
                layers = []
            else:
                layers.append(nn.Conv2d(c_in, v, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(v))
                layers.append(nn.ReLU(inplace=True))
                c_in = v
        self.features = nn.Sequential(OrderedDict(
            (f"stage{i}", stage) for i, stage in enumerate(stages, 1)))
        self.classifier = nn.Linear(c_in, num_classes)
        if not batch_norm:
            he_init(self)

    def forward(self, x):                  # (B, 3, 32, 32)
        x = self.features(x)               # (B, 512, 1, 1) after five halvings
        return self.classifier(torch.flatten(x, 1))   # (B, 10)


# ============================================================================ 3.4.5 GoogLeNet

class Inception(nn.Module):
    """The inception module of GoogLeNet (Szegedy et al., "Going deeper with convolutions",
    CVPR 2015): parallel 1x1, 3x3, 5x5 convs and a 3x3 max pool, concatenated along the
    channels. The 1x1 convs before the 3x3 and 5x5 (and after the pool) thin the channels
    first: the bottleneck. reduce=False drops them (the naive module)."""

    def __init__(self, c_in, c1, c3_red, c3, c5_red, c5, pool_proj, reduce=True):
        super().__init__()
        self.b1 = conv_bn(c_in, c1, 1)
        if reduce:
            self.b3 = nn.Sequential(conv_bn(c_in, c3_red, 1), conv_bn(c3_red, c3, 3))
            self.b5 = nn.Sequential(conv_bn(c_in, c5_red, 1), conv_bn(c5_red, c5, 5))
            self.bp = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), conv_bn(c_in, pool_proj, 1))
        else:
            self.b3 = conv_bn(c_in, c3, 3)
            self.b5 = conv_bn(c_in, c5, 5)
            self.bp = nn.MaxPool2d(3, 1, padding=1)          # keeps all c_in channels
        self.out_channels = c1 + c3 + c5 + (pool_proj if reduce else c_in)

    def forward(self, x):                                     # (B, c_in, H, W)
        branches = [self.b1(x), self.b3(x), self.b5(x), self.bp(x)]
        return torch.cat(branches, 1)                         # (B, out_channels, H, W)


class AuxClassifier(nn.Module):
    """GoogLeNet's auxiliary classifier: pool, 1x1 conv, FC, dropout, FC. Its loss (weight
    0.3) adds gradient to the middle of the net during training; dropped at test time."""

    def __init__(self, c_in, num_classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), conv_bn(c_in, 64, 1), nn.Flatten(),
                                 nn.Linear(64 * 4 * 4, 256), nn.ReLU(inplace=True),
                                 nn.Dropout(0.7), nn.Linear(256, num_classes))

    def forward(self, x):
        return self.net(x)


class GoogLeNet(nn.Module):
    """A small GoogLeNet for 32x32 inputs: a 3x3 stem, then inception stages 3 (32x32),
    4 (16x16) and 5 (8x8) with about half the paper's channels, global average pooling and
    one linear layer. Every conv has BatchNorm (Inception-v2 style), which the lecture notes
    made the auxiliary classifiers unnecessary; aux=True adds one after stage 4 anyway.
    In training mode with aux=True, forward returns (logits, aux_logits)."""

    def __init__(self, num_classes=10, aux=False):
        super().__init__()
        self.stem = conv_bn(3, 64, 3)
        self.stage3 = nn.Sequential(Inception(64, 32, 48, 64, 8, 16, 16),       # -> 128
                                    Inception(128, 64, 64, 96, 16, 48, 32),     # -> 240
                                    nn.MaxPool2d(2))
        self.stage4 = nn.Sequential(Inception(240, 96, 48, 104, 8, 24, 32),     # -> 256
                                    Inception(256, 80, 56, 112, 12, 32, 32),    # -> 256
                                    nn.MaxPool2d(2))
        self.stage5 = Inception(256, 128, 80, 160, 16, 64, 64)                  # -> 416
        self.aux = AuxClassifier(256, num_classes) if aux else None
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(416, num_classes))

    def forward(self, x):                   # (B, 3, 32, 32)
        x = self.stem(x)                    # (B, 64, 32, 32)
        x = self.stage3(x)                  # (B, 240, 16, 16)
        x = self.stage4(x)                  # (B, 256, 8, 8)
        aux = self.aux(x) if self.aux is not None and self.training else None
        x = self.stage5(x)                  # (B, 416, 8, 8)
        logits = self.head(x)               # (B, 10)
        return (logits, aux) if aux is not None else logits


# ============================================================================ 3.4.6 ResNet

class BasicBlock(nn.Module):
    """The residual block of He, Zhang, Ren, Sun, "Deep residual learning for image
    recognition", CVPR 2016: out = ReLU(F(x) + x), F = conv-BN-ReLU-conv-BN. When the block
    halves the map and doubles the channels, the shortcut subsamples x and pads the new
    channels with zeros (the paper's option A for CIFAR: no extra parameters).
    residual=False gives the plain block of the same depth (no shortcut)."""

    def __init__(self, c_in, c_out, stride=1, residual=True):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.residual = residual
        self.stride, self.pad = stride, c_out - c_in

    def shortcut(self, x):
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]                     # (B, c_in, H/2, W/2)
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))  # zero channels
        return x

    def branch(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):                                     # (B, c_in, H, W)
        out = self.branch(x)                                  # (B, c_out, H/s, W/s)
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class SEBlock(nn.Module):
    """Squeeze-and-Excitation. Hu, Shen, Sun, "Squeeze-and-excitation networks", CVPR 2018.
    Squeeze: global average pool to one number per channel; excite: FC -> ReLU -> FC ->
    sigmoid gives a scale in (0, 1) per channel, which multiplies the feature map."""

    def __init__(self, channels, reduction=16, min_hidden=4):
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def scales(self, x):                                   # (B, C, H, W)
        s = x.mean(dim=(2, 3))                             # (B, C) squeeze
        return torch.sigmoid(self.fc2(F.relu(self.fc1(s))))  # (B, C) in (0, 1)

    def forward(self, x):
        return x * self.scales(x)[:, :, None, None]


class SEBasicBlock(BasicBlock):
    """A residual block whose residual branch is recalibrated by an SE block before the
    addition (the SE-ResNet module of Hu et al.)."""

    def __init__(self, c_in, c_out, stride=1, residual=True):
        super().__init__(c_in, c_out, stride, residual)
        self.se = SEBlock(c_out)

    def branch(self, x):
        return self.se(super().branch(x))


class ResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016 (section 4.2): a 3x3 conv with 16 channels, then
    three stages of n blocks at 32x32x16, 16x16x32 and 8x8x64, global average pooling and
    a linear layer: 6n + 2 layers (ResNet-20: n = 3, ResNet-56: n = 9)."""

    def __init__(self, depth=20, num_classes=10, block=BasicBlock, residual=True):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        stages, c_in = [], 16
        for i, c in enumerate((16, 32, 64)):
            blocks = [block(c_in, c, 2 if i > 0 else 1, residual)]
            blocks += [block(c, c, 1, residual) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c
        self.stage1, self.stage2, self.stage3 = stages
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):            # (B, 3, 32, 32)
        x = self.stem(x)             # (B, 16, 32, 32)
        x = self.stage1(x)           # (B, 16, 32, 32)
        x = self.stage2(x)           # (B, 32, 16, 16)
        x = self.stage3(x)           # (B, 64, 8, 8)
        return self.head(x)          # (B, 10)


# ============================================================================ 3.4.7 DenseNet

class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-1x1 conv (4k channels, the bottleneck) then BN-ReLU-3x3
    conv (k channels); its k new channels are concatenated to its input."""

    def __init__(self, c_in, growth):
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
            nn.Conv2d(c_in, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):                                  # (B, C, H, W)
        return torch.cat([x, self.net(x)], 1)              # (B, C + k, H, W)


class DenseBlock(nn.Sequential):
    """L dense layers: every layer sees all earlier feature maps; c_in + L * k channels out."""

    def __init__(self, c_in, layers, growth):
        super().__init__(*[DenseLayer(c_in + i * growth, growth) for i in range(layers)])
        self.out_channels = c_in + layers * growth


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv that compresses the channels (theta = 0.5), then 2x2 average pool."""

    def __init__(self, c_in, c_out):
        super().__init__(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
                         nn.Conv2d(c_in, c_out, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    """DenseNet-BC. Huang, Liu, van der Maaten, Weinberger, "Densely connected convolutional
    networks", CVPR 2017. Three dense blocks at 32x32, 16x16 and 8x8 with growth rate k,
    bottleneck layers and compression 0.5; depth L = 6n + 4 (DenseNet-BC-100: n = 16)."""

    def __init__(self, depth=100, growth=12, num_classes=10):
        super().__init__()
        n = (depth - 4) // 6
        c = 2 * growth
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.block1 = DenseBlock(c, n, growth)
        c = self.block1.out_channels
        self.trans1 = Transition(c, c // 2)
        self.block2 = DenseBlock(c // 2, n, growth)
        c = self.block2.out_channels
        self.trans2 = Transition(c, c // 2)
        self.block3 = DenseBlock(c // 2, n, growth)
        c = self.block3.out_channels
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x):                  # (B, 3, 32, 32)
        x = self.stem(x)                   # (B, 24, 32, 32)
        x = self.trans1(self.block1(x))    # (B, 108, 16, 16) for BC-100
        x = self.trans2(self.block2(x))    # (B, 150, 8, 8)
        x = self.block3(x)                 # (B, 342, 8, 8)
        return self.head(x)                # (B, 10)


# ============================================================================ the models of the table

# name -> (constructor, peak learning rate, weight decay) for SGD with Nesterov momentum 0.9
# on a one-cycle schedule. ResNet and DenseNet use their papers' CIFAR settings; the VGGs
# and AlexNet need 0.02 (see README).
MODELS = {
    "lenet": (LeNet5, 0.05, 5e-4),
    "alexnet": (AlexNet, 0.02, 5e-4),
    "vgg": (VGG, 0.02, 5e-4),
    "vgg_bn": (lambda: VGG(batch_norm=True), 0.02, 5e-4),
    "googlenet": (GoogLeNet, 0.1, 5e-4),
    "resnet20": (lambda: ResNet(20), 0.1, 1e-4),
    "resnet56": (lambda: ResNet(56), 0.1, 1e-4),
    "densenet": (lambda: DenseNet(100, 12), 0.1, 1e-4),
    "seresnet20": (lambda: ResNet(20, block=SEBasicBlock), 0.1, 1e-4),
    "vgg3x3": (lambda: SmallVGG(3), 0.1, 5e-4),   # SmallVGG: the 3x3 claim's pair, below
    "vgg5x5": (lambda: SmallVGG(5), 0.1, 5e-4),
}
MAX_DEPTH = 1202  # the deepest CIFAR ResNet of He et al. 2016; deeper cannot be built here


def model_spec(name):
    """(constructor, lr, weight decay) for a registered name, or for resnet<depth>,
    seresnet<depth> or plain<depth> (the ResNet without shortcuts) at any depth 6n + 2
    up to MAX_DEPTH; None if unknown."""
    if name in MODELS:
        return MODELS[name]
    match = re.fullmatch(r"(seresnet|resnet|plain)(\d+)", name)
    if match and 8 <= int(match.group(2)) <= MAX_DEPTH and (int(match.group(2)) - 2) % 6 == 0:
        kind, depth = match.group(1), int(match.group(2))
        block = SEBasicBlock if kind == "seresnet" else BasicBlock
        return (lambda: ResNet(depth, block=block, residual=kind != "plain"), 0.1, 1e-4)
    return None


def build(name):
    return model_spec(name)[0]()


def image_macs(model):
    """Multiply-adds for one 32x32 RGB image."""
    return common.count_macs(model, torch.zeros(1, 3, 32, 32))


# ============================================================================ 3.4 the comparison

def stage_shapes(model, size=32):
    """Output shape of each stage, in the order forward calls them: the top-level children,
    with a Sequential of Sequentials (VGG's features) or a ModuleList opened up."""
    stages, shapes = [], []
    for name, child in model.named_children():
        parts = list(child.named_children())
        if isinstance(child, nn.ModuleList) or (isinstance(child, nn.Sequential) and parts and
                                                all(isinstance(c, nn.Sequential) for _, c in parts)):
            stages += [(f"{name}.{n}" if isinstance(child, nn.ModuleList) else n, c)
                       for n, c in parts]
        else:
            stages.append((name, child))
    hooks = [child.register_forward_hook(
        lambda m, i, o, name=name: shapes.append((name, tuple(o.shape[1:]))))
        for name, child in stages]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return shapes


def throughput(model, device, precision="fp32", batch=32, steps=3):
    """Training images per second (forward + backward + SGD step) as training runs them:
    the same precision and memory layout, after one warm-up step, the device synchronised."""
    model = common.to_device(model, device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, 32, 32, device=device)
    if common.channels_last_helps(device):
        x = x.contiguous(memory_format=torch.channels_last)
    batches = [(x, torch.randint(0, 10, (batch,), device=device))]
    dtype = common.AMP_DTYPES[precision]
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")
    common.train(model, batches, opt, nn.CrossEntropyLoss(), device, amp_dtype=dtype,
                 scaler=scaler)
    common.synchronize(device)
    start = time.perf_counter()
    common.train(model, batches * steps, opt, nn.CrossEntropyLoss(), device, amp_dtype=dtype,
                 scaler=scaler)
    common.synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def compare(names, device, precision="fp32", rows=None):
    """One row per model: parameters, multiply-adds, stage shapes, training throughput.
    Rows are appended to `rows` as they are measured (kept if interrupted)."""
    rows = [] if rows is None else rows
    print(f"{'model':11s} {'params':>11s} {'mult-adds':>10s} {'train':>10s}   "
          f"output shape after each stage\n{'':11s} {'':>11s} {'(millions)':>10s} "
          f"{'images/s':>10s}")
    for name in names:
        torch.manual_seed(0)
        model = build(name)
        row = {"model": name, "params": common.count_params(model), "macs": image_macs(model),
               "stages": stage_shapes(model)}
        row["train_images_per_s"] = round(throughput(model, device, precision), 1)
        rows.append(row)
        print(f"{name:11s} {row['params']:>11,d} {row['macs'] / 1e6:>10.1f} "
              f"{row['train_images_per_s']:>10.0f}   " +
              " -> ".join(f"{s}{list(shape)}" for s, shape in row["stages"]))
    return rows


def dot_size(rate, top):
    return 30 + 400 * (rate / top) ** 0.5


def plot_compare(rows, title):
    """Parameters against multiply-adds, one colour per model, dot size = training speed."""
    fig, ax = common.plt.subplots(figsize=(7.5, 5))
    rates = [r["train_images_per_s"] for r in rows]
    top = max(rates)
    colours = common.plt.get_cmap("tab20").colors
    labels = {}  # models at (nearly) the same point share one label
    for i, r in enumerate(rows):
        x, y = r["macs"] / 1e6, r["params"] / 1e6
        ax.scatter(x, y, s=dot_size(r["train_images_per_s"], top), alpha=0.7,
                   color=colours[i % 20], edgecolor="black", linewidth=0.5, label=r["model"])
        key = (round(math.log10(x), 1), round(math.log10(y), 1))
        labels.setdefault(key, [x, y, []])[2].append(r["model"])
    for x, y, names in labels.values():
        ax.annotate(", ".join(names), (x, y), fontsize=7, xytext=(6, 4),
                    textcoords="offset points")
    models = ax.legend(title="model (colour)", loc="upper left", bbox_to_anchor=(1.01, 1),
                       fontsize=7)
    for handle in models.legend_handles:
        handle.set_sizes([40])  # the legend shows colours; speed has its own key
    ax.add_artist(models)
    ax.margins(x=0.2, y=0.15)
    keys = [ax.scatter([], [], s=dot_size(rate, top), color="gray", alpha=0.5,
                       label=f"{rate:,.0f} images/s")
            for rate in sorted({top, (top * min(rates)) ** 0.5, min(rates)}, reverse=True)]
    ax.legend(handles=keys, title="dot size: training speed", loc="lower left",
              bbox_to_anchor=(1.01, 0), labelspacing=1.3, borderpad=0.8, fontsize=7)
    ax.set(xscale="log", yscale="log", xlabel="multiply-adds per image (millions)",
           ylabel="parameters (millions)", title=title)
    ax.grid(alpha=0.3, which="both")
    return fig


def plot_accuracy_vs_cost(table, title):
    """The classic chart: test accuracy of each trained model against its mult-adds."""
    fig, ax = common.plt.subplots(figsize=(6.5, 4.5))
    for r in table:
        if r["test_acc"] is not None:
            ax.scatter(r["macs"] / 1e6, r["test_acc"], s=40)
            ax.annotate(r["model"], (r["macs"] / 1e6, r["test_acc"]), fontsize=8,
                        xytext=(5, 5), textcoords="offset points")
    if not any(r["test_acc"] is not None for r in table):
        ax.text(0.5, 0.5, "no model finished an epoch", transform=ax.transAxes, ha="center")
    ax.set(xscale="log", ylim=(0, 100), xlabel="multiply-adds per image (millions)",
           ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3, which="both")
    return fig


# ============================================================================ design rules

def inception_bottleneck():
    """GoogLeNet's module 3a (28x28x192 input) with and without the 1x1 reductions."""
    cfg = (192, 64, 96, 128, 16, 32, 32)
    x = torch.zeros(1, 192, 28, 28)
    out = {}
    for reduce in (True, False):
        m = Inception(*cfg, reduce=reduce).eval()
        with torch.no_grad():
            channels = m(x).shape[1]
        out[reduce] = {"params": common.count_params(m), "macs": common.count_macs(m, x),
                       "out_channels": channels}
    return out


def first_layer_grad_norm(model, seed=0, batch=32):
    """Norm of the loss gradient reaching the first conv at initialisation."""
    torch.manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    model.train()
    F.cross_entropy(model(x), y).backward()
    return model.stem[0].weight.grad.norm().item()


def design_rules(log=print):
    facts = {}
    common.section("Design rules in numbers")
    inc = inception_bottleneck()
    r, n = inc[True], inc[False]
    log(f"Inception 3a (28x28x192 in): with 1x1 bottlenecks {r['params']:,} params, "
        f"{r['macs'] / 1e6:.0f}M mult-adds, {r['out_channels']} channels out; without: "
        f"{n['params']:,} params, {n['macs'] / 1e6:.0f}M mult-adds, {n['out_channels']} channels")
    log(f"  lesson: thinning the channels with 1x1 convs first cuts the cost "
        f"{n['macs'] / r['macs']:.1f}x, and the output no longer grows by the whole input")
    facts["inception_3a"] = {"with_1x1": r, "without_1x1": n}

    torch.manual_seed(0)
    base, se = common.count_params(ResNet(20)), common.count_params(ResNet(20, block=SEBasicBlock))
    macs = image_macs(ResNet(20)), image_macs(ResNet(20, block=SEBasicBlock))
    log(f"SE block: ResNet-20 {base:,} params, SE-ResNet-20 {se:,} "
        f"(+{se - base:,}, +{100 * (se - base) / base:.1f}%); mult-adds "
        f"+{100 * (macs[1] - macs[0]) / macs[0]:.2f}%")
    log(f"  lesson: a channel-wise gate costs two small FC layers per block: "
        f"{100 * (se - base) / base:.1f}% more parameters and "
        f"{100 * (macs[1] - macs[0]) / macs[0]:.2f}% more multiply-adds")
    facts["se_overhead"] = {"resnet20": base, "seresnet20": se}

    grads = {}
    for depth in (20, 56):
        for residual in (False, True):
            torch.manual_seed(0)
            grads[(depth, residual)] = first_layer_grad_norm(ResNet(depth, residual=residual))
    for depth in (20, 56):
        p, q = grads[(depth, False)], grads[(depth, True)]
        log(f"gradient norm at the first conv, at initialisation, depth {depth}: "
            f"plain {p:.3g}, residual {q:.3g}")
    plain = grads[(56, False)] / grads[(20, False)]
    res = grads[(56, True)] / grads[(20, True)]
    plain_x, res_x = max(plain, 1 / plain), max(res, 1 / res)
    log(f"  lesson: from 20 to 56 layers the gradient reaching the first layer "
        f"{'grows' if plain > 1 else 'shrinks'} {plain_x:.1f}x in the plain net and "
        f"{'grows' if res > 1 else 'shrinks'} {res_x:.1f}x in the residual one" +
        (f": {plain_x / res_x:.0f}x less change, because every shortcut passes the "
         f"gradient back unchanged" if res_x < plain_x else
         ": the shortcuts did not steady it here"))
    facts["first_layer_grad_norm"] = {f"{'residual' if r else 'plain'}{d}": g
                                      for (d, r), g in grads.items()}

    dense = DenseNet(100, 12)
    growth = []
    for i, block in enumerate((dense.block1, dense.block2, dense.block3), 1):
        c_in = block[0].net[0].num_features
        growth.append((c_in, len(block), block.out_channels))
        log(f"DenseNet-BC-100 block {i}: {c_in} channels in + {len(block)} layers x 12 = "
            f"{block.out_channels} out" + (", halved by the transition" if i < 3 else ""))
    log("  lesson: each layer adds only k = 12 new maps and reuses all earlier ones; the "
        "transitions' 0.5 compression keeps the width in check")
    facts["densenet_growth"] = growth
    return facts


# ============================================================================ 3.4 ImageNet chart

# ILSVRC classification winners, top-5 error (%), from the primary sources:
IMAGENET_TOP5 = [
    # year, entry, top-5 error, source
    (2010, "NEC-UIUC", 28.2, "ILSVRC 2010 results page (image-net.org/challenges/LSVRC/2010)"),
    (2011, "XRCE", 25.8, "ILSVRC 2011 results page (image-net.org/challenges/LSVRC/2011)"),
    (2012, "SuperVision (AlexNet)", 16.4, "Krizhevsky et al. 2012, Table 2, '5 CNNs' trained "
                                          "on ILSVRC-2012 data only (15.3% with extra data)"),
    (2013, "Clarifai", 11.7, "ILSVRC 2013 results page; Russakovsky et al. 2015, IJCV, "
                             "Table 7 (ZFNet's own paper: 14.8%)"),
    (2014, "GoogLeNet", 6.67, "Szegedy et al. 2015, Table 2 (VGG second: 7.3%, Simonyan "
                              "and Zisserman 2015, Table 7)"),
    (2015, "ResNet (MSRA)", 3.57, "He et al. 2016, Table 4 (ensemble, test set)"),
    (2016, "Trimps-Soushen", 2.99, "ILSVRC 2016 results page, image-net.org/challenges/LSVRC/2016"),
    (2017, "SENet", 2.25, "Hu et al. 2018, section 6.1 (ILSVRC 2017 winner)"),
]
HUMAN_TOP5 = (5.1, "Russakovsky et al. 2015, IJCV, section 6.4 (one trained annotator)")


def plot_imagenet(title="ILSVRC classification: the winners' top-5 error"):
    fig, ax = common.plt.subplots(figsize=(8.5, 4.5))
    years = [y for y, *_ in IMAGENET_TOP5]
    errors = [e for _, _, e, _ in IMAGENET_TOP5]
    ax.bar(years, errors, color=["#999"] * 2 + ["#3a7"] * (len(years) - 2))
    ax.axhline(HUMAN_TOP5[0], color="crimson", ls="--", zorder=1,
               label=f"human, about {HUMAN_TOP5[0]:g}% (Russakovsky et al. 2015)")
    for year, _, err, _ in IMAGENET_TOP5:  # the value above its bar, on white over the line
        ax.annotate(f"{err:g}%", (year, err), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 3), textcoords="offset points", zorder=3,
                    bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none"))
    ax.set_xticks(years, [f"{y}\n{entry.replace(' (', chr(10) + '(')}"
                          for y, entry, *_ in IMAGENET_TOP5], fontsize=7)
    ax.set(ylabel="top-5 error (%)", ylim=(0, 33), title=title)
    ax.legend(loc="upper right", fontsize=8)
    fig.text(0.01, -0.06, "grey: before CNNs; green: CNN winners. Sources in "
             "04_case_studies.py (IMAGENET_TOP5)", fontsize=7)
    return fig


# ============================================================================ --train

def training_run(name, build_model, lr, l2, args, precision, **changes):
    """One run for common.train_runs under the shared budget of --train and --claim;
    changes replace settings (aux=True, seed, a claim's own recipe)."""
    settings = {"model": name, "optim": "SGD", "momentum": 0.9, "lr": lr, "l2": l2,
                "epochs": args.epochs, "schedule": "onecycle", "precision": precision,
                "train_batch_size": args.batch_size, "test_batch_size": 500,
                "augment": args.augment, "aux": False, "seed": args.seed, "data": args.data,
                "limit": args.limit, **changes}
    return {"name": name, "build": build_model, "settings": settings,
            "row": {"macs": image_macs(build_model())}}


def train_models(names, args, device, precision):
    """--train: the named models, each with its own lr and weight decay (or --lr/--l2)."""
    partition = common.load_data(args)
    tag = common.data_tag(partition["kind"])
    out = os.path.join(args.out_dir, "04_case_studies")
    print(f"device: {device} ({common.device_name(device)}), precision {precision}, data: "
          f"{partition['kind']}, {common.epochs_text(args.epochs)}, batch {args.batch_size}, "
          f"augment {args.augment}, seed {args.seed}")
    runs = []
    for name in names:
        ctor, lr, l2 = model_spec(name)
        aux = name == "googlenet" and args.aux
        runs.append(training_run(name, functools.partial(GoogLeNet, aux=True) if aux else ctor,
                                 args.lr or lr, l2 if args.l2 is None else args.l2, args,
                                 precision, aux=aux))
    rows, status = common.train_runs(runs, partition, device, out, args.show)
    if not rows:
        return status
    print_results(rows)
    table = [{k: v for k, v in r.items() if k not in ("result", "settings")} for r in rows]
    summary = {"data": partition["kind"], "epochs": args.epochs, "models": table,
               **common.environment(device, precision)}
    title = f"{common.epochs_text(args.epochs)}{tag}"
    curves = {r["model"]: r["result"]["val_accs"] for r in rows}
    paths = common.reserve(os.path.join(out, "train_results.json"),
                           also=["val_accuracy.png", "accuracy_vs_cost.png"])
    jobs = [(paths[0], lambda path: common.save_json(summary, path)),
            (paths[1], lambda path: common.save_figure(
                common.plot_curves([("val accuracy (%)", curves)], f"val accuracy, {title}"),
                path, args.show)),
            (paths[2], lambda path: common.save_figure(
                plot_accuracy_vs_cost(table, f"test accuracy vs cost, {title}"), path,
                args.show))]
    return common.save(jobs, out) or status


def print_results(rows):
    common.print_table(rows, [("model", "model", "s"), ("test acc", "test_acc", ".2f"),
                              ("val acc", "val_acc", ".2f"), ("params", "params", ",d"),
                              ("s/epoch", "seconds_per_epoch", ".2f"), ("status", "status", "s")])


# ============================================================================ the slides' claims
# A claim is one or more parts. Each part compares networks by one number, under a rule
# written here before any run: every network trains with several seeds (--seeds), and an
# effect counts only when it beats the spread between those seeds by a fixed margin. A part
# whose networks learned too little to show the effect is inconclusive, never 'holds'.

MARGIN = {"points": 1.0, "epochs": 1.0}  # what an effect must beat the seed spread by
LEARNED = 25.0  # val accuracy (%) a network must pass to count as having learned (chance: 10%)
SAME = 3.0      # points within which two networks count as training alike (the aux claim)


def decide(gain, spread, unit, no_power=None):
    """The rule of every part: 'holds' when the claimed gain beats the seed spread by the
    margin, 'contradicted' when the opposite effect does, else 'inconclusive'.
    Returns (verdict, reason or None)."""
    margin = MARGIN[unit]
    if no_power:
        return "inconclusive", f"no power: {no_power}"
    if gain > spread + margin:
        return "holds", None
    if gain < -(spread + margin):
        return "contradicted", None
    return "inconclusive", (f"within noise: the gain {gain:+.2f} {unit} does not beat the "
                            f"seed spread {spread:.2f} + margin {margin:g}")


def mean(values):
    return sum(values) / len(values)


def spread(*groups):
    """The largest range between seeds among the groups (lists of per-seed values)."""
    return max(max(g) - min(g) for g in groups)


def shown(values, unit, cap=None):
    """Per-seed values for the printout: '5.1%, 6.3%' or '4, >10 epochs'."""
    if unit == "points":
        return ", ".join(f"{v:g}%" for v in values)
    return ", ".join(f">{cap}" if cap is not None and v > cap else f"{v:g}"
                     for v in values) + f" {unit}"


def better(name, rule, values, a, b, unit, lower=True, no_power=None, cap=None):
    """A part 'a beats b' from values = {run: [one number per seed]}; lower=True when a
    smaller number is better (errors, epochs). An epoch count of cap + 1 means 'not
    reached within cap epochs' and counts as more."""
    gain = (mean(values[b]) - mean(values[a])) if lower else (mean(values[a]) - mean(values[b]))
    noise = spread(values[a], values[b])
    verdict, reason = decide(gain, noise, unit, no_power)
    return {"name": name, "rule": rule, "verdict": verdict, "reason": reason,
            "gain": round(gain, 2), "seed_spread": round(noise, 2), "unit": unit,
            "values": {a: values[a], b: values[b]},
            "ours": f"{a} {shown(values[a], unit, cap)}; {b} {shown(values[b], unit, cap)}; "
                    f"gain {gain:+.2f}, seed spread {noise:.2f}"}


def fixed_part(name, rule, ours, true):
    """A part decided by arithmetic, not by training (weights, mult-adds): no seed noise."""
    return {"name": name, "rule": rule, "ours": ours, "reason": None,
            "verdict": "holds" if true else "contradicted"}


def claim_verdict(parts):
    verdicts = [p["verdict"] for p in parts]
    return ("holds" if all(v == "holds" for v in verdicts) else
            "contradicted" if "contradicted" in verdicts else "inconclusive")


def per_seed(rows, key, at=-1):
    """One number per seed: result[key][at] of each seed's row."""
    return [r["result"][key][at] for r in rows]


def epochs_to(rows, key, reached):
    """Per seed, the first epoch at which reached(result[key][epoch]); epochs + 1 if never."""
    return [common.first_epoch(r["result"][key], reached) or r["settings"]["epochs"] + 1
            for r in rows]


def learned(rows_by_run, names):
    """The 'no power' reason when a run's mean best val accuracy stays below LEARNED."""
    weak = {n: mean([max(r["result"]["val_accs"], default=0) for r in rows_by_run[n]])
            for n in names}
    weak = {n: v for n, v in weak.items() if v < LEARNED}
    return ", ".join(f"{n} best val {v:.1f}%" for n, v in weak.items()) + \
        f" (must pass {LEARNED:g}%)" if weak else None


def curves(rows_by_run, key, error=False):
    """{run: [per-seed curve]} for a figure panel; error=True turns accuracies into errors."""
    return {n: [[round(100 - v, 2) if error else v for v in r["result"][key]] for r in rows]
            for n, rows in rows_by_run.items()}


# ---------------------------------------------------------------------------- relu vs tanh

# CIFAR-10's per-channel mean and std of the training images, on the 0-1 scale
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class CudaConvnet(nn.Module):
    """The network of AlexNet's Figure 1 (Krizhevsky et al. 2012): the CIFAR-10 example
    layers-19pct.cfg of Krizhevsky's cuda-convnet. paper=True also takes its init (weights
    N(0, 1e-4) in conv1 and N(0, 1e-2) elsewhere, biases 0) and inputs (raw 0-255 pixels
    minus the mean; we subtract the per-channel mean, not the mean image); paper=False takes
    Glorot (tanh) or He (relu) init and standardised inputs."""

    def __init__(self, act="relu", paper=True, num_classes=10):
        super().__init__()
        f = {"relu": nn.ReLU, "tanh": nn.Tanh}[act]
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), f(),
            nn.Conv2d(32, 32, 5, padding=2), f(), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(32, 64, 5, padding=2), f(), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Flatten(), nn.Linear(64 * 4 * 4, num_classes))
        # our loaders give (x - 0.5) / 0.5 per pixel; one affine map per channel turns that
        # into the inputs wanted: raw pixels minus the mean, or standardised per channel
        mean, std = torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD)
        scale, shift = (torch.full((3,), 127.5), 127.5 - 255 * mean) if paper else \
            (0.5 / std, (0.5 - mean) / std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1))
        self.register_buffer("shift", shift.view(1, 3, 1, 1))
        layers = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for i, m in enumerate(layers):
            if paper:
                nn.init.normal_(m.weight, 0.0, 1e-4 if i == 0 else 1e-2)
            elif act == "relu":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):                     # (B, 3, 32, 32) -> 16x16 -> 8x8 -> 4x4
        return self.features(x * self.scale + self.shift)   # (B, 10)


RELU_TARGET = 25.0  # training error (%) of the paper's Figure 1
SETUPS = {"paper": "the paper's init and inputs", "modern": "Glorot/He init, standardised inputs"}
# Each (activation, setup)'s learning rate: the one of TUNE_LRS with the lowest training error
# after TUNE_EPOCHS epochs on the quick budget's images, seed 123 (`--claim relu --tune`
# reruns this sweep; README gives its numbers, measured 2026-11-30).
TUNE_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
TUNE_EPOCHS = 3
RELU_LRS = {("relu", "paper"): 3e-3, ("tanh", "paper"): 3e-2,
            ("relu", "modern"): 3e-3, ("tanh", "modern"): 3e-2}
PAPER_RECIPE = {"momentum": 0.9, "schedule": "none", "augment": False}  # no regularisation


def tune_relu_lrs(train_all):
    """The short lr sweep behind RELU_LRS: {(act, setup): (lr, {lr: training error})}."""
    runs = {(act, setup, lr): f"{act}_{setup}_lr{lr:g}" for act in ("relu", "tanh")
            for setup in SETUPS for lr in TUNE_LRS}
    r = train_all([(name, functools.partial(CudaConvnet, act, setup == "paper"), lr, 0.0,
                    dict(PAPER_RECIPE, epochs=TUNE_EPOCHS))
                   for (act, setup, lr), name in runs.items()], seeds=1)
    found = {}
    for (act, setup, lr), name in runs.items():
        row = r[name][0]
        error = 100 - row["result"]["train_accs"][-1] if row["status"] == "completed" \
            and row["result"]["train_accs"] else None
        found.setdefault((act, setup), {})[lr] = error
    best = {key: min(((e, lr) for lr, e in errors.items() if e is not None),
                     default=(None, RELU_LRS[key]))[1] for key, errors in found.items()}
    return {key: (best[key], errors) for key, errors in found.items()}


def claim_relu(train_all, args):
    """Krizhevsky et al. 2012, Figure 1, on its own network, init and inputs; beside it the
    same two activations with a modern init and inputs."""
    lrs, sweep = dict(RELU_LRS), None
    if args.tune:
        sweep = tune_relu_lrs(train_all)
        lrs = {key: lr for key, (lr, _) in sweep.items()}
    r = train_all([(f"{act}_{setup}", functools.partial(CudaConvnet, act, setup == "paper"),
                    lrs[act, setup], 0.0, PAPER_RECIPE)
                   for setup in SETUPS for act in ("relu", "tanh")])
    cap = r["relu_paper"][0]["settings"]["epochs"]
    reach = {k: epochs_to(v, "train_accs", lambda a: 100 - a < RELU_TARGET)
             for k, v in r.items()}

    def part(setup):
        both = reach[f"relu_{setup}"] + reach[f"tanh_{setup}"]
        return better(f"ReLU reaches {RELU_TARGET:g}% training error in fewer epochs than "
                      f"tanh ({SETUPS[setup]})",
                      f"holds when tanh's mean epochs to {RELU_TARGET:g}% training error "
                      f"minus ReLU's beat the seed spread + {MARGIN['epochs']:g} epoch (not "
                      f"reached = more than {cap}); no power when no run reaches it",
                      reach, f"relu_{setup}", f"tanh_{setup}", "epochs",
                      no_power=(f"no run reached {RELU_TARGET:g}% training error within "
                                f"{common.epochs_text(cap)}" if min(both) > cap else None),
                      cap=cap)

    paper, modern = part("paper"), part("modern")
    for p, setup in ((paper, "paper"), (modern, "modern")):
        relu, tanh = mean(reach[f"relu_{setup}"]), mean(reach[f"tanh_{setup}"])
        if max(reach[f"relu_{setup}"]) <= cap:
            p["ours"] += (f"; tanh/ReLU {'>= ' if max(reach[f'tanh_{setup}']) > cap else ''}"
                          f"{min(tanh, cap) / relu:.1f}x (paper: about 6x)")
        last = {a: mean([100 - x for x in per_seed(r[f"{a}_{setup}"], "train_accs")])
                for a in ("relu", "tanh")}
        p["ours"] += (f"; final training error ReLU {last['relu']:.1f}%, tanh "
                      f"{last['tanh']:.1f}% (seed means)")
    return {
        "paper": "Krizhevsky, Sutskever and Hinton 2012 (NIPS), section 3.1 and Figure 1: "
                 "a four-layer CNN with ReLUs reaches 25% training error on CIFAR-10 six "
                 "times faster than the same network with tanh (about 6 vs 36 epochs)",
        "parts": [paper],
        "conditions": [modern],
        "changes": "the init and inputs: with the paper's tiny init tanh stays nearly linear "
                   "until its weights grow; Glorot/He init makes tanh non-linear from the "
                   "first step (the line beside the verdict). And the budget: each run "
                   f"stops at {common.epochs_text(cap)}",
        "numbers": {"epochs_to_target": reach, "target_train_error": RELU_TARGET,
                    "lrs": {f"{a}_{s}": lr for (a, s), lr in lrs.items()},
                    "lr_sweep": sweep and {f"{a}_{s}": {f"{lr:g}": e for lr, e in errs.items()}
                                           for (a, s), (_, errs) in sweep.items()}},
        "panels": [("training error (%)", curves(r, "train_accs", error=True),
                    {"y": RELU_TARGET}),
                   ("training loss", curves(r, "train_losses"), {})],
    }


# ---------------------------------------------------------------------------- section 3.4

class SmallVGG(nn.Module):
    """The VGG rule in one net (Simonyan and Zisserman 2015, section 2.3): a 3x3 stem to C
    channels, then three stages whose C -> C body is either two 3x3 convs (18 C^2 weights,
    two ReLUs) or one 5x5 conv (25 C^2 weights, one ReLU), the same 5x5 receptive field.
    Between stages a max pool halves the map and a 1x1 conv doubles C (32, 64, 128). Every
    conv has BatchNorm; global average pooling and one linear layer end it."""

    def __init__(self, kernel=3, width=32, num_classes=10):
        super().__init__()
        if kernel not in (3, 5):
            raise ValueError(f"kernel must be 3 or 5, got {kernel}")
        self.stem = conv_bn(3, width, 3)
        self.bodies, self.transitions = nn.ModuleList(), nn.ModuleList()
        c = width
        for i in range(3):
            self.bodies.append(nn.Sequential(conv_bn(c, c, 3), conv_bn(c, c, 3))
                               if kernel == 3 else conv_bn(c, c, 5))
            if i < 2:
                self.transitions.append(nn.Sequential(nn.MaxPool2d(2), conv_bn(c, 2 * c, 1)))
                c *= 2
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(c, num_classes))

    def forward(self, x):                              # (B, 3, 32, 32)
        x = self.bodies[0](self.stem(x))               # (B, 32, 32, 32)
        x = self.bodies[1](self.transitions[0](x))     # (B, 64, 16, 16)
        x = self.bodies[2](self.transitions[1](x))     # (B, 128, 8, 8)
        return self.head(x)                            # (B, 10)


def body_weights(net):
    """Conv weights of each C -> C stage body of a SmallVGG: 18 C^2 (3x3) or 25 C^2 (5x5)."""
    return [sum(m.weight.numel() for m in body.modules() if isinstance(m, nn.Conv2d))
            for body in net.bodies]


def claim_degradation(train_all, args):
    """He et al. 2016, Figures 1 and 6, Table 6: two early effects and one late one."""
    r = train_all([(name, model_spec(name)[0], 0.1, 1e-4)
                   for name in ("plain20", "plain56", "resnet20", "resnet56")])
    train_err = {k: [round(100 - a, 2) for a in per_seed(v, "train_accs")] for k, v in r.items()}
    val_err = {k: [round(100 - a, 2) for a in per_seed(v, "val_accs")] for k, v in r.items()}
    late = better("deeper residual is better: ResNet-56 has lower val error than ResNet-20",
                  "holds when ResNet-20's mean final val error minus ResNet-56's beats the "
                  "seed spread + 1 point; at the quick budget inconclusive by rule",
                  val_err, "resnet56", "resnet20", "points",
                  no_power=learned(r, ("resnet20", "resnet56")))
    if args.budget == "quick":
        late.update(verdict="inconclusive", reason="an end-of-schedule effect (ResNet-56 "
                    "first passes ResNet-20 after about 26 of 164 epochs in a faithful "
                    "reproduction): needs --budget full")
    return {
        "paper": "He, Zhang, Ren, Sun 2016 (CVPR), CIFAR-10, Figures 1 and 6: the 56-layer "
                 "plain net has higher training error than the 20-layer one from the start; "
                 "with shortcuts the deeper net trains better and ends better (Table 6: "
                 "ResNet-20 8.75%, ResNet-56 6.97% test error)",
        "parts": [
            better("deeper plain trains worse: plain-56 has higher training error than "
                   "plain-20", "holds when plain-56's mean final training error minus "
                   "plain-20's beats the seed spread + 1 point", train_err, "plain20",
                   "plain56", "points", no_power=learned(r, ("plain20",))),
            better("shortcuts fix it: ResNet-56 has lower training error than plain-56",
                   "holds when plain-56's mean final training error minus ResNet-56's beats "
                   "the seed spread + 1 point", train_err, "resnet56", "plain56", "points",
                   no_power=learned(r, ("resnet56",))),
            late],
        "changes": "the budget: the first two are early effects (minutes); the third needs "
                   "the full schedule. Batch norm in every block is what lets plain-56 train "
                   "at all",
        "numbers": {"final_train_error": train_err, "final_val_error": val_err},
        "panels": [("training error (%)", curves(r, "train_accs", error=True),
                    {"x": args.epochs}),
                   ("val error (%)", curves(r, "val_accs", error=True), {"x": args.epochs})],
    }


BN_TARGET = 40.0  # val accuracy (%) the batchnorm claim counts epochs to, fixed in advance


def claim_batchnorm(train_all, args):
    """Ioffe and Szegedy 2015: BN alone reached the same accuracy in fewer steps."""
    lr = MODELS["vgg"][1]
    r = train_all([(name, MODELS[name][0], lr, 5e-4) for name in ("vgg", "vgg_bn")])
    cap = r["vgg"][0]["settings"]["epochs"]
    reach = {k: epochs_to(v, "val_accs", lambda a: a >= BN_TARGET) for k, v in r.items()}
    part = better(f"VGG-11 with batch norm reaches {BN_TARGET:g}% val accuracy in fewer "
                  f"epochs at the same lr {lr:g}",
                  f"holds when VGG-11's mean epochs to {BN_TARGET:g}% val accuracy minus "
                  f"VGG-11-BN's beat the seed spread + 1 epoch (not reached = more than "
                  f"{cap}); no power when no run reaches it", reach, "vgg_bn", "vgg",
                  "epochs", cap=cap,
                  no_power=(f"no run reached {BN_TARGET:g}% within {common.epochs_text(cap)}"
                            if min(reach["vgg_bn"] + reach["vgg"]) > cap else None))
    final = {k: mean(per_seed(v, "val_accs")) for k, v in r.items()}
    part["ours"] += (f"; final val accuracy VGG-11-BN {final['vgg_bn']:.1f}%, VGG-11 "
                     f"{final['vgg']:.1f}% (seed means)")
    return {
        "paper": "Ioffe and Szegedy 2015 (ICML), Figure 2: batch norm alone (BN-Baseline) "
                 "reached Inception's accuracy in less than half the steps; with a higher lr "
                 "and other changes in 14x fewer",
        "parts": [part],
        "changes": f"the target ({BN_TARGET:g}% val) and the lr: both nets train at VGG-11's "
                   f"own lr {lr:g}; BN's larger gains need a larger lr, which plain VGG-11 "
                   f"does not survive",
        "numbers": {"epochs_to_target": reach, "target_val_acc": BN_TARGET},
        "panels": [("val accuracy (%)", curves(r, "val_accs"), {"y": BN_TARGET}),
                   ("training loss", curves(r, "train_losses"), {})],
    }


def claim_aux(train_all, args):
    """Szegedy et al. 2016 (Inception-v3, section 4): no faster early training."""
    ctor, lr, l2 = MODELS["googlenet"]
    r = train_all([("googlenet", ctor, lr, l2),
                   ("googlenet_aux", functools.partial(GoogLeNet, aux=True), lr, l2,
                    {"aux": True})])
    acc = curves(r, "val_accs")
    means = {k: [mean(seeds) for seeds in zip(*v)] for k, v in acc.items()}
    # the checkpoints: every epoch at which both runs are, on average, past LEARNED
    points = [e for e, (a, b) in enumerate(zip(means["googlenet"], means["googlenet_aux"]), 1)
              if min(a, b) >= LEARNED]
    gaps = {e: round(means["googlenet_aux"][e - 1] - means["googlenet"][e - 1], 2)
            for e in points}
    noise = max((spread([s[e - 1] for s in acc["googlenet"]],
                         [s[e - 1] for s in acc["googlenet_aux"]]) for e in points), default=0)
    if not points:
        verdict, reason = "inconclusive", (f"no power: the two nets were never both past "
                                           f"{LEARNED:g}% val accuracy")
    elif all(abs(g) <= SAME for g in gaps.values()) and noise <= SAME:
        verdict, reason = "holds", None
    elif any(abs(g) > SAME + noise for g in gaps.values()):
        verdict, reason = "contradicted", None
    else:
        widest = max(map(abs, gaps.values()))
        verdict, reason = "inconclusive", (f"within noise: gaps up to {widest:.2f} points, "
                                           f"seed spread {noise:.2f}")
    part = {"name": "the auxiliary classifier does not speed early training",
            "rule": f"at every epoch where both nets are past {LEARNED:g}% val accuracy: "
                    f"holds when aux - plain stays within +-{SAME:g} points and the seed "
                    f"spread is at most {SAME:g}; contradicted when they differ by more than "
                    f"{SAME:g} + the spread; inconclusive otherwise or with no such epoch",
            "ours": ("val accuracy aux - plain at epochs " + ", ".join(
                f"{e}: {g:+.2f}" for e, g in gaps.items()) + f"; seed spread {noise:.2f}")
            if points else "never both past the threshold: best mean val accuracy " +
            ", ".join(f"{k} {max(v):.1f}%" for k, v in means.items()),
            "verdict": verdict, "reason": reason, "gaps": gaps, "seed_spread": round(noise, 2)}
    return {
        "paper": "Szegedy et al. 2015 added auxiliary classifiers (loss weight 0.3) against "
                 "vanishing gradients; Szegedy et al. 2016 (Inception-v3, section 4): 'the "
                 "training progression of network with and without side head looks virtually "
                 "identical before both models reach high accuracy'",
        "parts": [part],
        "changes": "power: the nets must learn before 'no faster' means anything; near the "
                   "end of a long schedule the aux net overtakes (a regulariser)",
        "numbers": {"val_acc_mean": means, "checkpoints": points},
        "panels": [("val accuracy (%)", acc, {"y": LEARNED}),
                   ("val loss (main head)", curves(r, "val_losses"), {})],
    }


def claim_3x3(train_all, args):
    """Simonyan and Zisserman 2015, section 2.3 and Table 3 (net B vs its 5x5 variant)."""
    r = train_all([(name, *MODELS[name]) for name in ("vgg3x3", "vgg5x5")])
    body = {k: body_weights(SmallVGG(int(k[3]))) for k in r}
    params = {k: v[0]["params"] for k, v in r.items()}
    macs = {k: v[0]["macs"] for k, v in r.items()}
    acc = {k: per_seed(v, "val_accs") for k, v in r.items()}
    return {
        "paper": "Simonyan and Zisserman 2015 (ICLR), section 2.3 and 4.1: two 3x3 convs see "
                 "what one 5x5 sees with 18C^2 instead of 25C^2 weights and one more "
                 "non-linearity; net B with each pair replaced by a 5x5 had 7% higher top-1 "
                 "error on ImageNet; at CIFAR scale such gaps are ~3 points after hundreds of "
                 "epochs (Springenberg et al. 2015, All-CNN)",
        "parts": [
            fixed_part("two 3x3 convs cost less than one 5x5",
                       "holds when the 3x3 net has fewer weights and mult-adds",
                       f"3x3: {params['vgg3x3']:,} params, {macs['vgg3x3'] / 1e6:.1f}M "
                       f"mult-adds; 5x5: {params['vgg5x5']:,} params, "
                       f"{macs['vgg5x5'] / 1e6:.1f}M mult-adds",
                       params["vgg3x3"] < params["vgg5x5"] and macs["vgg3x3"] < macs["vgg5x5"]),
            better("two 3x3 convs reach higher val accuracy than one 5x5",
                   "holds when the 3x3 net's mean final val accuracy minus the 5x5 net's "
                   "beats the seed spread + 1 point", acc, "vgg3x3", "vgg5x5", "points",
                   lower=False, no_power=learned(r, ("vgg3x3", "vgg5x5")))],
        "changes": "the budget: a few points after hundreds of epochs are far below what a "
                   "few thousand images and epochs resolve",
        "numbers": {"params": params, "macs": macs, "conv_body_weights": body,
                    "final_val_acc": acc},
        "panels": [("val accuracy (%)", curves(r, "val_accs"), {"x": args.epochs}),
                   ("training loss", curves(r, "train_losses"), {})],
    }


def claim_regularization(train_all, args):
    """Krizhevsky et al. 2012, section 4.2: dropout against overfitting."""
    lr = MODELS["alexnet"][1]
    r = train_all([(label, functools.partial(AlexNet, dropout=p), lr, l2)
                   for label, p, l2 in (("none", 0.0, 0.0), ("wd", 0.0, 5e-4),
                                        ("dropout", 0.5, 0.0), ("both", 0.5, 5e-4))])
    gap = {k: [round(t - v, 2) for t, v in zip(per_seed(rows, "train_accs"),
                                               per_seed(rows, "val_accs"))]
           for k, rows in r.items()}
    pairs = (("dropout", "none"), ("both", "wd"))
    parts = [better(f"dropout shrinks the train - val gap ({b} -> {a})",
                    f"holds when the mean final train - val accuracy gap of '{b}' minus "
                    f"that of '{a}' beats the seed spread + 1 point", gap, a, b, "points",
                    no_power=learned(r, (b,))) for a, b in pairs]
    return {
        "paper": "Krizhevsky, Sutskever and Hinton 2012, section 4.2: 'without dropout, our "
                 "network exhibits substantial overfitting'",
        "parts": parts,
        "changes": "the data: overfitting needs a training set the net can memorise (few "
                   "images, no augmentation); with much data the gap shrinks on its own",
        "numbers": {"final_gap_train_minus_val": gap,
                    "final_val_acc": {k: per_seed(v, "val_accs") for k, v in r.items()}},
        "panels": [("train accuracy (%)", curves(r, "train_accs"), {"x": args.epochs}),
                   ("val accuracy (%)", curves(r, "val_accs"), {"x": args.epochs})],
    }


CLAIMS = {"relu": claim_relu, "degradation": claim_degradation, "batchnorm": claim_batchnorm,
          "aux": claim_aux, "3x3": claim_3x3, "regularization": claim_regularization}
# quick: about 10 minutes per claim on 2 CPU cores without bf16, 2 seeds (set by time before
# any verdict; measured 8-12 minutes, README); full: for a GPU. (images per split, epochs);
# None = the whole data set.
BUDGETS = {
    "relu": {"quick": (5000, 10), "full": (None, 40)},
    "degradation": {"quick": (2000, 4), "full": (None, 40)},
    "batchnorm": {"quick": (2000, 5), "full": (None, 30)},
    "aux": {"quick": (1000, 3), "full": (None, 30)},
    "3x3": {"quick": (4000, 7), "full": (None, 30)},
    "regularization": {"quick": (1000, 6), "full": (5000, 60)},
}


class ClaimStopped(Exception):
    """A run of a claim was stopped (Ctrl-C, out of memory): no verdict from part of them."""


def measure_claim(name, args, device, precision):
    """--claim NAME: its networks for each seed, the figure, the JSON, the verdict."""
    limit, epochs = BUDGETS[name][args.budget]
    budget = args.budget if (args.limit, args.epochs) == (None, None) else \
        f"{args.budget} budget changed by --limit/--epochs"
    args.limit, args.epochs = args.limit or limit, args.epochs or epochs  # explicit ones win
    if name == "regularization":
        args.augment = False  # augmentation is a regulariser too: the claim is about dropout
    seeds = [args.seed + i for i in range(args.seeds)]
    partition = common.load_data(args)
    out = os.path.join(args.out_dir, "04_case_studies", "claims")
    print(f"claim {name}, {budget}: {args.limit or 'all'} images per split, "
          f"{common.epochs_text(args.epochs)}, batch {args.batch_size}, seeds "
          f"{', '.join(map(str, seeds))}; device {device} ({common.device_name(device)}), "
          f"{precision}, data {partition['kind']}")
    trained = {"rows": []}

    def train_all(specs, seeds=len(seeds)):
        """Train (name, build, lr, l2[, settings]) runs, each for the first `seeds` seeds;
        {name: [row per seed]}. A diverged run is an outcome the verdict reads; a stopped
        one ends the claim."""
        runs = [dict(training_run(f"{spec[0]}_seed{seed}", *spec[1:4], args, precision,
                                  seed=seed, **(spec[4] if len(spec) > 4 else {})),
                     group=spec[0])
                for spec in specs for seed in range(args.seed, args.seed + seeds)]
        rows, trained["status"] = common.train_runs(runs, partition, device,
                                                    os.path.join(out, name), args.show)
        trained["rows"] += rows
        if len(rows) < len(runs) or any(r["status"] == "interrupted" for r in rows):
            raise ClaimStopped
        grouped = {}
        for run, row in zip(runs, rows):
            grouped.setdefault(run["group"], []).append(row)
        return grouped

    started = time.perf_counter()
    try:
        claim = CLAIMS[name](train_all, args)
    except ClaimStopped:
        print(f"claim {name}: not all runs finished; no verdict", file=sys.stderr)
        return trained["status"] or common.interrupted_exit_code()
    minutes = (time.perf_counter() - started) / 60
    verdict = claim_verdict(claim["parts"])
    print_results(trained["rows"])
    print(f"\nclaim:   {claim['paper']}")
    for kind, parts in (("part:", claim["parts"]),
                        ("beside it, not in the verdict:", claim.get("conditions", []))):
        for p in parts:
            print(f"{kind} {p['name']}\n  rule:    {p['rule']}\n  ours:    {p['ours']}\n"
                  f"  verdict: {p['verdict']}" + (f" ({p['reason']})" if p["reason"] else ""))
    print(f"what changes this verdict: {claim['changes']}\n"
          f"verdict: {verdict} ({minutes:.1f} min, {len(seeds)} seeds)")
    record = {"claim": name, "paper": claim["paper"], "verdict": verdict,
              "parts": claim["parts"], "conditions": claim.get("conditions", []),
              "what_changes_this_verdict": claim["changes"], "numbers": claim["numbers"],
              "seeds": seeds, "budget": budget, "limit": args.limit, "epochs": args.epochs,
              "batch_size": args.batch_size, "augment": args.augment,
              "data": partition["kind"], "minutes": round(minutes, 1),
              **common.environment(device, precision), "runs": trained["rows"]}
    title = (f"{name}: {verdict} ({budget}, {args.limit or 'all'} images, "
             f"{common.epochs_text(args.epochs)}, {len(seeds)} seeds: band = min-max)"
             f"{common.data_tag(partition['kind'])}")
    paths = common.reserve(os.path.join(out, f"{name}.json"), also=[f"{name}.png"])
    return common.save([(paths[0], lambda p: common.save_json(record, p)),
                        (paths[1], lambda p: common.save_figure(
                            common.plot_curves(claim["panels"], title), p, args.show))], out)


# ============================================================================ command line

def main(argv=None):
    args = parse_args(argv)
    device, precision = common.start(args)
    if args.train:
        args.epochs = args.epochs or 30
        return train_models(args.train, args, device, precision)
    if args.claim:
        return measure_claim(args.claim, args, device, precision)

    common.section(f"3.4 Case studies on 32x32 inputs, device {device}, {precision}")
    rows, facts, status = [], None, 0
    try:
        compare(MODELS, device, precision, rows=rows)
        facts = design_rules()
    except KeyboardInterrupt:
        status = common.interrupted_exit_code()
        print(f"{len(rows)} of {len(MODELS)} models measured: stopped by "
              f"{common.stop_requested() or 'SIGINT'}", file=sys.stderr)
    if not rows:
        return status
    record = {**common.environment(device, precision), "fp32_note": common.tf32_note(device),
              "status": "interrupted" if status else "completed", "complete": status == 0,
              "stopped_by": common.stop_requested() if status else None,
              "models_measured": f"{len(rows)} of {len(MODELS)}", "models": rows,
              "design_rules": facts}
    out = os.path.join(args.out_dir, "04_case_studies")
    paths = common.reserve(os.path.join(out, "compare.json"),
                           also=["compare.png", "imagenet_top5.png"])
    jobs = [(paths[0], lambda path: common.save_json(record, path)),
            (paths[1], lambda path: common.save_figure(
                plot_compare(rows, f"size vs cost ({device}, {precision})"), path, args.show)),
            (paths[2], lambda path: common.save_figure(plot_imagenet(), path, args.show))]
    return common.save(jobs, out) or status


def build_parser():
    p = argparse.ArgumentParser(
        description="3.4 case studies: compare LeNet-5 ... SE-ResNet (default), train some "
                    "of them with --train, or measure a slide's claim with --claim.",
        formatter_class=common.HelpFormatter)
    p.add_argument("--train", nargs="+", metavar="NAME", default=None,
                   help=f"train these models (or 'all'): {', '.join(MODELS)}; also "
                        f"resnet<depth>, seresnet<depth> and plain<depth> for any depth 6n+2 "
                        f"up to {MAX_DEPTH} (32, 44, 110)")
    p.add_argument("--epochs", type=common.positive_int, default=None,
                   help="epochs for every trained model; default: 30 for --train, the "
                        "budget's for --claim")
    p.add_argument("--batch-size", type=common.positive_int, default=128,
                   help="images per training step")
    p.add_argument("--lr", type=common.positive_float, default=None,
                   help="--train only: peak learning rate for every model; default: each "
                        "model's own")
    p.add_argument("--l2", type=common.non_negative_float, default=None,
                   help="--train only: weight decay for every model; default: each model's "
                        "own")
    common.add_training_args(p)
    p.add_argument("--aux", action="store_true",
                   help="train GoogLeNet with its auxiliary classifier (loss weight 0.3)")
    p.add_argument("--claim", choices=tuple(CLAIMS), default=None,
                   help="measure one of the slides' claims: train the networks it needs "
                        "with --seeds seeds, save claims/NAME.png and NAME.json, print the "
                        "paper's number, ours and a verdict (holds, contradicted or "
                        "inconclusive) by rules stated in advance")
    p.add_argument("--budget", choices=("quick", "full"), default="quick",
                   help="for --claim: quick = about 10 minutes per claim on 2 CPU cores "
                        "(a subset and few epochs, printed); full = the whole set and "
                        "30-60 epochs, for a GPU")
    p.add_argument("--seeds", type=common.positive_int, default=2,
                   help="for --claim: train every network with this many seeds, at least 2 "
                        "(--seed, "
                        "--seed + 1, ...); an effect counts only beyond their spread")
    p.add_argument("--tune", action="store_true",
                   help="for --claim relu: first rerun the short learning-rate sweep "
                        "(one seed, 3 epochs, 5 rates per activation and setup) and use "
                        "its winners instead of the stored ones")
    common.add_data_args(p)
    common.add_output_args(p)
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.claim and args.train:
        parser.error("--claim and --train: give one of them")
    if args.seeds < 2:
        parser.error("--seeds: give at least 2; an effect counts only beyond the spread "
                     "between seeds")
    if args.tune and args.claim != "relu":
        parser.error("--tune reruns the learning-rate sweep of --claim relu; use them together")
    if args.claim and (args.lr is not None or args.l2 is not None):
        parser.error("--claim uses each network's own learning rate and weight decay; "
                     "drop --lr/--l2 (they are for --train)")
    if args.train:
        if "all" in args.train and len(args.train) > 1:
            parser.error("--train: give 'all' alone, or a list of model names")
        names = list(MODELS) if args.train == ["all"] else args.train
        too_deep = [n for n in names if re.fullmatch(r"(seresnet|resnet|plain)\d+", n)
                    and int(re.sub(r"\D", "", n)) > MAX_DEPTH]
        if too_deep:
            parser.error(f"{', '.join(too_deep)}: deeper than {MAX_DEPTH} layers (the paper's "
                         f"deepest) cannot be built here; choose a depth 6n+2 up to {MAX_DEPTH}")
        unknown = [n for n in names if model_spec(n) is None]
        if unknown:
            parser.error(f"unknown model {', '.join(unknown)}; choose from: "
                         f"{', '.join(MODELS)}, resnet<6n+2>, seresnet<6n+2>, plain<6n+2>, "
                         f"or all alone")
        args.train = list(dict.fromkeys(names))
    return args


if __name__ == "__main__":
    common.launch(main)

"""3.4 Case studies: LeNet-5, AlexNet, VGG, GoogLeNet, ResNet, DenseNet and SE-Net, sized
for 32x32 CIFAR-10, compared side by side and each trainable with the shared loop.

    python 04_case_studies.py                          # the comparison table + design rules
    python 04_case_studies.py --train lenet resnet20   # train some under one budget
    python 04_case_studies.py --claim degradation      # a slide's claim, 2 seeds, a verdict

Outputs go to runs/04_case_studies/ (see README).
"""
import functools
import math
import os
import re
import sys
import textwrap
import time
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


# ============================================================================ building blocks

def he_init(model):
    """He et al. 2015 initialisation, N(0, 2 / fan_in), for ReLU nets without batch norm
    (PyTorch's default is too small for a deep ReLU stack; see README)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def conv_bn(c_in, c_out, k, stride=1, bn=True):
    """Conv -> BatchNorm -> ReLU, 'same' padding; bn=False: Conv (with bias) -> ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=not bn),
                         *([nn.BatchNorm2d(c_out)] if bn else []), nn.ReLU(inplace=True))


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
            nn.ReLU(inplace=True), nn.Linear(1024, num_classes))
        he_init(self)

    def forward(self, x):            # (B, 3, 32, 32)
        x = self.stage1(x)           # (B, 64, 16, 16)
        x = self.stage2(x)           # (B, 192, 8, 8)
        x = self.stage3(x)           # (B, 256, 4, 4)
        return self.classifier(x)    # (B, 10)


# ============================================================================ 3.4.3 VGG

VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
CNN_CFG = [16, 16, "M", 32, 32, "M", 64, 64, "M"]  # the lecture's CNN (03): 82,330 parameters


class VGG(nn.Module):
    """VGG-11 (configuration A). Simonyan, Zisserman, "Very deep convolutional networks for
    large-scale image recognition", ICLR 2015. Only 3x3 'same' convs; each max pool halves
    the map and the next convs double the channels (up to 512). batch_norm=True adds
    BatchNorm after every conv (Ioffe, Szegedy 2015). For 32x32 inputs the five pools end
    at 1x1x512, so the classifier is one linear layer. cfg=CNN_CFG gives the layers of the
    lecture's CNN (03), for the batchnorm claim."""

    def __init__(self, num_classes=10, cfg=VGG11, batch_norm=False):
        super().__init__()
        stages, layers, c_in = [], [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                stages.append(nn.Sequential(*layers))
                layers = []
            else:
                layers += conv_bn(c_in, v, 3, bn=batch_norm)  # conv, BN if batch_norm, ReLU
                c_in = v
        self.features = nn.Sequential(OrderedDict(
            (f"stage{i}", stage) for i, stage in enumerate(stages, 1)))
        side = 32 >> len(stages)  # each pool halves the 32x32 map
        self.classifier = nn.Linear(c_in * side * side, num_classes)
        if not batch_norm:
            he_init(self)

    def forward(self, x):                  # (B, 3, 32, 32)
        x = self.features(x)               # (B, 512, 1, 1) after VGG-11's five halvings
        return self.classifier(torch.flatten(x, 1))   # (B, 10)


class SmallVGG(nn.Module):
    """The VGG rule in one net (Simonyan and Zisserman 2015, section 2.3): a 3x3 stem, then
    three stages whose C -> C body is two 3x3 convs (18 C^2 weights, two ReLUs) or one 5x5
    (25 C^2, one ReLU), the same receptive field; between stages a max pool halves the map
    and a 1x1 conv doubles C (32, 64, 128). BatchNorm everywhere; average pool, linear."""

    def __init__(self, kernel=3, width=32, num_classes=10):
        super().__init__()
        self.stem = conv_bn(3, width, 3)
        stages, c = [], width
        for i in range(3):
            layers = [nn.MaxPool2d(2), *conv_bn(c, 2 * c, 1)] if i else []  # halve, double C
            c = 2 * c if i else c
            layers += [*conv_bn(c, c, 3), *conv_bn(c, c, 3)] if kernel == 3 else [*conv_bn(c, c, 5)]
            stages.append(nn.Sequential(*layers))
        self.stage1, self.stage2, self.stage3 = stages
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x):                              # (B, 3, 32, 32)
        x = self.stage1(self.stem(x))                  # (B, 32, 32, 32)
        x = self.stage2(x)                             # (B, 64, 16, 16)
        x = self.stage3(x)                             # (B, 128, 8, 8)
        return self.head(x)                            # (B, 10)


# ============================================================================ 3.4.5 GoogLeNet

class Inception(nn.Module):
    """The inception module of GoogLeNet (Szegedy et al., "Going deeper with convolutions",
    CVPR 2015): parallel 1x1, 3x3, 5x5 convs and a 3x3 max pool, concatenated along the
    channels. The 1x1 convs before the 3x3 and 5x5 (and after the pool) thin the channels
    first: the bottleneck. reduce=False drops them (the naive module)."""

    def __init__(self, c_in, c1, c3_red, c3, c5_red, c5, pool_proj, reduce=True, bn=True):
        super().__init__()
        self.b1 = conv_bn(c_in, c1, 1, bn=bn)
        if reduce:
            self.b3 = nn.Sequential(conv_bn(c_in, c3_red, 1, bn=bn), conv_bn(c3_red, c3, 3, bn=bn))
            self.b5 = nn.Sequential(conv_bn(c_in, c5_red, 1, bn=bn), conv_bn(c5_red, c5, 5, bn=bn))
            self.bp = nn.Sequential(nn.MaxPool2d(3, 1, padding=1),
                                    conv_bn(c_in, pool_proj, 1, bn=bn))
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
        self.net = nn.Sequential(nn.AvgPool2d(2), conv_bn(c_in, 64, 1), nn.Flatten(),  # 8 -> 4
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


class SmallInception(nn.Module):
    """The aux claim's net: the lecture's inception module (parallel 1x1, 3x3, 5x5 and pool
    branches, concatenated) `depth` times at 8x8, 32 channels, after a 3x3 stem and a 4x4 pool;
    aux=True adds a side classifier (global average pool, linear) after module depth // 3;
    bn=False drops every BatchNorm and starts from He init."""

    def __init__(self, bn=True, aux=False, depth=8, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 32, 3, bn=bn), nn.MaxPool2d(4))  # 8x8: CPU minutes
        self.modules_ = nn.ModuleList(Inception(32, 8, 8, 16, 4, 4, 4, bn=bn)  # -> 32
                                      for _ in range(depth))
        self.side_at = depth // 3 if aux else None  # GoogLeNet's first side head: 4a of 9
        self.side = nn.Linear(32, num_classes) if aux else None
        self.head = nn.Linear(32, num_classes)
        if not bn:
            he_init(self)

    def forward(self, x):                              # (B, 3, 32, 32)
        x, side = self.stem(x), None                   # (B, 32, 8, 8)
        for i, module in enumerate(self.modules_, 1):
            x = module(x)                              # (B, 32, 8, 8)
            if i == self.side_at and self.training:
                side = self.side(x.mean((2, 3)))       # (B, 10)
        logits = self.head(x.mean((2, 3)))             # (B, 10)
        return (logits, side) if side is not None else logits


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
            # F.pad lists the last dimension first: (W left, right, H top, bottom, C front, back)
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
        self.stem = conv_bn(3, 16, 3)
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


# ====================================================================== the models of the table

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


def model_spec(name):
    """(constructor, lr, weight decay) for a registered name, or for resnet<depth>,
    seresnet<depth> or plain<depth> (the ResNet without shortcuts) at any depth 6n + 2
    up to 1202, the paper's deepest; None if unknown."""
    match = re.fullmatch(r"(seresnet|resnet|plain)(\d+)", name)
    if name in MODELS or not match or not 8 <= int(match[2]) <= 1202 or int(match[2]) % 6 != 2:
        return MODELS.get(name)
    block = SEBasicBlock if match[1] == "seresnet" else BasicBlock
    return (lambda: ResNet(int(match[2]), block=block, residual=match[1] != "plain"), 0.1, 1e-4)


def build(name):
    return model_spec(name)[0]()


def image_macs(model):
    """Multiply-adds for one 32x32 RGB image."""
    return common.count_macs(model, torch.zeros(1, 3, 32, 32))


# ============================================================================ 3.4 the comparison

def stage_shapes(model, size=32):
    """Output shape of each stage, in the order forward calls them: the top-level children,
    with a Sequential of Sequentials (VGG's features) opened up."""
    stages, shapes = [], []
    for name, child in model.named_children():
        parts = list(child.named_children())
        nested = parts and all(isinstance(c, nn.Sequential) for _, c in parts)
        if isinstance(child, nn.Sequential) and nested:
            stages += parts
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
    model = common.to_device(model, device, precision).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, 32, 32, device=device)
    if common.channels_last_helps(device, precision):
        x = x.contiguous(memory_format=torch.channels_last)
    batches = [(x, torch.randint(0, 10, (batch,), device=device))]
    dtype = common.AMP_DTYPES[precision]
    common.train(model, batches, opt, nn.CrossEntropyLoss(), device, amp_dtype=dtype)
    common.synchronize(device)
    start = time.perf_counter()
    common.train(model, batches * steps, opt, nn.CrossEntropyLoss(), device, amp_dtype=dtype)
    common.synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def compare(names, device, precision="fp32", rows=None):
    """One row per model: parameters, multiply-adds, stage shapes, training throughput.
    Rows are appended to `rows` as they are measured (kept if interrupted)."""
    rows = [] if rows is None else rows
    print(f"{'model':11s} {'params':>11s} {'mult-adds':>10s} {'train':>10s}\n"
          f"{'':11s} {'':>11s} {'(millions)':>10s} {'images/s':>10s}   (then the output "
          f"shape after each stage)")
    for name in names:
        torch.manual_seed(0)
        model = build(name)
        row = {"model": name, "params": common.count_params(model), "macs": image_macs(model),
               "stages": stage_shapes(model)}
        row["train_images_per_s"] = round(throughput(model, device, precision), 1)
        rows.append(row)
        print(f"{name:11s} {row['params']:>11,d} {row['macs'] / 1e6:>10.1f} "
              f"{row['train_images_per_s']:>10.0f}")
        print(textwrap.fill(" -> ".join(f"{s}{list(shape)}" for s, shape in row["stages"]),
                            width=96, initial_indent="    ", subsequent_indent="    "))
    return rows


def plot_compare(rows, title):
    """Parameters against multiply-adds, one colour per model, dot size = training speed."""
    fig, ax = common.subplots(figsize=(7.5, 5))
    top = max(r["train_images_per_s"] for r in rows)
    for i, r in enumerate(rows):
        x, y = r["macs"] / 1e6, r["params"] / 1e6
        # a marker shape each, half transparent: models of about the same size both show
        ax.scatter(x, y, s=30 + 400 * (r["train_images_per_s"] / top) ** 0.5, alpha=0.5,
                   color=common.plt.get_cmap("tab20").colors[i % 20], edgecolor="black",
                   marker="osD^vP*Xhp<>"[i % 12], linewidth=0.8,
                   label=f"{r['model']} ({r['train_images_per_s']:,.0f} img/s)")
        near = [q for q in rows[:i] if abs(math.log(q["macs"] / r["macs"])) < 0.3 and
                abs(math.log(q["params"] / r["params"])) < 0.3]
        at = near[0] if near else r  # a cluster's labels stack beside its first model
        ax.annotate(r["model"], (at["macs"] / 1e6, at["params"] / 1e6), fontsize=7,
                    xytext=(10, 2 - 9 * len(near)), textcoords="offset points")
    ax.legend(title="model (training speed: dot size)", loc="upper left",
              bbox_to_anchor=(1.01, 1), fontsize=7)
    ax.margins(x=0.2, y=0.15)
    ax.set(xscale="log", yscale="log", xlabel="multiply-adds per image (millions)",
           ylabel="parameters (millions)", title=title)
    ax.grid(alpha=0.3, which="both")
    return fig


def plot_accuracy_vs_cost(table, title):
    """The classic chart: test accuracy of each trained model against its mult-adds."""
    fig, ax = common.subplots(figsize=(6.5, 4.5))
    for r in (r for r in table if r["test_acc"] is not None):
        ax.scatter(r["macs"] / 1e6, r["test_acc"], s=40)
        ax.annotate(r["model"], (r["macs"] / 1e6, r["test_acc"]), fontsize=8,
                    xytext=(5, 5), textcoords="offset points")
    ax.set(xscale="log", ylim=(0, 100), xlabel="multiply-adds per image (millions)",
           ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3, which="both")
    return fig


# ============================================================================ design rules

def inception_bottleneck():
    """GoogLeNet's module 3a (28x28x192 input) with and without the 1x1 reductions."""
    x, out = torch.zeros(1, 192, 28, 28), {}
    for reduce in (True, False):
        m = Inception(192, 64, 96, 128, 16, 32, 32, reduce=reduce).eval()
        with torch.no_grad():
            channels = m(x).shape[1]
        out[reduce] = {"params": common.count_params(m), "macs": common.count_macs(m, x),
                       "out_channels": channels}
    return out


def first_layer_grad_norm(model, seed=0, batch=32):
    """Norm of the loss gradient reaching the first conv at initialisation."""
    torch.manual_seed(seed)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    model.train()
    F.cross_entropy(model(x), y).backward()
    return model.stem[0].weight.grad.norm().item()


def design_rules(log=print):
    common.section("Design rules in numbers")
    inc = inception_bottleneck()
    r, n = inc[True], inc[False]
    log(f"Inception 3a (28x28x192 in): with 1x1 bottlenecks {r['params']:,} params, "
        f"{r['macs'] / 1e6:.0f}M mult-adds,\n  {r['out_channels']} channels out; without: "
        f"{n['params']:,} params, {n['macs'] / 1e6:.0f}M mult-adds, {n['out_channels']} channels")
    log(f"  lesson: thinning the channels with 1x1 convs first cuts the cost "
        f"{n['macs'] / r['macs']:.1f}x,\n  and the output no longer grows by the whole input")
    torch.manual_seed(0)
    base, se = common.count_params(ResNet(20)), common.count_params(ResNet(20, block=SEBasicBlock))
    macs = image_macs(ResNet(20)), image_macs(ResNet(20, block=SEBasicBlock))
    log(f"SE block: ResNet-20 {base:,} params, SE-ResNet-20 {se:,}: a channel-wise gate costs "
        f"two small\n  FC layers per block, +{100 * (se - base) / base:.1f}% parameters and "
        f"+{100 * (macs[1] - macs[0]) / macs[0]:.2f}% multiply-adds")
    grads = {}
    for depth in (20, 56):
        for residual in (False, True):
            torch.manual_seed(0)
            grads[(depth, residual)] = first_layer_grad_norm(ResNet(depth, residual=residual))
        log(f"gradient norm reaching the first conv at initialisation, depth {depth}: plain "
            f"{grads[(depth, False)]:.3g}, residual {grads[(depth, True)]:.3g}")
    log(f"  lesson: from 20 to 56 layers it changes {grads[(56, False)] / grads[(20, False)]:.3g}x "
        f"without shortcuts, {grads[(56, True)] / grads[(20, True)]:.3g}x with them\n"
        f"  (one batch of noise). With batch norm in every layer a deep plain net's gradient "
        f"explodes at\n  initialisation (Yang et al. 2019, 'A Mean Field Theory of Batch "
        f"Normalization'); the slide's\n  vanishing gradient is the deep net without it. The "
        f"shortcuts carry the gradient around each block")
    dense, growth = DenseNet(100, 12), []
    for i, block in enumerate((dense.block1, dense.block2, dense.block3), 1):
        growth.append((block[0].net[0].num_features, len(block), block.out_channels))
        log(f"DenseNet-BC-100 block {i}: {growth[-1][0]} channels in + {len(block)} layers x 12 "
            f"= {block.out_channels} out" + (", halved by the transition" if i < 3 else ""))
    log("  lesson: each layer adds only k = 12 new maps and reuses all earlier ones; the "
        "transitions' 0.5\n  compression keeps the width in check")
    return {"inception_3a": {"with_1x1": r, "without_1x1": n},
            "se_overhead": {"resnet20": base, "seresnet20": se}, "densenet_growth": growth,
            "first_layer_grad_norm": {f"{'residual' if r else 'plain'}{d}": g
                                      for (d, r), g in grads.items()}}


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
    fig, ax = common.subplots(figsize=(8.5, 4.8))
    years = [y for y, *_ in IMAGENET_TOP5]
    ax.bar(years, [e for _, _, e, _ in IMAGENET_TOP5],
           color=["#999"] * 2 + ["#3a7"] * (len(years) - 2))
    ax.axhline(HUMAN_TOP5[0], color="crimson", ls="--", zorder=1,
               label=f"human, about {HUMAN_TOP5[0]:g}% (Russakovsky et al. 2015)")
    for year, _, err, _ in IMAGENET_TOP5:  # the value above its bar, on white over the line
        ax.annotate(f"{err:g}%", (year, err), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 3), textcoords="offset points", zorder=3,
                    bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none"))
    ax.set_xticks(years, [f"{y}\n{entry.replace(' (', chr(10) + '(')}"
                          for y, entry, *_ in IMAGENET_TOP5], fontsize=7)
    ax.set(ylabel="top-5 error (%)", ylim=(0, 33), xlabel="grey: before CNNs; green: CNN "
           "winners (sources: IMAGENET_TOP5 in 04_case_studies.py)", title=title)
    ax.legend(loc="upper right", fontsize=8)
    return fig


# ============================================================================ --train

def train_model(name, build_model, lr, l2, args, device, precision, partition, out, epochs,
                seed=None, augment=None, **recipe):
    """One run of --train or --claim through the shared helper: SGD with Nesterov momentum
    0.9 on a one-cycle schedule unless recipe changes it. Returns what train_and_save does."""
    settings = {"optim": "SGD", "momentum": 0.9, "lr": lr, "l2": l2, "epochs": epochs,
                "schedule": "onecycle", **recipe}
    run = {"model": name, "seed": args.seed if seed is None else seed,
           "precision": precision, "augment": args.augment if augment is None else augment,
           "train_batch_size": args.batch_size, "test_batch_size": 500}
    return common.train_and_save(name, build_model, settings, run, partition, device, out,
                                 args.show)


def train_models(names, args, device, precision):
    """--train: the named models, each with its own lr and weight decay (or --lr/--l2), in
    one new folder with a table, their val curves and accuracy against cost."""
    partition = common.load_data(args)
    tag, epochs = common.data_tag(partition["kind"]), args.epochs or 30
    out = common.reserve(os.path.join(common.out_root(args.out_dir, partition),
                                      "04_case_studies", "train"))
    rows, status = [], 0
    for name in names:
        ctor, lr, l2 = model_spec(name)
        aux = name == "googlenet" and args.aux
        net, result, _, code = train_model(
            name, functools.partial(GoogLeNet, aux=True) if aux else ctor, args.lr or lr,
            l2 if args.l2 is None else args.l2, args, device, precision, partition, out, epochs)
        status = code or status  # a diverged model is kept in the exit code
        rows.append({"model": name, "test_acc": result["test_acc"], "val_acc": result["val_acc"],
                     "params": common.count_params(net), "macs": image_macs(ctor()),
                     "status": result["status"], "val_accs": result["val_accs"]})
        if code in (1, 130):
            break
    common.print_table(rows, [("model", "model", "s"), ("test acc", "test_acc", ".2f"),
                              ("val acc", "val_acc", ".2f"), ("params", "params", ",d"),
                              ("status", "status", "s")], tag)
    common.save_json({"data": partition["kind"], "epochs": epochs, "models": rows,
                      **common.environment(device, precision)}, os.path.join(out, "results.json"))
    title = f"{common.epochs_text(epochs)}{tag}"
    common.save_figure(common.plot_curves([("val accuracy (%)", {r["model"]: r["val_accs"]
                                                                 for r in rows})],
                                          f"val accuracy, {title}"),
                       os.path.join(out, "val_accuracy.png"), args.show)
    common.save_figure(plot_accuracy_vs_cost(rows, f"test accuracy vs cost, {title}"),
                       os.path.join(out, "accuracy_vs_cost.png"), args.show)
    print(f"table and figures: {out}/")
    return status


# ============================================================================ the slides' claims
# A claim is a row of CLAIMS: the paper, the runs it trains for every seed, its parts, its
# budgets, what changes its verdict. One rule, fixed before any run, decides every part: two
# runs compared by one metric at the end of training; it holds when the claimed gain beats
# the seed spread + MARGIN points, is contradicted when the opposite gain does, and is
# inconclusive otherwise: within noise, or no power when a run it names as 'learned' stayed
# below LEARNED% val (chance: 10%). A part that claims no difference ('same') holds when
# |gain| + spread stays under SAME points and is contradicted when |gain| beats the spread
# + MARGIN. A part with 'full_because' is not trained at the quick budget.

MARGIN, LEARNED, SAME = 1.0, 25.0, 5.0  # SAME: twice the BN pair's spread on seeds 123/124
METRICS = {  # name: (the number read from a run's result, lower is better)
    "final training error (%)": (lambda r: 100 - r["train_accs"][-1], True),
    "best val accuracy (%)": (lambda r: r["val_acc"] or 0.0, False),
    "train - val accuracy, eval mode (points)":
        (lambda r: r["train_acc_eval"] - (r["val_acc"] or 0.0), True),
}
# the per-channel mean and std of CIFAR-10's training images, 0-1 scale
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class CudaConvnet(nn.Module):
    """The network of AlexNet's Figure 1: cuda-convnet's layers-19pct.cfg for CIFAR-10.
    paper=True also takes its init (N(0, 1e-4) in conv1, N(0, 1e-2) elsewhere, biases 0) and
    inputs (raw 0-255 pixels minus the per-channel mean, not the mean image); paper=False
    takes Glorot (tanh) or He (relu) init and standardised inputs."""

    def __init__(self, act="relu", paper=True, num_classes=10):
        super().__init__()
        f = {"relu": nn.ReLU, "tanh": nn.Tanh}[act]
        # padding 0: the same numbers either way on CPU and CUDA; False avoids the MPS path
        # that gave wrong values before torch 2.9 (pytorch PR 161011)
        cut = dict(count_include_pad=False)
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), f(),
            nn.Conv2d(32, 32, 5, padding=2), f(), nn.AvgPool2d(3, 2, ceil_mode=True, **cut),
            nn.Conv2d(32, 64, 5, padding=2), f(), nn.AvgPool2d(3, 2, ceil_mode=True, **cut),
            nn.Flatten(), nn.Linear(64 * 4 * 4, num_classes))
        # one affine map per channel turns our (x - 0.5) / 0.5 into the inputs wanted
        mean, std = torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD)
        scale, shift = (torch.full((3,), 127.5), 127.5 - 255 * mean) if paper else \
            (0.5 / std, (0.5 - mean) / std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1))
        self.register_buffer("shift", shift.view(1, 3, 1, 1))
        for i, m in enumerate(m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))):
            if paper:
                nn.init.normal_(m.weight, 0.0, 1e-4 if i == 0 else 1e-2)
            elif act == "relu":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):                     # (B, 3, 32, 32) -> 16x16 -> 8x8 -> 4x4
        return self.features(x * self.scale + self.shift)   # (B, 10)


def cost_3x3_vs_5x5():
    """The arithmetic part of the 3x3 claim: weights and mult-adds of the two SmallVGGs."""
    (p3, m3), (p5, m5) = [(common.count_params(SmallVGG(k)), image_macs(SmallVGG(k)))
                          for k in (3, 5)]
    return f"3x3: {p3:,} params, {m3 / 1e6:.1f}M mult-adds; 5x5: {p5:,}, {m5 / 1e6:.1f}M", \
        p3 < p5 and m3 < m5, {"parameters": {"two 3x3": p3, "one 5x5": p5},
                              "mult-adds per image": {"two 3x3": m3, "one 5x5": m5}}


# Each (activation, setup)'s lr: the lowest training error after 3 epochs on the quick
# budget's 5,000 images among 3e-4, 1e-3, 3e-3, 1e-2, 3e-2 (seed 123, 2026-11-30).
RELU_LRS = {("relu", "paper"): 3e-3, ("tanh", "paper"): 3e-2,
            ("relu", "modern"): 3e-3, ("tanh", "modern"): 3e-2}
# The same lr for both nets, then 10x it. At 10x without a warm-up BN was bistable (seeds
# 1000/1001: 10.3 and 31.2% val), so that part warms up (one-cycle, the same for both nets):
# on seeds 123/124 BN 61.06, 59.20 vs plain 45.22, 51.36 (2026-12-04); no clipping.
BN_LRS = {0.01: "none", 0.1: "onecycle"}  # lr: schedule


def run(net, lr, l2, recipe=None, **args):  # a run of a claim: net(**args) trained at lr, l2
    return dict(net=net, args=args, lr=lr, l2=l2, recipe=recipe or {})


def relu_part(setup, text):  # a part of the relu claim, for one setup
    return dict(name=f"ReLU ends with a lower training error than tanh ({text})",
                metric="final training error (%)", better=f"relu_{setup}", than=f"tanh_{setup}")


def bn_part(lr):  # a part of the batchnorm claim, for one lr
    warm = " (after a warm-up)" if BN_LRS[lr] == "onecycle" else ""
    return dict(name=f"at lr {lr:g}{warm} the net with batch norm reaches a higher val accuracy",
                metric="best val accuracy (%)", better=f"bn_lr{lr:g}", than=f"plain_lr{lr:g}",
                learned=(f"bn_lr{lr:g}",))


CLAIMS = {
    "relu": dict(
        paper="Krizhevsky, Sutskever and Hinton 2012 (NIPS), section 3.1 and Figure 1: a "
              "four-layer CNN with ReLUs reaches 25% training error on CIFAR-10 six times "
              "faster than with tanh (about 6 vs 36 epochs); no regularisation",
        runs={f"{a}_{s}": run(CudaConvnet, RELU_LRS[a, s], 0.0, act=a, paper=s == "paper")
              for s in ("paper", "modern") for a in ("relu", "tanh")},
        recipe=dict(schedule="none", augment=False),
        parts=[relu_part("paper", "the paper's network, init and inputs")],
        conditions=[relu_part("modern", "the same network with Glorot/He init and "
                                        "standardised inputs")],
        budgets={"quick": (5000, 10), "full": (None, 40)},
        changes="the init and inputs (the condition beside it): under the paper's tiny init "
                "tanh stays nearly linear; Glorot/He init makes it non-linear from the start"),
    "degradation": dict(
        paper="He, Zhang, Ren, Sun 2016 (CVPR), Figures 1 and 6: on CIFAR-10 the 56-layer "
              "plain net has a higher training error than the 20-layer one; with shortcuts "
              "the deeper net trains and ends better (Table 6: ResNet-20 8.75%, ResNet-56 "
              "6.97% test error)",
        runs={n: run(*model_spec(n)) for n in ("plain20", "plain56", "resnet20", "resnet56")},
        parts=[dict(name="deeper plain trains worse: plain-56 ends with a higher training "
                         "error than plain-20", metric="final training error (%)",
                    better="plain20", than="plain56", learned=("plain20",)),
               dict(name="shortcuts fix it: ResNet-56 ends with a lower training error than "
                         "plain-56", metric="final training error (%)", better="resnet56",
                    than="plain56", learned=("resnet56",),
                    full_because="at 2,000 images and 4 epochs ResNet-56 reached 18.5% val "
                                 "(seeds 123/124): it has not learned yet"),
               dict(name="deeper residual is better: ResNet-56 reaches a higher val "
                         "accuracy than ResNet-20", metric="best val accuracy (%)",
                    better="resnet56", than="resnet20",
                    full_because="an end-of-schedule effect: ResNet-56 first passes "
                                 "ResNet-20 after about 26 of the paper's 164 epochs")],
        budgets={"quick": (2000, 4), "full": (None, 40)},
        changes="the budget: the first part is an early effect (minutes); the others need the "
                "full schedule. Batch norm in every block is what lets plain-56 train at all"),
    "batchnorm": dict(
        paper="Ioffe and Szegedy 2015 (ICML), Figure 2: batch norm alone reached Inception's "
              "72.2% in 13.3M steps instead of 31.0M, and at a 5x higher lr in 2.1M (14x "
              "fewer); without it the higher rate does not train",
        runs={f"{kind}_lr{lr:g}": run(VGG, lr, 5e-4, dict(schedule=schedule), cfg=CNN_CFG,
                                      batch_norm=kind == "bn")
              for lr, schedule in BN_LRS.items() for kind in ("plain", "bn")},
        recipe=dict(augment=False),
        parts=[bn_part(lr) for lr in BN_LRS],
        budgets={"quick": (5000, 10), "full": (None, 30)},
        changes="the net and the lr: the lecture's CNN (03) stands in for Inception; at a low "
                "lr the gap is BN's speed-up, at 10x that lr (warmed up) how far the plain "
                "net falls behind; without the warm-up one BN seed in two stayed at chance"),
    "aux": dict(
        paper="Szegedy et al. 2015 added side classifiers (loss weight 0.3) against vanishing "
              "gradients; with batch norm, Szegedy et al. 2016 (Inception-v3, section 4) found "
              "training with and without them 'virtually identical' until high accuracy",
        runs={f"{b}{a}": run(SmallInception, 0.05, 5e-4, bn=b == "bn", aux=a == "_aux")
              for b in ("plain", "bn") for a in ("", "_aux")},
        recipe=dict(augment=False),
        parts=[dict(name="without batch norm, the side classifier lowers the final training "
                         "error", metric="final training error (%)", better="plain_aux",
                    than="plain", full_because="without BN the nets leave their plateau at "
                    "random: at 8,000 images and 6 epochs plain ended at 64.5 and 79.5% "
                    "training error on seeds 5000/5001, a spread of 15 points"),
               dict(name="with batch norm, the side classifier makes no difference to the "
                         "final training error", metric="final training error (%)",
                    better="bn_aux", than="bn", same=True)],
        # seeds 123/124 (2026-12-05): no BN 63.75, 63.79 vs 69.34, 72.19; BN 41.35, 43.83 vs
        # 43.19, 44.24; fresh seeds 5000/5001 gave the spread in part 1's full_because
        budgets={"quick": (8000, 6), "full": (None, 30)},
        changes="batch norm, the 2x2's other axis; late in a long run the side head acts as a "
                "regulariser (Inception-v3), which minutes do not reach"),
    "3x3": dict(
        paper="Simonyan and Zisserman 2015 (ICLR), sections 2.3 and 4.1: two 3x3 convs see "
              "what one 5x5 sees with 18C^2 instead of 25C^2 weights and one more ReLU; net "
              "B with each pair replaced by a 5x5 had 7% higher top-1 error on ImageNet",
        runs={n: run(*model_spec(n)) for n in ("vgg3x3", "vgg5x5")},  # MODELS' lr and l2
        parts=[dict(name="two 3x3 convs cost less than one 5x5", fixed=cost_3x3_vs_5x5),
               dict(name="two 3x3 convs reach a higher val accuracy than one 5x5",
                    metric="best val accuracy (%)", better="vgg3x3", than="vgg5x5",
                    full_because="at 4,000 images and 7 epochs the 5x5 net was 2.09 points "
                                 "ahead, within the seed spread 2.07 + 1; such gaps need "
                                 "hundreds of epochs")],
        budgets={"quick": (4000, 7), "full": (None, 30)},
        changes="the budget: a few points after hundreds of epochs are below what minutes resolve"),
    "regularization": dict(
        paper="Krizhevsky, Sutskever and Hinton 2012, section 4.2: 'without dropout, our "
              "network exhibits substantial overfitting'",
        runs={"no_dropout": run(AlexNet, 0.02, 0.0, dropout=0.0),
              "dropout": run(AlexNet, 0.02, 0.0, dropout=0.5)},
        recipe=dict(augment=False),
        parts=[dict(name="dropout shrinks the gap between training and val accuracy (both "
                         "measured in eval mode, on the best epoch's weights)",
                    metric="train - val accuracy, eval mode (points)", better="dropout",
                    than="no_dropout")],
        budgets={"quick": (1000, 12), "full": (5000, 60)},
        changes="the data: overfitting needs a training set the net can memorise (few images, "
                "no augmentation); with more data the gap shrinks on its own"),
}


def decide(part, results, quick):
    """One part under the one rule: name, rule, ours, verdict, reason (and the numbers)."""
    if "fixed" in part:
        ours, true, numbers = part["fixed"]()
        return dict(name=part["name"], rule="arithmetic, no seeds: holds when it is true",
                    ours=ours, verdict="holds" if true else "contradicted", reason=None,
                    numbers=numbers)
    read, lower = METRICS[part["metric"]]
    a, b, same = part["better"], part["than"], part.get("same")
    rule = (f"|{a}'s mean {part['metric']} - {b}'s| + the seed spread under {SAME:g}" if same
            else f"{a}'s mean {part['metric']} {'below' if lower else 'above'} {b}'s by more "
                 f"than the seed spread + {MARGIN:g}") + \
        f"; no power if {' or '.join(part.get('learned', (a, b)))} stays under {LEARNED:g}% val"
    if quick and part.get("full_because"):
        return dict(name=part["name"], rule=rule, ours="not trained at the quick budget",
                    verdict="inconclusive", reason=f"needs --budget full: {part['full_because']}",
                    skipped=True)
    values = {r: [round(read(res), 2) for res in results[r]] for r in (a, b)}
    mean = {r: sum(v) / len(v) for r, v in values.items()}
    gain = (mean[b] - mean[a]) * (1 if lower else -1)
    spread = max(max(v) - min(v) for v in values.values())
    weak = [f"{r} best val {best:.1f}%" for r in part.get("learned", (a, b))
            if (best := sum(res["val_acc"] or 0.0 for res in results[r]) / len(results[r]))
            < LEARNED]
    verdict, reason = "inconclusive", None
    if weak:
        reason = f"no power: {', '.join(weak)} (must pass {LEARNED:g}%)"
    elif same and abs(gain) + spread < SAME:
        verdict = "holds"
    elif abs(gain) > spread + MARGIN:
        verdict = "contradicted" if same or gain < 0 else "holds"
    else:
        reason = f"within noise: the gain {gain:+.2f} does not beat {spread:.2f} + {MARGIN:g}" + \
            (f", nor |gain| + spread stay under {SAME:g}" if same else "")
    ours = "; ".join(f"{r} {', '.join(f'{v:g}' for v in values[r])}" for r in (a, b)) + \
        f"; gain {gain:+.2f}, seed spread {spread:.2f}"
    return dict(name=part["name"], rule=rule, ours=ours, verdict=verdict, reason=reason,
                values=values, gain=round(gain, 2), seed_spread=round(spread, 2))


def claim_verdict(parts):
    """holds when every counted part holds, contradicted when one is, else inconclusive;
    parts skipped at the quick budget do not count. Returns (verdict, which parts: text)."""
    counted = [p["verdict"] for p in parts if not p.get("skipped")]
    verdict = ("inconclusive" if not counted else "contradicted" if "contradicted" in counted
               else "holds" if set(counted) == {"holds"} else "inconclusive")
    def named(ids):  # "part 1", "parts 2 and 3"
        return f"part {ids[0]}" if len(ids) == 1 else f"parts {', '.join(ids[:-1])} and {ids[-1]}"

    skipped = [str(i) for i, p in enumerate(parts, 1) if p.get("skipped")]
    tested = [str(i) for i, p in enumerate(parts, 1) if not p.get("skipped")]
    which = f"for {named(tested)}" if tested else "nothing tested"
    return verdict, which + (f"; {named(skipped)} need{'s' * (len(skipped) == 1)} --budget full"
                             if skipped else "")


def measure_claim(name, args, device, precision):
    """--claim NAME: train its runs for every seed, decide its parts, print, plot, save."""
    claim, started = CLAIMS[name], time.perf_counter()
    quick = args.budget == "quick" and args.limit is None and args.epochs is None
    limit, epochs = claim["budgets"][args.budget]
    limit, epochs = args.limit or limit, args.epochs or epochs
    budget = args.budget if args.limit is None and args.epochs is None else "custom"
    parts, conditions = claim["parts"], claim.get("conditions", [])
    needed = {p[k] for p in parts + conditions for k in ("better", "than")
              if "fixed" not in p and not (quick and p.get("full_because"))}
    seeds, results = list(range(args.seed, args.seed + args.seeds)), {}
    partition = common.load_data(args, limit) if needed else {"kind": None}  # 3x3: no data
    folder = common.reserve(os.path.join(common.out_root(args.out_dir, partition),
                                         "04_case_studies", "claims", name))  # NAME.json beside
    print(textwrap.fill(f"claim {name}: {claim['paper']}", width=100))
    for run in (r for r in claim["runs"] if r in needed):
        row = claim["runs"][run]
        for seed in seeds:
            net, result, _, code = train_model(
                f"{run}_seed{seed}", lambda: row["net"](**row["args"]), row["lr"], row["l2"],
                args, device, precision, partition, folder, epochs, seed=seed,
                **{**claim.get("recipe", {}), **row["recipe"]})
            if code in (1, 130):
                print(f"claim {name}: not all runs finished; no verdict", file=sys.stderr)
                return code
            if any("eval mode" in p.get("metric", "") for p in parts):  # the same weights
                result["train_acc_eval"] = common.validate(
                    net, common.DeviceLoader(*partition["train"], 500, device),
                    nn.CrossEntropyLoss(), device, common.AMP_DTYPES[precision])[1]
            results.setdefault(run, []).append(result)
    decided = [decide(p, results, quick) for p in parts]
    beside = [decide(p, results, quick) for p in conditions]
    (verdict, which), kind = claim_verdict(decided), partition["kind"]
    minutes = (time.perf_counter() - started) / 60
    wrap = functools.partial(textwrap.fill, width=100, subsequent_indent="    ")
    for label, group in (("part", decided), ("beside it, not in the verdict", beside)):
        for i, p in enumerate(group, 1):
            label = f"part {i}" if group is decided else label
            reason = f" ({p['reason']})" if p["reason"] else ""
            ours = p["ours"] + common.data_tag(kind)
            for line in (f"{label}: {p['name']}", f"  rule: {p['rule']}", f"  ours: {ours}",
                         f"  verdict: {p['verdict']}{reason}"):
                print(wrap(line))
    print(wrap(f"what changes this verdict: {claim['changes']}"))
    print(wrap(f"verdict: {verdict} {which} ({minutes:.1f} min, {len(seeds)} seeds, {budget} "
               f"budget: {limit or 'all'} images, {common.epochs_text(epochs)})"
               f"{common.data_tag(kind)}"))
    common.save_json({"claim": name, "paper": claim["paper"], "verdict": f"{verdict} {which}",
                      "parts": decided, "conditions": beside, "seeds": seeds,
                      "what_changes_this_verdict": claim["changes"], "minutes": round(minutes, 1),
                      "settings": {"budget": budget, "limit": limit, "epochs": epochs,
                                   "batch_size": args.batch_size, "augment": args.augment,
                                   "recipe": claim.get("recipe", {}), "data": kind},
                      **common.environment(device, precision),
                      "runs": {r: [{k: res[k] for k in ("train_losses", "val_losses",
                                                        "train_accs", "val_accs", "status")}
                                   for res in v] for r, v in results.items()}},
                     folder + ".json")
    title = f"{name}: {verdict} {which}"
    if results:
        fig = common.plot_curves(
            [("training error (%)", {r: [[100 - a for a in res["train_accs"]] for res in v]
                                     for r, v in results.items()}, epochs),
             ("val accuracy (%)", {r: [res["val_accs"] for res in v]
                                   for r, v in results.items()}, epochs)],
            f"{title}\n{len(seeds)} seeds: band = min-max{common.data_tag(kind)}")
    else:  # nothing trained: the arithmetic parts' numbers, as bars
        os.rmdir(folder)  # no empty run folder; NAME.json is the same every time
        bars = [(f"part {i}: {k}", v) for i, p in enumerate(decided, 1) for k, v in
                p.get("numbers", {}).items()]
        fig, axes = common.subplots(1, len(bars), figsize=(4 * len(bars), 3.2), squeeze=False)
        for ax, (label, values) in zip(axes[0], bars):
            ax.bar_label(ax.bar(*zip(*values.items()), color=["C0", "C1"]), fmt="{:,.0f}")
            ax.set(title=label, ylim=(0, 1.15 * max(values.values())), yticks=[])
        fig.suptitle("\n".join([title] + [f"part {i}: {p['name']}" for i, p in
                                           enumerate(decided, 1) if "numbers" in p]))
    common.save_figure(fig, folder + ".png", args.show)
    print(f"saved {folder}.json, {folder}.png")
    return 0


# ============================================================================ command line

def main(argv=None):
    args = parse_args(argv)
    device, precision = common.start(args)
    if args.train:
        return train_models(args.train, args, device, precision)
    if args.claim:
        return measure_claim(args.claim, args, device, precision)
    common.section(f"3.4 Case studies on 32x32 inputs, device {device}, {precision}")
    rows, facts, status = [], None, "completed"
    try:
        compare(MODELS, device, precision, rows=rows)
        facts = design_rules()
    except KeyboardInterrupt:
        status = "interrupted"
        print(f"{len(rows)} of {len(MODELS)} models measured: stopped", file=sys.stderr)
    out = os.path.join(args.out_dir, "04_case_studies")  # measured anew each time: replaced
    os.makedirs(out, exist_ok=True)
    common.save_json({**common.environment(device, precision), "status": status,
                      "models": rows, "design_rules": facts}, os.path.join(out, "compare.json"))
    if rows:
        common.save_figure(plot_compare(rows, f"size vs cost ({device}, {precision})"),
                           os.path.join(out, "compare.png"), args.show)
    common.save_figure(plot_imagenet(), os.path.join(out, "imagenet_top5.png"), args.show)
    print(f"saved {out}/compare.json, compare.png, imagenet_top5.png")
    return 130 if status == "interrupted" else 0


def build_parser():
    p = common.Parser(description="3.4 case studies: compare LeNet-5 ... SE-ResNet (default), "
                      "train some with --train, or measure a slide's claim with --claim.")
    p.add_argument("--train", nargs="+", metavar="NAME",
                   help=f"train these models (or 'all'): {', '.join(MODELS)}, and resnet<6n+2>, "
                        f"seresnet<6n+2>, plain<6n+2> up to 1202 layers")
    p.add_argument("--epochs", type=common.positive_int,
                   help="epochs (--train: 30; --claim: the budget's)")
    p.add_argument("--batch-size", type=common.positive_int, default=128,
                   help="images per training step")
    p.add_argument("--lr", type=common.positive_float,
                   help="--train: one peak lr for every model (default: each model's own)")
    p.add_argument("--l2", type=common.non_negative_float,
                   help="--train: one weight decay for every model (default: each model's own)")
    common.add_training_args(p)
    p.add_argument("--aux", action="store_true",
                   help="--train googlenet with its auxiliary classifier (loss weight 0.3)")
    p.add_argument("--claim", choices=tuple(CLAIMS),
                   help="measure one of the slides' claims, with a verdict (README)")
    p.add_argument("--budget", choices=("quick", "full"), default="quick",
                   help="--claim: quick, about 10 minutes on 2 CPU cores; full, for a GPU")
    p.add_argument("--seeds", type=common.positive_int, default=2,
                   help="--claim: train every run with this many seeds (at least 2)")
    common.add_data_args(p)
    common.add_output_args(p)
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.claim and args.train:
        parser.error("--claim and --train: give one of them")
    if args.seeds < 2:
        parser.error("--seeds: give at least 2; an effect counts only beyond the seed spread")
    if args.claim and (args.lr is not None or args.l2 is not None):
        parser.error("--claim uses each network's own lr and weight decay; drop --lr/--l2")
    if args.train:
        if "all" in args.train and len(args.train) > 1:
            parser.error("--train: give 'all' alone, or a list of model names")
        names = list(MODELS) if args.train == ["all"] else args.train
        unknown = [n for n in names if model_spec(n) is None]
        if unknown:
            parser.error(f"unknown model {', '.join(unknown)}; choose from {', '.join(MODELS)}, "
                         f"resnet<6n+2>, seresnet<6n+2>, plain<6n+2> (up to 1202), or all")
        args.train = list(dict.fromkeys(names))
    return args


if __name__ == "__main__":
    common.launch(main)

"""3.3.5 A ConvNet for CIFAR-10: the lecture's CNN, trained and measured.

    python 03_cnn_train.py                      # default recipe, 40 epochs
    python 03_cnn_train.py --epochs 10          # a shorter run
    python 03_cnn_train.py --lr 0.1 0.03 0.01   # the lecture's exp1_lr: one run per lr
    python 03_cnn_train.py --benchmark          # one epoch: this data path vs the notebook's

Everything a run makes goes to runs/<exp-name>/ (see README).
"""
import argparse
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


# 3.3.5 conv -> ReLU -> conv -> ReLU -> pool, three times, then one fully connected layer
class CNN(nn.Module):
    """The lecture's ConvNet for 32x32 CIFAR-10 images (82,330 parameters).

    Three stages of two 3x3 'same' convolutions and a 2x2 max pool; each pool halves the
    map and the next stage doubles the channels (16, 32, 64), as VGG does.
    """

    def __init__(self, num_classes=10, init="kaiming"):
        super().__init__()
        self.conv1_1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1_2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2_1 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv2_2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3_1 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3_2 = nn.Conv2d(64, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 64, num_classes)
        if init == "kaiming":
            self.kaiming_init()

    def kaiming_init(self):
        """He et al. 2015 initialisation for ReLU layers: weights ~ N(0, 2 / fan_in)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):                       # (B, 3, 32, 32)
        x = F.relu(self.conv1_1(x))             # (B, 16, 32, 32)
        x = self.pool(F.relu(self.conv1_2(x)))  # (B, 16, 16, 16)
        x = F.relu(self.conv2_1(x))             # (B, 32, 16, 16)
        x = self.pool(F.relu(self.conv2_2(x)))  # (B, 32, 8, 8)
        x = F.relu(self.conv3_1(x))             # (B, 64, 8, 8)
        x = self.pool(F.relu(self.conv3_2(x)))  # (B, 64, 4, 4)
        x = torch.flatten(x, 1)                 # (B, 1024)
        return self.fc(x)                       # (B, 10)


# The lecture's own settings; the defaults below differ because the lecture's plain SGD
# at lr=1e-3 only learned through its gradient-accumulation bug (see README).
LECTURE_SETTINGS = dict(optim="SGD", lr=[1e-3], momentum=0.0, l2=1e-5, schedule="none",
                        augment=False, label_smoothing=0.0, clip_grad=0.0, test_batch_size=32,
                        init="pytorch")


def build_parser():
    p = argparse.ArgumentParser(
        description="Train the lecture's CNN (3.3.5) on CIFAR-10 and save curves, "
                    "results and figures under --out-dir/--exp-name.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--exp-name", default="cnn", help="run folder name under --out-dir")
    p.add_argument("--optim", choices=("SGD", "RMSprop", "Adam"), default="SGD",
                   help="optimizer (SGD uses Nesterov momentum when --momentum > 0)")
    p.add_argument("--momentum", type=common.non_negative_float, default=0.9,
                   help="momentum for SGD and RMSprop")
    p.add_argument("--lr", type=common.positive_float, nargs="+", default=[0.05],
                   help="learning rate (peak rate of the schedule); several values run "
                        "one experiment each and a figure compares them")
    p.add_argument("--l2", type=common.non_negative_float, default=5e-4,
                   help="L2 penalty (weight decay)")
    p.add_argument("--schedule", choices=("onecycle", "cosine", "none"), default="onecycle",
                   help="learning-rate schedule: onecycle warms up for 20%% of the steps "
                        "then falls linearly to 0; cosine decays to 0; none keeps --lr")
    p.add_argument("--label-smoothing", type=common.non_negative_float, default=0.0,
                   help="cross-entropy label smoothing")
    p.add_argument("--clip-grad", type=common.non_negative_float, default=5.0,
                   help="clip the gradient norm to this value before each step (guards "
                        "the peak of the schedule against rare spikes); 0 turns it off")
    p.add_argument("--init", choices=("kaiming", "pytorch"), default="kaiming",
                   help="weight initialisation: kaiming (He et al. 2015, for ReLU) or "
                        "pytorch (the library's default, which the lecture used)")
    p.add_argument("--epochs", type=common.positive_int, default=40, help="training epochs")
    p.add_argument("--train-batch-size", type=common.positive_int, default=128,
                   help="images per training step")
    p.add_argument("--test-batch-size", type=common.positive_int, default=500,
                   help="batch size for val and test (speed only; the lecture used 32)")
    common.add_augment_amp_args(p)
    p.add_argument("--lecture", action="store_true",
                   help="use the lecture's exact settings (SGD, lr 1e-3, no momentum, "
                        "l2 1e-5, no schedule, no augmentation, no clipping, PyTorch's "
                        "default init, test batch 32); with the gradient bug fixed they "
                        "stay at chance for the first epochs")
    common.add_device_args(p)
    common.add_data_args(p)
    out = p.add_argument_group("output")
    out.add_argument("--out-dir", default="runs", help="folder for all runs")
    out.add_argument("--save-model", action="store_true",
                     help="also save model.pt (state_dict and settings)")
    out.add_argument("--show", action="store_true", help="also open the figures in windows")
    p.add_argument("--benchmark", action="store_true",
                   help="time one epoch (train + val) through this project's data path and "
                        "through the notebook's (PIL transforms, DataLoader rebuilt), print "
                        "both and their ratio, then exit")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.lecture:
        for key, value in LECTURE_SETTINGS.items():
            setattr(args, key, value)
    if len(set(args.lr)) != len(args.lr):
        parser.error("--lr: the values must differ")
    return args


def run_settings(args, lr):
    keys = ("optim", "momentum", "l2", "schedule", "label_smoothing", "clip_grad", "init",
            "epochs", "train_batch_size", "test_batch_size", "augment", "amp", "seed", "data",
            "limit")
    settings = {k: getattr(args, k) for k in keys}
    settings.update(model="CNN", lr=lr)
    return settings


def save_run(folder, net, settings, result, partition, device, loaders, args, log):
    """Every output of one run; returns the path of result.json."""
    tag = " [SYNTHETIC DATA]" if partition["kind"] == "synthetic" else ""
    name = os.path.basename(folder)
    common.plot_loss_variation(result, os.path.join(folder, "loss.png"),
                               f"{name}: loss{tag}", args.show)
    common.plot_acc_variation(result, os.path.join(folder, "accuracy.png"),
                              f"{name}: accuracy{tag}", args.show)
    classes = partition["classes"]
    per_class = None
    if result["test_acc"] is not None:
        preds, labels = common.predict(net, loaders["test"], device, args.amp)
        matrix = common.confusion_matrix(preds, labels, len(classes))
        common.plot_confusion(matrix, classes, os.path.join(folder, "confusion.png"),
                              f"{name}: confusion matrix (test){tag}", args.show)
        totals = matrix.sum(1).clamp(min=1)
        per_class = {c: round(100.0 * matrix[i, i].item() / totals[i].item(), 2)
                     for i, c in enumerate(classes)}
        log("per-class test accuracy: " +
            ", ".join(f"{c} {a:.1f}%" for c, a in per_class.items()))
    plot_filters(net.conv1_1.weight, os.path.join(folder, "filters.png"),
                 f"{name}: conv1_1 filters{tag}", args.show)
    if args.save_model:
        state = {k: v.cpu() for k, v in net.state_dict().items()}  # loads on any machine
        common.save_torch({"state_dict": state, "settings": settings},
                          os.path.join(folder, "model.pt"))
    secs = result["epoch_seconds"]
    record = {"settings": settings, "result": result, "per_class_test_acc": per_class,
              "device": str(device), "data": partition["kind"],
              "seconds_per_epoch": sum(secs) / len(secs) if secs else None,
              "status": result["status"], "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d")}
    return common.save_json(record, os.path.join(folder, "result.json"))


def plot_filters(weight, path, title="", show=False):
    """The 16 learned 3x3x3 filters of the first layer, each scaled to [0, 1] as RGB."""
    w = weight.detach().float().cpu()
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    w = (w - lo) / (hi - lo).clamp(min=1e-8)
    fig, axes = common.plt.subplots(2, 8, figsize=(8, 2.4))
    for ax, f in zip(axes.flat, w):
        ax.imshow(f.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.axis("off")
    fig.suptitle(title)
    return common.save_figure(fig, path, show)


def new_model(partition, device, init="kaiming"):
    return common.to_device(CNN(len(partition["classes"]), init), device)


def main(argv=None):
    args = parse_args(argv)
    if args.show:
        common.enable_show()
    device = common.device_or_exit(args.device)
    partition = common.data_or_exit(args)
    common.set_seed(args.seed)
    if args.benchmark:
        return benchmark(args, partition, device)
    print(f"device: {device}, data: {partition['kind']} "
          f"(train {len(partition['train'][1])}, val {len(partition['val'][1])}, "
          f"test {len(partition['test'][1])})")

    curves, status = {}, 0
    for lr in args.lr:
        name = args.exp_name if len(args.lr) == 1 else f"{args.exp_name}_lr{lr:g}"
        folder = os.path.join(args.out_dir, name)
        print(f"== {name}: {args.optim} lr={lr:g} epochs={args.epochs} -> {folder}")
        common.set_seed(args.seed)  # every lr starts from the same weights and data order
        net = new_model(partition, device, args.init)
        loaders = common.make_loaders(partition, device, args.train_batch_size,
                                      args.test_batch_size, args.augment, args.seed)
        settings = run_settings(args, lr)
        try:
            settings, result = common.experiment(net, loaders, settings, device)
        except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
            if not common.is_out_of_memory(err):
                raise
            print(f"error: out of memory on {device} with batch size "
                  f"{args.train_batch_size}; try a smaller --train-batch-size",
                  file=sys.stderr)
            return 1
        try:
            path = save_run(folder, net, settings, result, partition, device, loaders,
                            args, print)
        except KeyboardInterrupt:
            result["status"] = "interrupted"
            path = save_run(folder, net, settings, result, partition, device, loaders,
                            args, print)
        accs = ", ".join(f"{k} acc {result[k + '_acc']:.2f}%" for k in ("val", "test")
                         if result[k + "_acc"] is not None)
        print(f"{name}: status {result['status']}{', ' + accs if accs else ''}; saved {path}")
        curves[f"lr={lr:g}"] = result["val_accs"]
        if result["status"] == "interrupted":
            status = 130
            break
        if result["status"] == "diverged":
            status = status or 3
    if len(curves) > 1:
        tag = " [SYNTHETIC DATA]" if partition["kind"] == "synthetic" else ""
        path = common.plot_curves(curves, os.path.join(args.out_dir, f"{args.exp_name}_lr.png"),
                                  f"{args.exp_name}: val accuracy per lr{tag}",
                                  show=args.show)
        print(f"saved {path}")
    return status


# ----------------------------------------------------------------------------- benchmark

def notebook_epoch(net, partition, args, device, amp=None):
    """One epoch the notebook's way: a PIL image per sample through torchvision
    transforms, a DataLoader (num_workers=0) rebuilt for the epoch."""
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

    norm = [T.ToTensor(), T.Normalize(common.MEAN, common.STD)]
    aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if args.augment else []
    train_set = PILSet(*partition["train"], T.Compose(aug + norm))
    val_set = PILSet(*partition["val"], T.Compose(norm))
    loaders = {"train": torch.utils.data.DataLoader(train_set, args.train_batch_size,
                                                    shuffle=True, num_workers=0),
               "val": torch.utils.data.DataLoader(val_set, args.test_batch_size,
                                                  num_workers=0)}
    return timed_epoch(net, loaders, args, device, amp)


def timed_epoch(net, loaders, args, device, amp=None):
    """Seconds for one training epoch plus one validation pass."""
    amp = args.amp if amp is None else amp
    criterion = nn.CrossEntropyLoss()
    optimizer = common.make_optimizer(net.parameters(), args.optim, args.lr[0], args.l2,
                                      args.momentum)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    common.train(net, loaders["train"], optimizer, criterion, device, amp=amp)
    common.validate(net, loaders["val"], criterion, device, amp=amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def benchmark(args, partition, device):
    """Time one epoch (train + val) through both data paths in the same process."""
    print(f"benchmark: one epoch (train {len(partition['train'][1])} + val "
          f"{len(partition['val'][1])}), CNN, batch {args.train_batch_size}/"
          f"{args.test_batch_size}, augment={args.augment}, device {device}, "
          f"data {partition['kind']}, bf16 {args.amp and common.amp_supported(device)}")

    def fresh(layout=True):
        common.set_seed(args.seed)
        net = new_model(partition, device, args.init)
        return net if layout else net.to(memory_format=torch.contiguous_format)

    # warm-up on a few batches so one-time setup costs count for neither path
    small = {k: (x[:2 * args.train_batch_size], y[:2 * args.train_batch_size])
             for k, (x, y) in ((s, partition[s]) for s in ("train", "val", "test"))}
    timed_epoch(fresh(), common.make_loaders(small, device, args.train_batch_size,
                                             args.test_batch_size, args.augment), args, device)
    ours = timed_epoch(fresh(), common.make_loaders(partition, device, args.train_batch_size,
                                                    args.test_batch_size, args.augment,
                                                    args.seed), args, device)
    notebook = notebook_epoch(fresh(), partition, args, device)
    # the notebook as it ran: its data path and fp32 in the default memory layout
    as_written = notebook_epoch(fresh(layout=False), partition, args, device, amp=False)
    print(f"project data path            : {ours:8.2f} s/epoch")
    print(f"notebook data path           : {notebook:8.2f} s/epoch (same model settings)")
    print(f"notebook as written (fp32)   : {as_written:8.2f} s/epoch")
    print(f"ratio (project / notebook): {ours / notebook:.2f}x "
          f"(target: <= 0.75x on CPU, <= 0.2x on a GPU); "
          f"against the notebook as written: {ours / as_written:.2f}x")
    return 0


if __name__ == "__main__":
    common.run(main)

"""One epoch (train + val) of the lecture's CNN through this project's data path and through
the notebook's (PIL images through torchvision transforms in a DataLoader, num_workers=0),
in one process, after a warm-up; prints both and their ratio. Not collected by pytest:
python tests/benchmark.py [--device cuda] [--data synthetic]
"""
import importlib
import os
import sys
import time

import torch
import torch.nn as nn
import torchvision.transforms as T
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

CNN = importlib.import_module("03_cnn_train").CNN  # a module name may start with a digit here


class PILSet(torch.utils.data.Dataset):
    """The notebook's dataset: one PIL image per sample, transformed on the CPU."""

    def __init__(self, images, labels, transform):
        self.images, self.labels = images.permute(0, 2, 3, 1).numpy(), labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def notebook_loaders(part, batch=128, test_batch=500):
    norm = [T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)]
    aug = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] + norm)
    return {"train": torch.utils.data.DataLoader(PILSet(*part["train"], aug), batch, shuffle=True),
            "val": torch.utils.data.DataLoader(PILSet(*part["val"], T.Compose(norm)), test_batch)}


def timed_epoch(loaders, device, precision, layout=True):
    """Seconds for one training epoch and one validation pass, the device synchronised."""
    common.set_seed(0)
    net = common.to_device(CNN(), device, precision) if layout else CNN().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    dtype = common.AMP_DTYPES[precision]
    common.synchronize(device)
    start = time.perf_counter()
    common.train(net, loaders["train"], optimizer, nn.CrossEntropyLoss(), device, amp_dtype=dtype)
    common.validate(net, loaders["val"], nn.CrossEntropyLoss(), device, dtype)
    common.synchronize(device)
    return time.perf_counter() - start


def main(argv=None):
    args = common.Parser(description=__doc__.splitlines()[0])
    common.add_training_args(args)
    common.add_data_args(args)
    common.add_output_args(args)
    args = args.parse_args(argv)
    device, precision = common.start(args)
    part = common.load_data(args)
    small = common.get_data("synthetic", limit=300, log=lambda *_: None)  # every batch shape
    mine = dict(augment=True, precision=precision)
    for loaders in (common.make_loaders(small, device, **mine), notebook_loaders(small)):
        timed_epoch(loaders, device, precision)
    ours = timed_epoch(common.make_loaders(part, device, 128, 500, **mine), device, precision)
    theirs = timed_epoch(notebook_loaders(part), device, precision)
    as_written = timed_epoch(notebook_loaders(part), device, "fp32", layout=False)
    print(f"device {device}, {precision}, data {part['kind']}, train {len(part['train'][1])}")
    print(f"project data path         : {ours:8.2f} s/epoch")
    print(f"notebook data path        : {theirs:8.2f} s/epoch (same precision and layout)")
    print(f"notebook as written (fp32): {as_written:8.2f} s/epoch")
    print(f"ratio (project / notebook): {ours / theirs:.2f}x (target <= 0.75x on CPU, <= 0.2x "
          f"on a GPU); against the notebook as written: {ours / as_written:.2f}x")


if __name__ == "__main__":
    common.launch(main)

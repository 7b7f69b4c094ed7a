"""common.py: data, batches, augmentation and the train / validate / test loop."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import common
from conftest import CLASSES, load_script

CNN = load_script("03_cnn_train.py").CNN


# ----------------------------------------------------------------------------- data

def test_tiny_cifar_through_torchvision_loader(tiny_cifar):
    root, train, test = tiny_cifar
    part = common.get_data("cifar10", root, download=False, log=lambda *_: None)
    assert part["kind"] == "cifar10"
    assert part["classes"] == CLASSES
    # 300 train images -> 240 train / 60 val (the lecture's 4:1), test untouched
    assert [len(part[s][1]) for s in ("train", "val", "test")] == [240, 60, 100]
    for split in ("train", "val", "test"):
        x, y = part[split]
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32)
        assert y.dtype == torch.long
    # the test images are the pickled rows, reshaped (3, 32, 32) as CIFAR stores them
    data, labels = test
    assert torch.equal(part["test"][0], torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert part["test"][1].tolist() == labels
    # train + val together are exactly the 300 training images, none twice
    all_rows = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32)
    seen = torch.cat([part["train"][0], part["val"][0]]).flatten(1)
    expect = torch.from_numpy(all_rows).flatten(1)
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, expect.tolist()))


def test_split_is_seeded(tiny_cifar):
    root = tiny_cifar[0]
    a = common.get_data("cifar10", root, download=False)
    b = common.get_data("cifar10", root, download=False)
    assert torch.equal(a["val"][0], b["val"][0])


def test_missing_cifar_raises_one_clear_line(tmp_path):
    with pytest.raises(common.DataError) as err:
        common.get_data("cifar10", str(tmp_path), download=False)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "cifar-10-python.tar.gz" in message


def test_corrupt_cifar_raises(tiny_cifar):
    root = tiny_cifar[0]
    with open(os.path.join(root, "cifar-10-batches-py", "data_batch_3"), "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(common.DataError, match="cannot be read"):
        common.get_data("cifar10", root, download=False)


def test_auto_falls_back_to_labelled_synthetic(tmp_path):
    lines = []
    part = common.get_data("auto", str(tmp_path), download=False, limit=50, log=lines.append)
    assert part["kind"] == "synthetic"
    assert "SYNTHETIC" in lines[0]
    assert part["classes"] == [f"pattern {c}" for c in range(10)]


def test_synthetic_is_cifar_shaped_balanced_and_seeded():
    a = common.make_synthetic(seed=1, n_train=2000, n_test=500)
    b = common.make_synthetic(seed=1, n_train=2000, n_test=500)
    x, y = a["train"]
    assert x.shape == (2000, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y, minlength=10).min() >= 150  # about 200 of each class
    assert torch.equal(x, b["train"][0]) and torch.equal(y, b["train"][1])
    c = common.make_synthetic(seed=2, n_train=2000, n_test=500)
    assert not torch.equal(x, c["train"][0])
    # patterns move and change colour: the mean image of a class is not a sharp template
    assert x[y == 0].float().mean(0).std() < 25


# ----------------------------------------------------------------------------- batches

def test_augment_keeps_shape_dtype_and_differs_per_image():
    img = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    batch = img.repeat(64, 1, 1, 1)
    out = common.augment(batch, *common.crop_flip_params(64, torch.Generator().manual_seed(0)))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 20  # 81 shifts x 2 flips, drawn per image
    # every output is a 32x32 window of the zero-padded image, maybe mirrored
    padded = nn.functional.pad(img[0], (4, 4, 4, 4))
    windows = {tuple(padded[:, i:i + 32, j:j + 32].flatten().tolist())
               for i in range(9) for j in range(9)}
    windows |= {tuple(padded[:, i:i + 32, j:j + 32].flip(2).flatten().tolist())
                for i in range(9) for j in range(9)}
    assert distinct <= windows


def test_device_loader_batches_normalised_permutation():
    x = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(300)
    loader = common.DeviceLoader(x, y, 128, "cpu", shuffle=True, seed=0)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [128, 128, 44]
    labels = torch.cat([b[1] for b in batches])
    assert sorted(labels.tolist()) == list(range(300)) and labels.tolist() != list(range(300))
    inputs = torch.cat([b[0] for b in batches])
    assert inputs.dtype == torch.float32
    assert inputs.min() >= -1 and inputs.max() <= 1
    # normalisation is the lecture's Normalize(0.5, 0.5) after ToTensor
    first = batches[0]
    i = first[1][0].item()
    assert torch.allclose(first[0][0], (x[i].float() / 255 - 0.5) / 0.5)


# ----------------------------------------------------------------------------- model, loop

def test_cnn_parameter_count_and_shape():
    net = CNN()
    assert sum(p.numel() for p in net.parameters()) == 82330
    assert [n for n, _ in net.named_children()] == [
        "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "pool", "fc"]
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def _batches(n_batches=3, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, 32, 32, generator=g), torch.randint(0, 10, (bs,), generator=g))
            for _ in range(n_batches)]


def test_train_zeroes_gradients_every_step():
    """After an epoch, .grad holds the last batch's gradient only (no accumulation)."""
    torch.manual_seed(0)
    net = CNN()
    batches = _batches()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: weights stay, grads show
    common.train(net, batches, opt, nn.CrossEntropyLoss(), "cpu")
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    x, y = batches[-1]
    nn.CrossEntropyLoss()(net(x), y).backward()
    for g, p in zip(got, net.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    net = CNN()
    x, y = common.make_synthetic(seed=0, n_train=64, n_test=0)["train"]
    batch = [(common.normalize(x), y)]
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    losses = [common.train(net, batch, opt, nn.CrossEntropyLoss(), "cpu")[0]
              for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]


def _tiny_experiment(lr, epochs=2, seed=0, flip=False):
    part = common.get_data("synthetic", limit=256)
    common.set_seed(seed)
    net = CNN()
    loaders = common.make_loaders(part, "cpu", 64, 128, augment=True, seed=seed)
    settings = dict(optim="SGD", lr=lr, l2=5e-4, momentum=0.9, epochs=epochs,
                    schedule="onecycle", flip=flip)
    return common.experiment(net, loaders, settings, "cpu", log=lambda *_: None)


def test_same_seed_same_losses():
    a, b = _tiny_experiment(0.05), _tiny_experiment(0.05)
    assert a["train_losses"] == b["train_losses"] and a["val_accs"] == b["val_accs"]
    c = _tiny_experiment(0.05, seed=1)
    assert c["train_losses"] != a["train_losses"]
    assert "val_acc_no_flip" not in c  # only with flip


def test_result_has_the_lecture_keys():
    result = _tiny_experiment(0.05, flip=True)
    assert 0 <= result["val_acc_no_flip"] <= 100  # the same weights without the mirror
    for key in ("train_losses", "val_losses", "train_accs", "val_accs",
                "train_acc", "val_acc", "test_acc"):
        assert key in result
    assert len(result["train_losses"]) == 2 and result["status"] == "completed"
    assert 0 <= result["test_acc"] <= 100


def test_huge_lr_reports_divergence_not_crash():
    result = _tiny_experiment(1e12, epochs=3)
    assert result["status"] == "diverged"
    assert len(result["train_losses"]) < 3


def test_test_gives_accuracy_and_confusion_counts_in_one_pass():
    preds = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 1, 2, 2, 2, 0])
    net = lambda x: nn.functional.one_hot(x, 3).float()  # noqa: E731  (logits: one-hot input)
    net.eval = lambda: None
    acc, m = common.test(net, [(preds[:4], labels[:4]), (preds[4:], labels[4:])], "cpu")
    assert m.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    assert m.sum() == 6 and acc == pytest.approx(100 * 4 / 6)


def test_archive_alone_is_extracted_without_network(tiny_cifar):
    import shutil
    import tarfile

    root = tiny_cifar[0]
    with tarfile.open(os.path.join(root, "cifar-10-python.tar.gz"), "w:gz") as tar:
        tar.add(os.path.join(root, "cifar-10-batches-py"), arcname="cifar-10-batches-py")
    shutil.rmtree(os.path.join(root, "cifar-10-batches-py"))
    part = common.get_data("cifar10", root, download=False)
    assert part["kind"] == "cifar10" and len(part["test"][1]) == 100


def test_synthetic_needs_translation_invariance():
    """A linear classifier on the raw pixels (no convolution) stays near chance."""
    d = common.make_synthetic(seed=0, n_train=4000, n_test=1000)
    (x, y), (xt, yt) = d["train"], d["test"]
    X, Xt = common.normalize(x).flatten(1), common.normalize(xt).flatten(1)
    torch.manual_seed(0)
    linear = nn.Linear(3072, 10)
    opt = torch.optim.Adam(linear.parameters(), 1e-3)
    for _ in range(5):
        for idx in torch.randperm(len(y)).split(256):
            opt.zero_grad()
            nn.functional.cross_entropy(linear(X[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        train_acc = (linear(X).argmax(1) == y).float().mean().item()
        test_acc = (linear(Xt).argmax(1) == yt).float().mean().item()
    assert train_acc > test_acc  # it can memorise pixels ...
    assert test_acc < 0.25       # ... but not generalise: chance is 0.10


@pytest.mark.parametrize("name", ["bogus", "meta", "xla", "cpu:3", "mps:1",
                                  "cuda:7" if torch.cuda.is_available() else "cuda"])
def test_unusable_device_is_one_line_naming_the_choices(name):
    if name == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(common.UsageError) as err:
        common.get_device(name)
    assert str(err.value).startswith(f"--device {name}: not available here")
    assert "use auto, cpu, cuda, cuda:N or mps" in str(err.value)


def test_auto_device_is_cpu_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert common.get_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert common.get_device("auto") == torch.device("cuda")


def _cnn():
    torch.manual_seed(0)
    return CNN().eval()


def test_flip_of_a_symmetric_image_changes_no_logit():
    net, criterion = _cnn(), nn.CrossEntropyLoss()
    half = torch.randn(4, 3, 32, 16)
    symmetric = torch.cat([half, half.flip(3)], dim=3)  # every row reads the same both ways
    labels = torch.tensor([0, 1, 2, 3])
    plain = common.validate(net, [(symmetric, labels)], criterion, "cpu")
    flipped = common.validate(net, [(symmetric, labels)], criterion, "cpu", flip=True)
    assert flipped == pytest.approx(plain, abs=1e-6)  # same loss and accuracy


def test_flip_gives_an_image_and_its_mirror_the_same_prediction():
    net, images = _cnn(), torch.randn(16, 3, 32, 32)
    labels = torch.arange(16) % 10
    _, a = common.test(net, [(images, labels)], "cpu", flip=True)
    _, b = common.test(net, [(images.flip(3), labels)], "cpu", flip=True)
    assert torch.equal(a, b)  # the same (true, predicted) counts
    with torch.no_grad():  # without flip the two views disagree somewhere (a real test)
        assert not torch.allclose(net(images), net(images.flip(3)))



def test_experiment_checks_its_arguments_before_the_first_step():
    net, batches = CNN(), _batches(1)
    loaders = {"train": batches, "val": batches}
    for settings, message in ((dict(lr=0.1, epochs=1, optim="sgd"), "optim='sgd' is not one of"),
                              (dict(lr=0.1, epochs=1, shedule="none"), "unknown key 'shedule'"),
                              (dict(lr=0.1), "missing key 'epochs'")):
        with pytest.raises(ValueError, match=message):
            common.experiment(net, loaders, settings, "cpu", log=lambda *_: None)
    for bad in (batches, (batches, batches), {"train": batches}):
        with pytest.raises(ValueError, match="loaders: give a dict"):
            common.experiment(net, bad, dict(lr=0.1, epochs=1), "cpu")
    result = common.experiment(net, loaders, dict(lr=0.01, epochs=1), "cpu", log=lambda *_: None)
    assert result["status"] == "completed" and result["test_acc"] is None  # no test loader


def test_a_loss_that_blows_up_is_divergence():
    class Huge(nn.Module):  # finite, but far above chance (ln 10 = 2.3)
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            return 1e6 * self.fc(torch.flatten(x, 1))

    torch.manual_seed(0)
    batches = _batches(2)
    result = common.experiment(Huge(), {"train": batches, "val": batches},
                               dict(lr=0.1, epochs=3), "cpu", log=lambda *_: None)
    assert result["status"] == "diverged" and len(result["train_losses"]) == 1

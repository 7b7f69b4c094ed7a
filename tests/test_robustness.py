"""Where students run this: data failures, precision per GPU, signals, full disks, bad input."""
import errno
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn as nn

import common
from conftest import ROOT, load_script, run_main

cnn_train = load_script("03_cnn_train.py")
QUICK = ("--data", "synthetic", "--epochs", "1", "--limit", "128", "--no-download")


# ----------------------------------------------------------------------------- data

def test_auto_falls_back_only_when_cifar_cannot_be_downloaded(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        open(os.path.join(tmp_path, common.CIFAR_FILE), "wb").write(b"partial")
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    lines = []
    part = common.get_data("auto", str(tmp_path), download=True, limit=20, log=lines.append)
    assert part["kind"] == "synthetic" and "could not be downloaded" in lines[0]
    assert not (tmp_path / common.CIFAR_FILE).exists()  # no partial archive left behind


def test_auto_does_not_hide_corrupt_files(tiny_cifar):
    root = tiny_cifar[0]
    with open(os.path.join(root, "cifar-10-batches-py", "data_batch_2"), "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(common.DataError) as err:
        common.get_data("auto", root, download=False)
    assert not isinstance(err.value, common.DataMissing)
    assert "download=True" not in str(err.value) and "--data synthetic" in str(err.value)


def test_auto_does_not_hide_a_broken_numpy(tiny_cifar, monkeypatch):
    def broken(*args):
        raise RuntimeError("Numpy is not available")

    monkeypatch.setattr(torch, "from_numpy", broken)
    with pytest.raises(common.DataError, match="Numpy is not available"):
        common.get_data("auto", tiny_cifar[0], download=False)


def test_truncated_archive_leaves_no_half_folder(tiny_cifar):
    root = tiny_cifar[0]
    archive = os.path.join(root, common.CIFAR_FILE)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(os.path.join(root, "cifar-10-batches-py"), arcname="cifar-10-batches-py")
    shutil.rmtree(os.path.join(root, "cifar-10-batches-py"))
    size = os.path.getsize(archive)
    with open(archive, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(common.DataError, match="truncated or corrupt") as err:
        common.get_data("auto", root, download=False)
    assert "download=True" not in str(err.value)
    assert sorted(os.listdir(root)) == [common.CIFAR_FILE]  # nothing half-extracted


def test_label_outside_0_9_is_a_data_error(tiny_cifar):
    import pickle

    path = os.path.join(tiny_cifar[0], "cifar-10-batches-py", "test_batch")
    with open(path, "rb") as f:
        batch = pickle.load(f)
    batch["labels"][3] = 12
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(common.DataError, match="outside 0-9"):
        common.get_data("cifar10", tiny_cifar[0], download=False)


def test_synthetic_out_of_memory_is_one_line_and_limit_builds_little(monkeypatch):
    sizes = []
    real = common._draw_synthetic

    def spy(seed, n_train, n_test):
        sizes.append((n_train, n_test))
        return real(seed, n_train, n_test)

    monkeypatch.setattr(common, "_draw_synthetic", spy)
    part = common.get_data("synthetic", limit=100, log=lambda *_: None)
    assert sizes == [(500, 100)] and [len(part[s][1]) for s in ("train", "val", "test")] == \
        [100, 100, 100]

    def no_memory(*args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(common, "_draw_synthetic", no_memory)
    with pytest.raises(common.DataError, match="--limit"):
        common.get_data("synthetic", log=lambda *_: None)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    array, _ = common.load_image(str(path))
    assert array.dtype == np.uint8 and array.min() < 10 and array.max() > 245
    assert len(np.unique(array[..., 0])) > 20  # a ramp, not a white sheet


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("RGB", (200, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(common.DataError, match="too many pixels"):
        common.load_image(str(path))


# ----------------------------------------------------------------------------- devices, precision

@pytest.mark.parametrize("capability, name, expected", [
    ((9, 0), "NVIDIA H100", "bf16"), ((8, 6), "NVIDIA GeForce RTX 3060", "bf16"),
    ((7, 5), "Tesla T4", "fp16"), ((7, 0), "Tesla V100-SXM2-16GB", "fp16"),
    ((7, 5), "NVIDIA GeForce GTX 1660 Ti", "fp32"), ((6, 1), "GeForce GTX 1080", "fp32"),
])
def test_precision_follows_the_selected_gpus_capability(capability, name, expected,
                                                         monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda d: asked.append(d) or capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a: True)  # torch's answer
    assert common.choose_precision(torch.device("cuda", 1)) == expected
    assert asked == [torch.device("cuda", 1)]  # GPU 1 was asked, not GPU 0
    assert common.choose_precision(torch.device("cuda", 1), enabled=False) == "fp32"


def test_mps_and_cpu_without_bf16_stay_fp32(monkeypatch):
    monkeypatch.setattr(common, "cpu_has_bf16", lambda: False)
    assert common.choose_precision("cpu") == "fp32"
    assert common.choose_precision("mps") == "fp32"


@pytest.mark.parametrize("name", ["meta", "xla", "cpu:3", "mps:1", "bogus"])
def test_unsupported_device_types_exit_2(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        common.or_exit(common.get_device, name)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: --device {name}: not supported")


def test_epoch_plan_is_drawn_on_the_cpu_generator():
    x = torch.zeros(50, 3, 32, 32, dtype=torch.uint8)
    loader = common.DeviceLoader(x, torch.arange(50), 50, "cpu", shuffle=True, seed=7)
    got = next(iter(loader))[1]
    assert torch.equal(got, torch.randperm(50, generator=torch.Generator().manual_seed(7)))
    assert loader.generator.device.type == "cpu"


def test_normalize_builds_no_tensor_per_batch(monkeypatch):
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    expected = (x.float() / 255 - 0.5) / 0.5
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: pytest.fail("tensor built"))
    assert torch.allclose(common.normalize(x), expected)


def test_benchmark_warmup_covers_every_batch_shape():
    part = common.get_data("synthetic", limit=300, log=lambda *_: None)
    args = cnn_train.parse_args(["--train-batch-size", "128", "--test-batch-size", "128"])
    small = cnn_train.warmup_subset(part, args)
    assert len(small["train"][1]) == 128 + 300 % 128
    assert len(small["val"][1]) == 128 + 300 % 128


# ----------------------------------------------------------------------------- output folders

@pytest.mark.parametrize("extra, message", [
    (("--exp-name", "../escape"), "plain folder name"),
    (("--exp-name", "x" * 101), "at most 100"),
])
def test_bad_run_names_exit_2_before_training(extra, message, tmp_path, capsys):
    proc = run_main(cnn_train, [*QUICK, "--out-dir", str(tmp_path), *extra], capsys)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Epoch" not in proc.stdout and "Traceback" not in proc.stderr


def test_out_dir_that_is_a_file_exits_2_before_training(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    for script, extra in (("01_convolution.py", ()), ("02_padding_pooling.py", ()),
                          ("03_cnn_train.py", QUICK), ("04_case_studies.py", QUICK)):
        proc = run_main(load_script(script), [*extra, "--out-dir", str(target)], capsys)
        assert proc.returncode == 2, script
        assert proc.stderr.strip().splitlines() == [
            f"error: --out-dir {target} is a file, not a folder; give a folder"]


def test_full_disk_is_refused_before_training(tmp_path, monkeypatch, capsys):
    usage = shutil.disk_usage(tmp_path)._replace(free=10 * 2 ** 20)
    monkeypatch.setattr(common.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(SystemExit) as exit_:
        cnn_train.main([*QUICK, "--out-dir", str(tmp_path)])
    assert exit_.value.code == 2 and "only 10 MB free" in capsys.readouterr().err


def test_disk_full_at_the_end_saves_what_it_can(tmp_path, monkeypatch, capsys):
    def no_space(fig, path, show=False):
        common.plt.close(fig)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(common, "save_figure", no_space)
    code = cnn_train.main([*QUICK, "--out-dir", str(tmp_path)])
    assert code == common.EXIT_NOT_SAVED
    err = capsys.readouterr().err
    assert "could not save loss.png (No space left on device)" in err and "accuracy.png" in err
    assert json.loads((tmp_path / "cnn" / "result.json").read_text())["status"] == "completed"


def test_reserve_never_shares_a_folder(tmp_path):
    folders = {common.reserve(str(tmp_path / "cnn"), folder=True) for _ in range(3)}
    assert len(folders) == 3 and all(os.path.isdir(f) for f in folders)


# ----------------------------------------------------------------------------- divergence, JSON

class NaNWhenEvaluated(nn.Module):
    """Trains normally; its validation outputs are NaN (a diverged val loss)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        y = self.fc(torch.flatten(x, 1))
        return y if self.training else y * float("nan")


def test_nan_val_loss_is_divergence_and_json_stays_strict(tmp_path):
    part = common.get_data("synthetic", limit=64, log=lambda *_: None)
    loaders = common.make_loaders(part, "cpu", 32, 64)
    settings = dict(optim="SGD", lr=0.01, l2=0.0, epochs=3)
    _, result = common.experiment(NaNWhenEvaluated(), loaders, settings, "cpu",
                                  log=lambda *_: None)
    assert result["status"] == "diverged" and result["best_epoch"] is None
    assert result["test_acc"] is None and len(result["val_losses"]) == 1
    path = common.save_json(result, str(tmp_path / "r.json"))
    text = open(path).read()
    assert "NaN" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c))["val_losses"] == [None]


# ----------------------------------------------------------------------------- signals, pipes

def _start(tmp_path, *extra):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT)
    return subprocess.Popen(
        [sys.executable, "-u", "03_cnn_train.py", "--data", "synthetic", "--limit", "128",
         "--epochs", "1000", "--no-download", "--out-dir", str(tmp_path), *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_sigterm_and_sighup_save_and_exit_128_plus_signal(tmp_path):
    cases = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
    procs = {sig: _start(tmp_path / sig.name) for sig in cases}  # all at once (suite time)
    try:
        for sig, proc in procs.items():
            for line in proc.stdout:  # wait until two epochs are done
                if line.startswith("Epoch 2,"):
                    break
            proc.send_signal(sig)
        errors = {sig: proc.communicate(timeout=600)[1] for sig, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
    for sig, code in cases.items():
        err = errors[sig]
        assert procs[sig].returncode == code, err
        assert "Traceback" not in err and f"stopped by {sig.name}" in err
        record = json.loads((tmp_path / sig.name / "cnn" / "result.json").read_text())
        assert record["status"] == "interrupted" and record["stopped_by"] == sig.name
        assert len(record["result"]["train_losses"]) >= 2  # no finished epoch is lost


def test_signals_while_saving_wait_for_the_files(monkeypatch, capsys):
    monkeypatch.setitem(common._SIGNALS, "first", None)
    with common.signals_held():
        common._on_signal(signal.SIGINT, None)  # no KeyboardInterrupt while saving
        common._on_signal(signal.SIGINT, None)
    assert common.stop_requested() == "SIGINT" and common.interrupted_exit_code() == 130
    assert "finishing the files first" in capsys.readouterr().err
    monkeypatch.setitem(common._SIGNALS, "first", None)
    with pytest.raises(KeyboardInterrupt):
        common._on_signal(signal.SIGTERM, None)


def test_closed_stdout_and_a_second_run_finish_and_save_apart(tmp_path):
    """A reader that goes away (`| head -1`), and stdout closed from the start (`>&-`),
    both run at once into one --out-dir: both finish, save and exit 0 without a
    traceback, the second in a fresh folder with normal permissions."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT)
    command = [sys.executable, "03_cnn_train.py", *QUICK, "--epochs", "2", "--out-dir",
               str(tmp_path)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    closed = subprocess.Popen(command, cwd=ROOT, env=env,
                              stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))
    proc.stdout.readline()  # like `| head -1`
    proc.stdout.close()
    for p in (proc, closed):
        err = p.stderr.read().decode()
        assert p.wait(timeout=900) == 0, err
        assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["cnn", "cnn-2"]
    for folder in ("cnn", "cnn-2"):
        record = json.loads((tmp_path / folder / "result.json").read_text())
        assert record["status"] == "completed" and len(record["result"]["val_accs"]) == 2
        mode = os.stat(tmp_path / folder / "result.json").st_mode & 0o777
        assert mode == 0o666 & ~common._UMASK


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("script", ["01_convolution.py", "02_padding_pooling.py",
                                    "03_cnn_train.py", "04_case_studies.py"])
@pytest.mark.parametrize("seed", ["-1", str(2 ** 32), str(2 ** 64)])
def test_seed_out_of_range_exits_2(script, seed, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script(script).build_parser().parse_args(["--seed", seed])
    assert exit_.value.code == 2 and "--seed: must be between 0 and" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--label-smoothing", "1.5"], "must be between 0 and 1"),
    (["--epochs", "abc"], "--epochs: not a number: abc"),
    (["--lr", "nan"], "--lr: must be a positive number, got nan"),
    (["--lr", "0.1", "0.01", "--act", "relu", "tanh"], "only one option may take several"),
])
def test_03_refuses_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cnn_train.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_02_channels_too_large_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script("02_padding_pooling.py").build_parser().parse_args(["--channels", "100000"])
    assert exit_.value.code == 2 and "--channels: at most 1024" in capsys.readouterr().err


def test_lecture_with_an_explicit_option_lets_it_win(capsys):
    args = cnn_train.parse_args(["--lecture", "--lr", "0.1"])
    assert args.lr == [0.1] and args.momentum == 0.0 and args.l2 == [1e-5]
    assert "--lecture: your --lr replaces the lecture's 0.001" in capsys.readouterr().out


def test_04_all_with_names_is_refused_clearly(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script("04_case_studies.py").parse_args(["--train", "all", "lenet"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "give 'all' alone" in err and "unknown model" not in err


def test_04_out_of_memory_keeps_finished_models(tmp_path, monkeypatch, capsys):
    cs = load_script("04_case_studies.py")
    real = cs.common.experiment

    def second_fails(model, loaders, settings, device, **kwargs):
        if settings["model"] == "resnet20":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(model, loaders, settings, device, **kwargs)

    monkeypatch.setattr(cs.common, "experiment", second_fails)
    code = cs.main(["--train", "lenet", "resnet20", *QUICK, "--out-dir", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "try a smaller --batch-size" in err
    out = tmp_path / "04_case_studies"
    assert json.loads((out / "lenet" / "result.json").read_text())["status"] == "completed"
    table = json.loads((out / "train_results.json").read_text())
    assert [m["model"] for m in table["models"]] == ["lenet"]
    assert not (out / "resnet20").exists()


@pytest.mark.parametrize("dtype, scaled", [(None, False), (torch.bfloat16, False),
                                           (torch.float16, True)])
def test_experiment_scales_the_loss_only_for_fp16(dtype, scaled, monkeypatch):
    made, real = [], torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler",
                        lambda device, enabled=True: made.append(enabled) or real(device, False))
    monkeypatch.setattr(common, "autocast", lambda *a: contextlib.nullcontext())  # fp32 maths
    batches = [(torch.randn(4, 3, 32, 32), torch.arange(4))]
    settings = dict(optim="SGD", lr=0.01, l2=0.0, epochs=1)
    common.experiment(cnn_train.CNN(), {"train": batches, "val": batches, "test": batches},
                      settings, "cpu", log=lambda *_: None, amp_dtype=dtype)
    assert made[0] == scaled


def test_fp16_with_loss_scaling_trains_on_the_cpu_too():
    """The T4 path (fp16 autocast + GradScaler, unscaled before clipping) run for real."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 32, 32), torch.arange(32) % 10
    batches = [(x, y)] * 4
    settings = dict(optim="SGD", lr=0.01, l2=0.0, momentum=0.9, epochs=3, clip_grad=5.0)
    _, result = common.experiment(cnn_train.CNN(), {"train": batches, "val": batches[:1],
                                                    "test": batches[:1]}, settings, "cpu",
                                  log=lambda *_: None, amp_dtype=torch.float16)
    assert result["status"] == "completed"
    assert result["train_losses"][-1] < result["train_losses"][0]


def test_train_alone_scales_an_fp16_loss(monkeypatch):
    made, real = [], torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler",
                        lambda device, enabled=True: made.append(enabled) or real(device, False))
    monkeypatch.setattr(common, "autocast", lambda *a: contextlib.nullcontext())  # fp32 maths
    net = cnn_train.CNN()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    batches = [(torch.randn(4, 3, 32, 32), torch.arange(4))]
    for dtype in (None, torch.bfloat16, torch.float16):
        common.train(net, batches, opt, torch.nn.CrossEntropyLoss(), "cpu", amp_dtype=dtype)
    assert made == [False, False, True]

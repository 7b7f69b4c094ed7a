"""Where students run this: data failures, precision per GPU, signals, full disks, bad input.
One handler (common.launch) covers each kind of fault; these tests check its contract."""
import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import urllib.error

import pytest
import torch
import torch.nn as nn

import common
from conftest import ROOT, load_script, run_main

cnn_train = load_script("03_cnn_train.py")
QUICK = ("--data", "synthetic", "--epochs", "1", "--limit", "128", "--no-download")


# ----------------------------------------------------------------------------- data

def test_auto_falls_back_only_when_cifar_cannot_be_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "CIFAR10_SOURCES", ["http://127.0.0.1:9/closed-port"])
    monkeypatch.delenv("CIFAR10_URL", raising=False)
    lines = []
    root = tmp_path / "new"
    part = common.get_data("auto", str(root), download=True, limit=20, log=lines.append)
    assert part["kind"] == "synthetic" and "could not be downloaded" in lines[0]
    assert not root.exists()  # the folder it made for the download is gone again


@pytest.mark.parametrize("damage", ["garbage", "missing", "labels"])
def test_auto_never_hides_a_damaged_data_set(tiny_cifar, damage):
    import pickle

    folder = os.path.join(tiny_cifar[0], "cifar-10-batches-py")
    if damage == "garbage":
        open(os.path.join(folder, "data_batch_2"), "wb").write(b"not a pickle")
    elif damage == "missing":
        os.remove(os.path.join(folder, "data_batch_2"))
    else:
        batch = pickle.load(open(os.path.join(folder, "test_batch"), "rb"))
        batch["labels"][3] = 12
        pickle.dump(batch, open(os.path.join(folder, "test_batch"), "wb"))
    with pytest.raises(common.DataError) as err:
        common.get_data("auto", tiny_cifar[0], download=False)
    message = str(err.value)
    assert not isinstance(err.value, common.DataMissing) and "\n" not in message
    assert "cannot be read" in message and "download=True" not in message
    assert "--data synthetic" in message and tiny_cifar[0] in message


@pytest.mark.parametrize("script", ["01_convolution.py", "03_cnn_train.py"])
def test_a_damaged_archive_offline_is_a_data_error_not_a_synthetic_run(script, tmp_path,
                                                                       monkeypatch, capsys):
    import urllib.request

    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b not the real archive")  # its md5 check fails
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(
        urllib.error.URLError("network refused")))
    short = ["--limit", "64", "--epochs", "1"] if script.startswith("03") else []
    proc = run_main(load_script(script), ["--data", "auto", "--data-dir", str(tmp_path),
                                          "--out-dir", str(tmp_path / "out"), *short], capsys)
    assert proc.returncode == 2 and "SYNTHETIC" not in proc.stdout
    assert proc.stderr.count("\n") == 1 and f"{archive} fails its md5 check" in proc.stderr
    assert archive.exists() and not (tmp_path / "out" / "synthetic").exists()


def test_truncated_archive_is_a_data_error(tiny_cifar):
    root = tiny_cifar[0]
    archive = os.path.join(root, "cifar-10-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(os.path.join(root, "cifar-10-batches-py"), arcname="cifar-10-batches-py")
    shutil.rmtree(os.path.join(root, "cifar-10-batches-py"))
    with open(archive, "r+b") as f:
        f.truncate(os.path.getsize(archive) // 2)
    with pytest.raises(common.DataError, match="cannot be read"):
        common.get_data("auto", root, download=False)


def test_limit_builds_only_the_synthetic_images_it_keeps(monkeypatch):
    sizes, real = [], common.make_synthetic
    monkeypatch.setattr(common, "make_synthetic",
                        lambda *args: sizes.append(args[1:]) or real(*args))
    part = common.get_data("synthetic", limit=100, log=lambda *_: None)
    assert sizes == [(500, 100)]
    assert [len(part[s][1]) for s in ("train", "val", "test")] == [100, 100, 100]


def test_a_picture_that_cannot_be_read_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("RGB", (200, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a decompression bomb
    with pytest.raises(common.DataError, match="cannot read the picture"):
        common.load_image(str(path))


# ----------------------------------------------------------------------------- devices, precision

@pytest.mark.parametrize("capability, name, expected", [
    ((9, 0), "NVIDIA H100", "bf16"), ((8, 6), "NVIDIA GeForce RTX 3060", "bf16"),
    ((7, 5), "Tesla T4", "fp16"), ((7, 0), "Tesla V100-SXM2-16GB", "fp16"),
    ((7, 5), "NVIDIA GeForce GTX 1660 Ti", "fp32"), ((6, 1), "GeForce GTX 1080", "fp32"),
    ((7, 5), "NVIDIA GeForce RTX 2080 Ti", "fp16"), ((7, 5), "Quadro RTX 4000", "fp16"),
    ((7, 0), "NVIDIA TITAN V", "fp16"), ((7, 5), "NVIDIA T4", "fp16"),
    ((7, 5), "NVIDIA GeForce MX450", "fp32"), ((7, 5), "NVIDIA GeForce MX550", "fp32"),
    ((7, 5), "NVIDIA T400", "fp32"), ((7, 5), "NVIDIA T1000", "fp32"),
    ((7, 5), "NVIDIA T1200 Laptop GPU", "fp32"), ((7, 5), "Quadro T2000", "fp32"),
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


# ---------------------------------------------------------------------- output folders, files

def test_bad_run_name_exits_2_before_training(tmp_path, capsys):
    proc = run_main(cnn_train, [*QUICK, "--out-dir", str(tmp_path), "--exp-name", "../x"],
                    capsys)
    assert proc.returncode == 2 and "plain folder name" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Epoch" not in proc.stdout


def test_out_dir_that_is_a_file_is_one_line_before_any_work(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    for script, extra in (("01_convolution.py", ()), ("02_padding_pooling.py", ()),
                          ("03_cnn_train.py", QUICK), ("04_case_studies.py", QUICK)):
        proc = run_main(load_script(script), [*extra, "--out-dir", str(target)], capsys)
        assert proc.returncode == 1, script
        assert proc.stderr.strip().splitlines() == [f"error: File exists: {target}"]
        assert "Epoch" not in proc.stdout and "===" not in proc.stdout


def test_full_disk_while_saving_keeps_result_json_and_names_the_file(tmp_path, monkeypatch,
                                                                    capsys):
    def no_space(*args, **kwargs):  # as a failed write() raises it: no filename
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(common.plt.Figure, "savefig", no_space)
    proc = run_main(cnn_train, [*QUICK, "--out-dir", str(tmp_path)], capsys)
    assert proc.returncode == 1
    folder = tmp_path / "synthetic" / "cnn"
    assert proc.stderr.strip() == f"error: No space left on device: {folder / 'loss.png'}"
    assert json.loads((folder / "result.json").read_text())["status"] == "completed"
    assert not list(folder.glob("*.tmp"))
    monkeypatch.setattr(common.json, "dump", no_space)
    proc = run_main(cnn_train, [*QUICK, "--out-dir", str(tmp_path)], capsys)
    assert proc.stderr.strip() == \
        f"error: No space left on device: {folder}-2{os.sep}result.json"


def test_reserve_never_shares_a_folder(tmp_path):
    folders = [common.reserve(str(tmp_path / "cnn")) for _ in range(3)]
    assert [os.path.basename(f) for f in folders] == ["cnn", "cnn-2", "cnn-3"]


def test_a_file_is_written_whole_or_not_at_all(tmp_path):
    path = str(tmp_path / "r.json")
    common.save_json({"a": 1}, path)

    def half(f):
        f.write('{"a": ')
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        common.write_atomic(path, half)
    assert json.loads(open(path).read()) == {"a": 1} and os.listdir(tmp_path) == ["r.json"]


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
    result = common.experiment(NaNWhenEvaluated(), loaders, dict(lr=0.01, epochs=3), "cpu",
                               log=lambda *_: None)
    assert result["status"] == "diverged" and result["best_epoch"] is None
    assert result["test_acc"] is None and len(result["val_losses"]) == 1
    text = open(common.save_json(result, str(tmp_path / "r.json"))).read()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c))["val_losses"] == [None]


# ----------------------------------------------------------------------------- signals, pipes

def _start(tmp_path, *extra, **kwargs):
    # one thread each: torch processes side by side on 2 cores would spin against each other
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    kwargs = {"stdout": subprocess.PIPE, **kwargs}
    return subprocess.Popen(
        [sys.executable, "-u", "03_cnn_train.py", "--data", "synthetic", "--limit", "128",
         "--no-download", "--out-dir", str(tmp_path), *extra], cwd=ROOT, env=env,
        stderr=subprocess.PIPE, text=True, **kwargs)


def test_ctrl_c_sigterm_and_sighup_save_the_finished_epochs_and_exit_130(tmp_path):
    cases = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    # SIGINT as a terminal's foreground job has it: a shell's background job (`cmd &`, the
    # way CI or tests/platforms.sh may run) starts its children with SIGINT ignored
    procs = {sig: _start(tmp_path / sig.name, "--epochs", "1000", preexec_fn=lambda: signal.signal(
        signal.SIGINT, signal.SIG_DFL)) for sig in cases}
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
    for sig in cases:
        assert procs[sig].returncode == 130, errors[sig]
        assert "Traceback" not in errors[sig] and "stopped" in errors[sig]
        record = json.loads((tmp_path / sig.name / "synthetic" / "cnn" / "result.json").read_text())
        assert record["status"] == "interrupted"
        assert len(record["result"]["train_losses"]) >= 2  # no finished epoch is lost
        folder = tmp_path / sig.name / "synthetic" / "cnn"  # untested: no test figure says else
        assert record["result"]["test_acc"] is None and (folder / "accuracy.png").exists()
        assert not {"confusion.png", "mistakes.png"} & {p.name for p in folder.iterdir()}
        saved = torch.load(folder / "model.pt", weights_only=True)
        assert (saved["test_acc"], saved["status"]) == (None, "interrupted")


def test_a_reader_that_goes_away_keeps_the_finished_epochs_and_a_closed_stdout_runs(tmp_path):
    """`| head -4` after the first epoch: one line, exit 1, the finished epochs saved with the
    reason (a closed pipe is an OSError like any other); stdout closed from the start (`>&-`):
    the run goes on and saves. Both at once, in one --out-dir: each gets its own folder."""
    piped = _start(tmp_path, "--epochs", "50")
    closed = _start(tmp_path, "--epochs", "2", stdout=None, preexec_fn=lambda: os.close(1))
    for line in piped.stdout:
        if line.startswith("Epoch 1,"):
            break
    piped.stdout.close()
    errors = [p.stderr.read() for p in (piped, closed)]
    assert [p.wait(timeout=900) for p in (piped, closed)] == [1, 0], errors
    assert errors[0].strip() == "error: Broken pipe: output" and errors[1] == ""
    umask = os.umask(0)
    os.umask(umask)
    saved = {json.loads(p.read_text())["status"]: (p, json.loads(p.read_text()))
             for p in (tmp_path / "synthetic").glob("cnn*/result.json")}
    assert sorted(saved) == ["completed", "output error"]
    assert len(saved["completed"][1]["result"]["val_accs"]) == 2
    assert 1 <= len(saved["output error"][1]["result"]["val_accs"]) < 50
    path = saved["completed"][0]
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # the usual permissions


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("script", ["01_convolution.py", "02_padding_pooling.py",
                                    "03_cnn_train.py", "04_case_studies.py"])
@pytest.mark.parametrize("seed", ["-1", str(2 ** 32)])
def test_seed_out_of_range_is_one_line(script, seed, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script(script).build_parser().parse_args(["--seed", seed])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "usage:" not in err
    assert "--seed: must be between 0 and" in err and err.strip().endswith("(see --help)")


@pytest.mark.parametrize("argv, message", [
    (["--epoch", "3"], "unrecognized arguments: --epoch 3"),  # a typo, not a prefix
    (["--epochs", "abc"], "--epochs: not a number: abc"),
    (["--lr", "nan"], "--lr: must be a positive number, got nan"),
    (["--lr", "0.1", "0.01", "--act", "relu", "tanh"], "only one option may take several"),
    (["--act", "relu=0.05"], "invalid choice: 'relu=0.05'"),
])
def test_03_refuses_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cnn_train.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_02_channels_too_large_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script("02_padding_pooling.py").build_parser().parse_args(["--channels", "100000"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--channels: must be between 1 and 1024" in err


def test_lecture_with_an_explicit_option_lets_it_win(capsys):
    args = cnn_train.parse_args(["--lecture", "--lr", "0.1"])
    assert args.lr == [0.1] and args.momentum == 0.0 and args.l2 == [1e-5]
    assert "--lecture: your --lr replaces the lecture's 0.001" in capsys.readouterr().out


def test_04_all_with_names_is_refused_clearly(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script("04_case_studies.py").parse_args(["--train", "all", "lenet"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "give 'all' alone" in err and "unknown model" not in err


def test_04_out_of_memory_keeps_the_finished_models(tmp_path, monkeypatch, capsys):
    cs = load_script("04_case_studies.py")
    real = common.train

    def resnet_fails(net, *args, **kwargs):
        if isinstance(net, cs.ResNet):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(net, *args, **kwargs)

    monkeypatch.setattr(common, "train", resnet_fails)
    proc = run_main(cs, ["--train", "lenet", "resnet20", *QUICK, "--out-dir", str(tmp_path)],
                    capsys)
    assert proc.returncode == 1 and "out of memory; use a smaller batch size" in proc.stderr
    out = tmp_path / "synthetic" / "04_case_studies" / "train"
    assert json.loads((out / "lenet" / "result.json").read_text())["status"] == "completed"
    assert json.loads((out / "resnet20" / "result.json").read_text())["status"] == \
        "out of memory"
    table = json.loads((out / "results.json").read_text())
    assert [m["status"] for m in table["models"]] == ["completed", "out of memory"]


def test_out_of_memory_outside_training_is_one_line(tmp_path, monkeypatch, capsys):
    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 20 GB")

    monkeypatch.setattr(common, "make_loaders", no_memory)
    proc = run_main(cnn_train, [*QUICK, "--out-dir", str(tmp_path)], capsys)
    assert proc.returncode == 1 and proc.stderr.strip() == \
        "error: out of memory; use a smaller batch size or --limit"


@pytest.mark.parametrize("dtype, scaled", [(None, False), (torch.bfloat16, False),
                                           (torch.float16, True)])
def test_experiment_scales_the_loss_only_for_fp16(dtype, scaled, monkeypatch):
    made, real = [], torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler",
                        lambda device, enabled=True: made.append(enabled) or real(device, False))
    monkeypatch.setattr(common, "autocast", lambda *a: contextlib.nullcontext())  # fp32 maths
    batches = [(torch.randn(4, 3, 32, 32), torch.arange(4))]
    common.experiment(cnn_train.CNN(), {"train": batches, "val": batches, "test": batches},
                      dict(lr=0.01, epochs=1), "cpu", log=lambda *_: None, amp_dtype=dtype)
    assert made[0] == scaled


def test_fp16_with_loss_scaling_and_clipping_trains_on_the_cpu_too():
    """The T4 path (fp16 autocast + GradScaler, clipped after unscaling) run for real."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 32, 32), torch.arange(32) % 10
    batches = [(x, y)] * 4
    settings = dict(optim="SGD", lr=0.01, momentum=0.9, epochs=3, clip_grad=5.0)
    result = common.experiment(cnn_train.CNN(), {"train": batches, "val": batches[:1]},
                               settings, "cpu", log=lambda *_: None, amp_dtype=torch.float16)
    assert result["status"] == "completed"
    assert result["train_losses"][-1] < result["train_losses"][0]


def test_clip_grad_clips_before_every_step():
    net = nn.Linear(4, 2)
    optimizer = common.make_optimizer(net, common.check_settings(dict(lr=0.0, epochs=1,
                                                                      clip_grad=0.5)))
    net(torch.randn(8, 4) * 100).sum().backward()
    optimizer.step()  # lr 0: the weights stay, the clipped gradient shows
    norm = torch.cat([p.grad.flatten() for p in net.parameters()]).norm()
    assert norm == pytest.approx(0.5, rel=1e-4)


def test_channels_last_on_cuda_only_in_half_precision_and_always_on_the_cpu():
    helps = common.channels_last_helps
    assert [helps("cuda", p) for p in ("bf16", "fp16", "fp32")] == [True, True, False]
    assert helps("cpu", "fp32") and helps("cpu", "bf16") and not helps("mps", "bf16")
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    loader = common.DeviceLoader(x, torch.arange(2), 2, "cpu", precision="fp32")
    assert next(iter(loader))[0].is_contiguous(memory_format=torch.channels_last)


def test_the_clip_hook_sees_unscaled_gradients_under_fp16(monkeypatch):
    """The step is unscaled before the hook runs, so a clip acts on the true gradient (an
    fp16 loss is scaled by 65536 first)."""
    seen, real = [], nn.utils.clip_grad_norm_
    monkeypatch.setattr(nn.utils, "clip_grad_norm_",
                        lambda params, limit: seen.append(float(real(params, limit))))
    torch.manual_seed(0)
    batches = [(torch.randn(16, 3, 32, 32), torch.arange(16) % 10)] * 12
    common.experiment(cnn_train.CNN(), {"train": batches, "val": batches[:1]},
                      dict(lr=0.01, epochs=1, clip_grad=1e9), "cpu", log=lambda *_: None,
                      amp_dtype=torch.float16)
    # the first steps overflow at the scaler's start (65536) and are skipped: no hook call
    assert 1 <= len(seen) < 12 and all(0 < n < 1000 for n in seen), seen  # scaled: > 1e4

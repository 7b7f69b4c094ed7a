"""03_cnn_train.py: options, outputs, failures, as a student runs it."""
import json
import os

import pytest

from conftest import ROOT, load_script, run_main, run_script

cnn_train = load_script("03_cnn_train.py")
QUICK = ("--data", "synthetic", "--epochs", "1", "--limit", "128", "--no-download")


@pytest.mark.parametrize("bad", [
    ["--lr", "-0.1"], ["--lr", "0"], ["--epochs", "0"], ["--train-batch-size", "0"],
    ["--test-batch-size", "-2"], ["--optim", "Adagrad"], ["--l2", "-1"], ["--data", "mnist"],
    ["--lr", "0.1", "0.1"], ["--lr", "nan"],
])
def test_parser_refuses_nonsense(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        cnn_train.parse_args(bad)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_help_lists_every_option_with_defaults(capsys):
    with pytest.raises(SystemExit):
        cnn_train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for option in ("--exp-name", "--optim", "--momentum", "--lr", "--l2", "--epochs",
                   "--train-batch-size", "--test-batch-size", "--seed", "--device", "--data",
                   "--data-dir", "--no-download", "--out-dir", "--augment", "--schedule",
                   "--predict", "--run", "--show", "--lecture"):
        assert option in text
    assert "training epochs (default: 40)" in text
    assert "images per training step (default: 128)" in text


def test_lecture_flag_restores_the_notebook_settings():
    args = cnn_train.parse_args(["--lecture"])
    assert (args.optim, args.lr, args.momentum, args.l2, args.augment, args.schedule) == \
        (["SGD"], [1e-3], 0.0, [1e-5], False, "none")
    assert args.init == "pytorch" and args.clip_grad == 0 and args.exp_name == "cnn_lecture"


def test_run_writes_every_output(tmp_path):
    proc = run_script("03_cnn_train.py", *QUICK, "--out-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("DATA: SYNTHETIC")
    assert "Epoch 1, Acc(train/val):" in proc.stdout
    folder = tmp_path / "synthetic" / "cnn"
    for name in ("loss.png", "accuracy.png", "confusion.png", "filters.png", "result.json",
                 "model.pt", "mistakes.png"):
        assert (folder / name).stat().st_size > 0, name
    record = json.loads((folder / "result.json").read_text())
    assert record["data"] == "synthetic" and record["status"] == "completed"
    assert record["device"] == "cpu" and record["result"]["epoch_seconds"][0] > 0
    for key in ("train_losses", "val_losses", "train_accs", "val_accs",
                "train_acc", "val_acc", "test_acc"):
        assert key in record["result"]
    assert len(record["result"]["val_accs"]) == 1
    import torch
    saved = torch.load(folder / "model.pt", weights_only=True)
    cnn_train.CNN(act=saved["act"]).load_state_dict(saved["state_dict"])
    assert 250_000 < (folder / "model.pt").stat().st_size < 400_000  # 82,330 float32 weights
    assert not list(folder.glob("*.tmp"))


def test_several_lrs_give_one_run_each_and_a_comparison(tmp_path, capsys):
    proc = run_main(cnn_train, [*QUICK, "--out-dir", str(tmp_path), "--exp-name", "exp1_lr",
                                "--lr", "0.05", "0.01"], capsys)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split()[:2] for line in proc.stdout.splitlines()
            if line.strip().startswith(("0.05 ", "0.01 "))]
    assert rows == [["0.05", "0.05"], ["0.01", "0.01"]]  # the table names each run's value
    sweep = tmp_path / "synthetic" / "exp1_lr_lr"
    assert all((sweep / f"lr{lr}" / "result.json").exists() for lr in ("0.05", "0.01"))
    assert (sweep / "lr.png").stat().st_size > 0
    # the second run starts from the same weights and data order as a run on its own
    assert cnn_train.main([*QUICK, "--out-dir", str(tmp_path / "alone"), "--lr", "0.01"]) == 0
    second = json.loads((sweep / "lr0.01" / "result.json").read_text())
    single = json.loads((tmp_path / "alone" / "synthetic" / "cnn" / "result.json").read_text())
    assert second["result"]["train_losses"] == single["result"]["train_losses"]


def test_missing_cifar_exits_2_with_one_line(tmp_path, capsys):
    proc = run_main(cnn_train, ["--data", "cifar10", "--no-download", "--data-dir",
                                str(tmp_path), "--out-dir", str(tmp_path / "runs")], capsys)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: CIFAR-10")
    assert str(tmp_path) in lines[0] and "cifar-10-python.tar.gz" in lines[0]


def test_bad_option_exits_2_with_usage(capsys):
    proc = run_main(cnn_train, ["--epochs", "0"], capsys)
    assert proc.returncode == 2
    assert "--epochs: must be a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_huge_lr_is_reported_as_diverged(tmp_path, capsys):
    proc = run_main(cnn_train, [*QUICK, "--epochs", "3", "--lr", "1e12", "--out-dir",
                                str(tmp_path)], capsys)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "use a smaller lr (e.g. 1e+11)" in proc.stdout  # the lecture's log
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged" in errors[0] and "--lr 1e+11" in errors[0]
    record = json.loads((tmp_path / "synthetic" / "cnn" / "result.json").read_text())
    assert record["status"] == "diverged"
    assert (tmp_path / "synthetic" / "cnn" / "loss.png").exists()


def test_out_of_memory_in_training_saves_the_finished_epochs_and_exits_1(tmp_path,
                                                                          monkeypatch, capsys):
    real, calls = cnn_train.common.train, []

    def second_epoch_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(cnn_train.common, "train", second_epoch_fails)
    proc = run_main(cnn_train, [*QUICK, "--epochs", "3", "--out-dir", str(tmp_path)], capsys)
    assert proc.returncode == 1 and "out of memory; use a smaller batch size" in proc.stderr
    record = json.loads((tmp_path / "synthetic" / "cnn" / "result.json").read_text())
    assert record["status"] == "out of memory" and len(record["result"]["train_losses"]) == 1


def test_a_sweep_goes_on_after_a_diverged_run_and_exits_3(tmp_path, capsys):
    proc = run_main(cnn_train, [*QUICK, "--out-dir", str(tmp_path), "--lr", "1e12", "0.01"],
                    capsys)
    assert proc.returncode == 3, proc.stderr
    sweep = tmp_path / "synthetic" / "cnn_lr"
    statuses = [json.loads((sweep / f"lr{lr}" / "result.json").read_text())["status"]
                for lr in ("1e+12", "0.01")]
    assert statuses == ["diverged", "completed"]


def test_readmes_notebook_cell_trains_with_03s_defaults():
    import ast
    import re

    text = open(os.path.join(ROOT, "README.md")).read()
    cell = text.split("## In Colab or Jupyter")[1].split("\n## ")[0]
    recipe = ast.literal_eval(re.search(r"recipe = (\{.*?\})", cell, re.S).group(1))
    args = cnn_train.parse_args([])
    assert recipe == dict(lr=args.lr[0], epochs=2, momentum=args.momentum, l2=args.l2[0],
                          schedule=args.schedule, clip_grad=args.clip_grad, flip=args.flip)
    assert "augment=True" in cell and args.augment and args.optim == ["SGD"]

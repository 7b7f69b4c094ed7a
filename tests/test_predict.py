"""03 --predict: the trained CNN on a picture of your own, and its most confident mistakes."""
import contextlib
import io
import os

import numpy as np
import pytest
import torch

import common
from conftest import CLASSES, load_script, run_main

cnn_train = load_script("03_cnn_train.py")
QUICK = ["--data", "synthetic", "--epochs", "1", "--limit", "256", "--no-download"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 1-epoch synthetic run: its folder and its result."""
    out = tmp_path_factory.mktemp("runs")
    with contextlib.redirect_stdout(io.StringIO()):
        assert cnn_train.main([*QUICK, "--out-dir", str(out)]) == 0
    return out, out / "synthetic" / "cnn"


@pytest.mark.usefixtures("figures_fit_their_canvas")
def test_predict_prints_the_top_3_of_probabilities_that_sum_to_100(trained, tmp_path,
                                                                   monkeypatch, capsys):
    from PIL import Image

    out, folder = trained
    picture = tmp_path / "my_photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(picture)
    seen, shown, forward, plot = [], [], cnn_train.CNN.forward, cnn_train.plot_prediction
    monkeypatch.setattr(cnn_train.CNN, "forward", lambda self, x: seen.append(x) or
                        forward(self, x))
    monkeypatch.setattr(cnn_train, "plot_prediction", lambda *a: shown.append(a) or plot(*a))
    proc = run_main(cnn_train, ["--predict", str(picture), "--out-dir", str(out)], capsys)
    assert proc.returncode == 0, proc.stderr
    probs, classes = shown[0][2], shown[0][3]
    assert len(probs) == 10 and abs(100 * probs.sum().item() - 100) < 0.1
    line = next(l for l in proc.stdout.splitlines() if l.startswith(f"your image {picture}"))
    top = probs.topk(3)
    assert line.endswith(", ".join(f"{classes[i]} {100 * p:.1f}%" for p, i in zip(*top)) +
                         " [SYNTHETIC DATA]")
    assert "[SYNTHETIC DATA] this net learned 10 random patterns" in proc.stdout
    assert "not a measured chance of being right" in proc.stdout
    array, _ = common.load_image(str(picture))
    assert torch.equal(seen[0][0], common.to_tensor(array))  # exactly what 01 would feed
    assert (folder / "predict_my_photo.png").exists()


def test_model_pt_loads_with_weights_only_and_reproduces_the_test_accuracy(trained):
    _, folder = trained
    saved = torch.load(folder / "model.pt", weights_only=True)
    assert saved["data"] == "synthetic" and len(saved["classes"]) == saved["num_classes"] == 10
    assert (saved["act"], saved["mean"], saved["std"]) == ("relu", 0.5, 0.5)
    net = cnn_train.CNN(saved["num_classes"], act=saved["act"])
    net.load_state_dict(saved["state_dict"])
    part = common.get_data("synthetic", limit=256, log=lambda *_: None)
    test = common.DeviceLoader(*part["test"], 500, "cpu")
    acc, _ = common.test(net, test, "cpu", flip=saved["flip"])
    assert round(acc, 2) == saved["test_acc"]
    found, wrong = cnn_train.top_mistakes(net, *part["test"], flip=saved["flip"])
    with torch.no_grad():
        x = common.normalize(part["test"][0])
        probs = ((net.eval()(x) + net(x.flip(3))) / 2).softmax(1)
    confidence, predicted = probs.max(1)
    labels = part["test"][1]
    assert wrong == int((predicted != labels).sum()) == round(256 * (100 - acc) / 100)
    assert [i for i, *_ in found] == sorted(
        (predicted != labels).nonzero().flatten().tolist(), key=lambda i: -confidence[i])[:16]
    assert all(predicted[i] == p and abs(confidence[i] - c) < 1e-5 for i, p, c in found)


@pytest.mark.parametrize("case", ["no run", "no model", "bad picture"])
def test_predict_without_a_model_or_with_a_bad_picture_is_one_line(case, trained, tmp_path,
                                                                   capsys):
    out, folder = trained
    argv = {"no run": ["--predict", "--out-dir", str(tmp_path)],
            "no model": ["--predict", "--run", str(tmp_path)],
            "bad picture": ["--predict", str(tmp_path / "nope.jpg"), "--run", str(folder)]}[case]
    proc = run_main(cnn_train, argv, capsys)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert {"no run": "no trained model under", "no model": "no model.pt there",
            "bad picture": "cannot read the picture"}[case] in proc.stderr


def test_a_korean_file_name_is_drawn_without_missing_glyphs(trained, tmp_path, monkeypatch,
                                                           capsys, recwarn):
    from matplotlib import font_manager as fm
    from PIL import Image

    out, folder = trained
    picture = tmp_path / "고양이.png"
    Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(picture)
    figures, save = [], common.save_figure
    monkeypatch.setattr(common, "save_figure", lambda fig, *a: figures.append(fig) or
                        save(fig, *a))
    proc = run_main(cnn_train, ["--predict", str(picture), "--out-dir", str(out)], capsys)
    assert proc.returncode == 0 and "고양이.png" in proc.stdout  # the terminal keeps the name
    assert not [w for w in recwarn if "missing from font" in str(w.message)]
    title = figures[0]._suptitle
    fonts = [fm.get_font(fm.findfont(fm.FontProperties(family=[f])))
             for f in title.get_fontfamily() if "Last Resort" not in f]  # a box per block
    assert all(any(f.get_char_index(ord(c)) for f in fonts) for c in title.get_text())
    assert (folder / "predict_고양이.png").exists()


@pytest.mark.parametrize("damage", ["text", "empty", "truncated", "other net", "bare weights",
                                    "unknown activation", "other classes", "pickled object"])
def test_a_damaged_or_foreign_model_pt_is_one_line_and_exit_2(damage, trained, tmp_path,
                                                              capsys):
    _, folder = trained
    good = (folder / "model.pt").read_bytes()
    saved = torch.load(folder / "model.pt", weights_only=True)
    path = tmp_path / "model.pt"
    if damage in ("text", "empty", "truncated"):
        path.write_bytes({"text": b"not a model\n", "empty": b"",
                          "truncated": good[:len(good) // 2]}[damage])
    else:
        changed = {"other net": dict(saved, state_dict=torch.nn.Linear(2, 2).state_dict()),
                   "bare weights": saved["state_dict"],
                   "unknown activation": dict(saved, act="gelu"),
                   "other classes": dict(saved, num_classes=7),
                   "pickled object": dict(saved, extra=io.StringIO())}[damage]
        torch.save(changed, path)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_main(cnn_train, ["--predict", "--run", str(tmp_path)], capsys)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {path} is not a model.pt of this CNN, or is damaged")
    assert "Traceback" not in proc.stderr and "--run FOLDER" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_the_default_picture_is_the_first_test_car_which_no_run_trained_on(trained, tiny_cifar,
                                                                          monkeypatch, capsys):
    _, folder = trained
    root, _, (test_rows, test_labels) = tiny_cifar
    i = test_labels.index(CLASSES.index("automobile"))
    seen, forward = [], cnn_train.CNN.forward
    monkeypatch.setattr(cnn_train.CNN, "forward", lambda self, x: seen.append(x) or
                        forward(self, x))
    proc = run_main(cnn_train, ["--predict", "--run", str(folder), "--data-dir", root,
                                "--no-download"], capsys)
    assert proc.returncode == 0, proc.stderr
    assert f"CIFAR-10 test image {i} (class automobile), the first test car, never trained " \
           "on" in proc.stdout
    image = test_rows[i].reshape(3, 32, 32).transpose(1, 2, 0)
    assert torch.equal(seen[0][0], common.to_tensor(image))


def test_predict_takes_the_newest_completed_full_run_and_says_which_and_why(trained, tmp_path,
                                                                           capsys):
    """A quick --limit run, a stopped run, a damaged file, a CIFAR-10 run and another net's
    weights, all newer than the one full completed synthetic run: --predict --data synthetic
    takes that one."""
    _, folder = trained
    saved = torch.load(folder / "model.pt", weights_only=True)
    runs = {"full": dict(limit=None, test_acc=61.0), "mid": dict(limit=500, test_acc=40.0),
            "quick": dict(limit=2000, test_acc=15.0),
            "stopped": dict(limit=None, test_acc=None, status="interrupted"),
            "broken": None, "cifar": dict(limit=None, test_acc=80.0, data="cifar10"),
            "foreign": dict(limit=None, test_acc=99.0,
                            state_dict=torch.nn.Linear(2, 2).state_dict())}
    for age, (name, change) in enumerate(runs.items()):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "model.pt"
        if change is None:
            path.write_text("not a model")
        else:
            torch.save({**saved, "status": "completed", **change}, path)
        os.utime(path, (1e9 + age, 1e9 + age))  # later in the list: newer

    def model_lines(*argv):
        proc = run_main(cnn_train, ["--predict", "--data", "synthetic", "--out-dir",
                                    str(tmp_path), *argv], capsys)
        assert proc.returncode == 0, proc.stderr
        return [l for l in proc.stdout.splitlines() if l.startswith(("model:", "warning:"))]

    full = tmp_path / "full" / "model.pt"
    assert model_lines() == [f"model: {full}, the newest run that completed on all synthetic "
                             "training images (trained on synthetic, test acc 61.0%) "
                             "[SYNTHETIC DATA]"]
    full.unlink()  # then only the nearest: a completed --limit run, the newest of them
    assert model_lines() == [
        f"model: {tmp_path / 'quick' / 'model.pt'}, no run here completed on all synthetic "
        "training images: the nearest (trained on synthetic --limit 2000, test acc 15.0%) "
        "[SYNTHETIC DATA]", f"warning: this net is weak (chance is 10%); {tmp_path / 'mid'} "
        f"has test acc 40.0%: --run {tmp_path / 'mid'}"]
    lines = model_lines("--run", str(tmp_path / "stopped"))
    assert "given by --run (trained on synthetic, not tested: run interrupted)" in lines[0]
    assert lines[1] == f"warning: this net is untested; {tmp_path / 'mid'} has test acc " \
                       f"40.0%: --run {tmp_path / 'mid'}"

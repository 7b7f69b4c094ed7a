"""What a first-time student meets: pasteable lecture functions, progress, help, figures."""
import datetime
import inspect
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import common
from conftest import ROOT, load_script, run_main

conv = load_script("01_convolution.py")
cnn_train = load_script("03_cnn_train.py")
cases = load_script("04_case_studies.py")
QUICK = ("--data", "synthetic", "--epochs", "1", "--limit", "128", "--no-download")

PASTE_MAIN = """
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
data = torch.utils.data.TensorDataset(torch.randn(96, 3, 32, 32, generator=g),
                                      torch.randint(0, 10, (96,), generator=g))
train_loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)
val_loader = torch.utils.data.DataLoader(data, batch_size=32)
net = CNN()
for bad, why in ((train_loader, "a single loader"), ({"train": train_loader}, "no val"),
                 ((train_loader, val_loader), "a tuple")):
    try:
        experiment(net, bad, dict(lr=0.01, epochs=2), "cpu")
        raise SystemExit("accepted " + why)
    except ValueError as err:
        assert "loaders" in str(err) and "\\n" not in str(err), err
for bad in (dict(lr=0.01, epochs=2, optim="sgd"), dict(lr=0.01, epochs=2, shedule="none"),
            dict(epochs=2)):
    try:
        experiment(net, {"train": train_loader, "val": val_loader}, bad, "cpu")
        raise SystemExit("accepted " + str(bad))
    except ValueError as err:
        print("refused:", err)
result = experiment(net, {"train": train_loader, "val": val_loader, "test": val_loader},
                    dict(lr=0.01, momentum=0.9, epochs=2, schedule="onecycle"), "cpu")
assert len(result["val_accs"]) == 2 and result["test_acc"] is not None, result
result = experiment(CNN(), {"train": train_loader, "val": val_loader}, dict(lr=0.01, epochs=1),
                    "cpu")
assert result["test_acc"] is None and result["status"] == "completed"
for name, fig in (("loss", plot_loss_variation(result)), ("acc", plot_acc_variation(result))):
    fig.savefig(name + ".png")  # a plain savefig: nothing may stick out of the figure
    box = fig.bbox
    for artist in [fig.axes[0].get_legend(), *fig.axes[0].texts]:
        e = artist.get_window_extent()
        assert box.x0 <= e.x0 and e.x1 <= box.x1 and box.y0 <= e.y0 and e.y1 <= box.y1, name
imshow(next(iter(val_loader))[0][0].clamp(-1, 1), "an image").savefig("img.png")
print("corr2d", corr2d(np.arange(9.0).reshape(3, 3), np.array([[0.0, 1.0], [2.0, 3.0]])).tolist())
print("corr1d", corr1d([0, 0, 1, 2, 3, 2, 1], [1, 0, -1]).tolist())
print("conv1d", conv1d([0, 0, 1, 2, 3, 2, 1], [1, 0, -1]).tolist())
block = BasicBlock(16, 32, stride=2)
print("block", tuple(block(torch.randn(2, 16, 8, 8)).shape))
print("PASTED OK")
"""


def readme_paste_list():
    """README's "Copy into homework": the import lines and the functions per file."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Copy into homework", 1)[1].split("\n## ", 1)[0]
    block = section.split("```python", 1)[1].split("```", 1)[0]
    imports = [line for line in block.splitlines() if line.startswith(("import ", "from "))]
    pieces = []
    for line in section.splitlines():
        match = re.match(r"- `(\S+\.py)`: (.*)", line)
        if match:
            module = {"common.py": common, "03_cnn_train.py": cnn_train,
                      "01_convolution.py": conv, "04_case_studies.py": cases}[match.group(1)]
            pieces += [getattr(module, name) for name in re.findall(r"`(\w+)`", match.group(2))]
    return imports, pieces


def test_lecture_functions_paste_into_a_notebook(tmp_path):
    """Exactly what README's "Copy into homework" lists runs in a file with exactly its
    imports (no common, no script, no other module), on plain DataLoaders."""
    imports, pieces = readme_paste_list()
    assert imports == ["import time", "import torch", "import torch.nn as nn",
                       "import torch.nn.functional as F", "import numpy as np",
                       "import matplotlib.pyplot as plt"]
    assert {p.__name__ for p in pieces} >= {"train", "validate", "test", "experiment",
                                           "plot_loss_variation", "plot_acc_variation",
                                           "imshow", "CNN", "corr1d", "conv1d", "corr2d",
                                           "BasicBlock"}
    source = "\n".join(imports) + "\n\n" + "\n\n".join(inspect.getsource(p) for p in pieces) \
        + PASTE_MAIN
    path = tmp_path / "homework.py"
    path.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "PASTED OK" in proc.stdout
    assert "corr2d [[19.0, 25.0], [37.0, 43.0]]" in proc.stdout
    assert "corr1d [-1, -2, -2, 0, 2]" in proc.stdout  # lists, as 01 prints them
    assert "block (2, 32, 4, 4)" in proc.stdout
    assert proc.stdout.count("refused: settings:") == 3
    assert all((tmp_path / f).stat().st_size > 0 for f in ("loss.png", "acc.png", "img.png"))


def test_corr1d_and_corr2d_take_lists_arrays_and_tensors():
    X = np.random.default_rng(0).normal(size=(6, 7))
    K = np.array([[1.0, -1.0], [0.5, 2.0]])
    assert np.allclose(conv.corr2d(X, K).numpy(), conv.corr2d(torch.tensor(X),
                                                              torch.tensor(K)).numpy())
    x, k = [0, 0, 1, 2, 3, 2, 1, 0], [1, 0, -1]
    for xs, ks in ((x, k), (np.array(x), np.array(k)), (torch.tensor(x), torch.tensor(k))):
        assert conv.corr1d(xs, ks).tolist() == np.correlate(x, k, mode="valid").tolist()
        assert conv.conv1d(xs, ks).tolist() == np.convolve(x, k, mode="valid").tolist()


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _drive(progress, clock, steps=40, dt=0.4):
    for _ in progress(list(range(steps)), 1):
        clock.now += dt


def test_progress_on_a_terminal_redraws_one_line(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(common.time, "perf_counter", clock)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    progress = common.Progress(epochs=3)
    _drive(progress, clock)
    progress.clear()
    text = out.getvalue()
    assert text.count("\r") > 10 and "\n" not in text
    assert "epoch 1/3: batch 40/40" in text and "left" in text
    assert text.endswith("\r" + " " * 79 + "\r")


def test_progress_into_a_file_prints_few_plain_lines(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(common.time, "perf_counter", clock)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    progress = common.Progress(epochs=40)
    _drive(progress, clock, steps=300, dt=0.5)  # a 150-second epoch
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and 2 <= len(lines) <= 4
    assert lines[0].startswith("  epoch 1/40: batch 6/300")  # 3 s into the run
    assert lines[0].endswith("time left: known after epoch 1")  # no guess from warm-up
    clock.now += 30  # epoch 1's validation: 180 s an epoch in all
    for _ in progress(list(range(300)), 2):
        clock.now += 0.5
    first = out.getvalue().splitlines()[len(lines)]  # a minute after the last line
    assert first.startswith("  epoch 2/40: batch 120/300, 0:01:00 spent")
    assert first.endswith(f"run ~{datetime.timedelta(seconds=180 * 39 - 60)} left")


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        cnn_train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: [0.05])" in text and "(default: ['relu'])" in text
    assert "(default: onecycle)" in text and "NAME-2, NAME-3" in text
    for option in ("--act", "--deterministic", "--lecture"):
        assert option in text
    with pytest.raises(SystemExit):
        load_script("02_padding_pooling.py").build_parser().parse_args(["--help"])
    assert "receptive fields and the VGG rule in numbers." in " ".join(
        capsys.readouterr().out.split())


def test_figures_of_a_run_without_epochs_say_so():
    empty = {"train_losses": [], "val_losses": [], "train_accs": [], "val_accs": [],
             "test_acc": None}
    for fig in (common.plot_loss_variation(empty), common.plot_acc_variation(empty)):
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert "no finished epoch" in texts and fig.axes[0].get_title().endswith("0 epochs")
        common.plt.close(fig)
    one = dict(empty, train_accs=[50.0], val_accs=[40.0], test_acc=41.0)
    fig = common.plot_acc_variation(one)
    assert fig.axes[0].get_ylim() == (0, 100) and fig.axes[0].get_title().endswith("1 epoch")
    common.plt.close(fig)
    nan_filters = cnn_train.plot_filters(torch.full((16, 3, 3, 3), float("nan")),
                                         torch.ones(16, 3, 3, 3))
    assert any("diverged" in t.get_text() for t in nan_filters.texts)
    common.plt.close(nan_filters)


@pytest.mark.parametrize("act, low, high", [("relu", 0.0, None), ("tanh", -1.0, 1.0),
                                            ("sigmoid", 0.0, 1.0)])
def test_act_builds_the_same_cnn_with_that_activation(act, low, high):
    torch.manual_seed(0)
    net = cnn_train.CNN(act=act)
    assert sum(p.numel() for p in net.parameters()) == 82330
    seen = []
    net.conv1_2.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    net(torch.randn(4, 3, 32, 32) * 3)
    x = seen[0]  # what the activation made of conv1_1's output
    raw = net.conv1_1(torch.randn(1, 3, 32, 32))
    assert x.min() >= low and (high is None or x.max() <= high)
    library = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[act]
    assert torch.allclose(cnn_train.CNN.ACTIVATIONS[act](raw), library(raw))
    if act != "relu":
        assert x.min() < 0 or act == "sigmoid"
        assert (x > 0).float().mean() > 0.99 or act == "tanh"  # sigmoid is never 0


@pytest.mark.usefixtures("figures_fit_their_canvas")
def test_act_sweep_writes_one_run_per_value_a_figure_and_a_summary(tmp_path, capsys):
    proc = run_main(cnn_train, [*QUICK, "--out-dir", str(tmp_path), "--act", "relu",
                    "tanh"], capsys)
    assert proc.returncode == 0, proc.stderr
    sweep = tmp_path / "synthetic" / "cnn_act"
    for act in ("relu", "tanh"):
        assert json.loads((sweep / act / "result.json").read_text())["act"] == act
    assert (sweep / "act.png").stat().st_size > 0 and (sweep / "summary.json").exists()
    assert "epochs to train error < 25%" in proc.stdout
    assert "python 04_case_studies.py --claim relu" in proc.stdout  # the verdict lives there
    rows = [line.split()[0] for line in proc.stdout.splitlines()
            if line.strip().startswith(("relu ", "tanh "))]
    assert rows == ["relu", "tanh"]


def test_result_json_records_precision_and_rounded_accuracies(tmp_path, capsys):
    proc = run_main(cnn_train, [*QUICK, "--out-dir", str(tmp_path)], capsys)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "synthetic" / "cnn" / "result.json").read_text())
    assert record["precision"] in ("bf16", "fp32") and "amp" not in record["settings"]
    assert record["device_name"] and record["date"]
    for acc in record["result"]["val_accs"] + [record["result"]["test_acc"]]:
        assert round(acc, 2) == acc
    assert sum(map(sum, record["result"]["test_confusion"])) == 128


# ----------------------------------------------------------------------------- what each layer sees

def _probe(net, upto):
    """The CNN's layers up to `upto` with all-ones convs, average pools, no activation: every
    input pixel a unit depends on then gets a positive gradient (as 02 checks its formula)."""
    layers = []
    for name in cnn_train.CNN.LAYER_ORDER:
        m = getattr(net, name)
        if isinstance(m, torch.nn.Conv2d):
            conv = torch.nn.Conv2d(1, 1, m.kernel_size, m.stride, m.padding, bias=False)
            torch.nn.init.ones_(conv.weight)
            layers.append(conv)
        else:
            layers.append(torch.nn.AvgPool2d(m.kernel_size, m.stride))
        if name == upto:
            return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("layer, field", [("conv1_2", 5), ("conv2_2", 14), ("conv3_2", 32)])
@pytest.mark.parametrize("where", ["centre", "corner"])
def test_receptive_box_is_exactly_the_pixels_with_gradient(layer, field, where):
    net = cnn_train.CNN()
    geometry = cnn_train.layer_geometry(net, layer)
    assert common.receptive_field(geometry) == field
    x = torch.zeros(1, 1, 32, 32, requires_grad=True)
    y = _probe(net, layer)(x)
    i = j = y.shape[-1] // 2 if where == "centre" else 0
    y[0, 0, i, j].backward()
    rows, cols = (x.grad[0, 0] > 0).nonzero(as_tuple=True)
    top, bottom, left, right = cnn_train.receptive_box(geometry, i, j, size=32)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (top, bottom, left, right)
    assert len(rows) == (bottom - top + 1) * (right - left + 1)  # the whole box, nothing else


@pytest.mark.usefixtures("figures_fit_their_canvas")
def test_a_run_saves_the_layer_figures_and_the_filters_movement(tmp_path, capsys):
    proc = run_main(cnn_train, [*QUICK, "--out-dir", str(tmp_path)], capsys)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "synthetic" / "cnn"
    for name in ("features.png", "top_patches.png", "filters.png", "model.pt"):
        assert (folder / name).stat().st_size > 0
    assert "[SYNTHETIC DATA]" in [l for l in proc.stdout.splitlines() if "val acc" in l][0]


def test_strongest_responses_find_the_brightest_image():
    net = cnn_train.CNN()
    images = torch.zeros(20, 3, 32, 32)
    images[13, :, 5:9, 20:24] = 1.0  # one bright patch in image 13
    with torch.no_grad():
        for conv in (net.conv1_1, net.conv1_2):
            conv.weight.fill_(0.1)
            conv.bias.zero_()
    found = cnn_train.strongest_responses(net, [(images[:10], None), (images[10:], None)],
                                          layers=("conv1_2",), units=2, top=3)
    unit, hits = found["conv1_2"][0]
    n, i, j = hits[0]
    assert n == 13 and 5 <= i <= 8 and 20 <= j <= 23

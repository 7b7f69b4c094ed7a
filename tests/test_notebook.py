"""Where most students run this: a real Jupyter kernel (ipykernel, inline backend), driven
cell by cell as README's "In Colab or Jupyter" section shows, and a plain runpy run. The
kernel starts without MPLBACKEND, so matplotlib is inline there as in a student's notebook."""
import base64
import json
import os
import random
import re
import runpy
import shutil
import signal
import socket
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT

OFFLINE = "--data synthetic --no-download"
# What a run must leave as it found it. Not the backend's name: matplotlib 3.11 calls the same
# inline backend 'inline' after %run; what counts is that the student's plot still shows (OWN_PLOT)
STATE = "import signal, socket, torch; print('STATE', " \
        "[str(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)], " \
        "socket.getdefaulttimeout(), torch.are_deterministic_algorithms_enabled())"
OWN_PLOT = "import matplotlib.pyplot as plt\nplt.plot([3, 2, 1])\nplt.show()"


def readme_cells():
    """The code cells of README's notebook section, the clone and install cell left out."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## In Colab or Jupyter", 1)[1].split("\n## ", 1)[0]
    cells = re.findall(r"```python\n(.*?)```", section, re.S)
    return [c for c in cells if "git clone" not in c]


class Kernel:
    """One ipykernel; run(code) returns (text printed, PNG images shown, error name)."""

    def __init__(self, cwd):
        manager = pytest.importorskip("jupyter_client.manager")
        pytest.importorskip("ipykernel")
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
        env["PYTHONPATH"] = ROOT
        self.km, self.kc = manager.start_new_kernel(kernel_name="python3", cwd=cwd, env=env)

    def run(self, code, when=None, timeout=600):
        msg_id, text, images, error = self.kc.execute(code), "", 0, None
        self.pngs = []  # the PNGs shown, base64
        while True:
            msg = self.kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                return text, images, error
            text += content.get("text", "") if kind == "stream" else ""
            if kind in ("display_data", "execute_result") and "image/png" in content["data"]:
                images += 1
                self.pngs.append(content["data"]["image/png"])
            error = content["ename"] if kind == "error" else error
            if when and when[0] in text:
                when[1]()
                when = None

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    k = Kernel(ROOT)
    yield k, tmp_path_factory.mktemp("nb")
    k.close()


def test_percent_run_shows_every_figure_once_and_leaves_the_notebook_as_it_was(kernel):
    k, tmp = kernel
    assert "inline" in k.run("import matplotlib; print(matplotlib.get_backend())")[0]
    before = k.run(STATE)[0]
    assert "None" in before  # no socket timeout
    k.run("import common")
    assert k.run(STATE)[0] == before and k.run(OWN_PLOT)[1] == 1
    cells = readme_cells()
    runs = [line for line in cells[0].splitlines() if line.startswith("%run")]
    k.run("\n".join(line for line in cells[0].splitlines() if line not in runs))
    shown = {}
    for line in runs:
        script, extra = line.split()[1], f"{OFFLINE} --out-dir {tmp}"
        if script.startswith("03"):
            extra = extra.replace("--epochs 10", "") + " --epochs 1 --limit 256"
            line = line.replace("--epochs 10", "")
        if script.startswith("04"):  # the table, its training-speed measurement stubbed
            k.run("import common; real_train = common.train\n"
                  "common.train = lambda net, batches, *a, **k: (0.0, 0.0)")
        text, images, error = k.run(f"{line} {extra}")
        if script.startswith("04"):
            k.run("common.train = real_train")
        assert error is None, text
        shown[script] = images
        assert k.run(STATE)[0] == before, script  # handlers, timeout, torch flags
        assert k.run(OWN_PLOT)[1] == 1, script  # the student's own plot still shows
    assert shown == {"01_convolution.py": 4, "02_padding_pooling.py": 2, "03_cnn_train.py": 7,
                     "04_case_studies.py": 2}
    runs = f"{tmp}/synthetic"  # the run just made went to cnn-2; older runs in cnn and cnn-3
    os.rename(f"{runs}/cnn", f"{runs}/cnn-2")
    made = f"{runs}/cnn-2/accuracy.png"
    for old in ("cnn", "cnn-3"):
        os.makedirs(f"{runs}/{old}")
        shutil.copy(f"{runs}/cnn-2/loss.png", f"{runs}/{old}/accuracy.png")
        os.utime(f"{runs}/{old}/accuracy.png", (1e9, 1e9))
    assert k.run(f"{cells[1].replace('runs/', f'{tmp}/synthetic/')}")[1] == 1  # a saved one
    assert base64.b64decode(k.pngs[0]) == open(made, "rb").read()  # the run just made
    last = cells[2].replace('"auto", limit=5000', '"synthetic", limit=256, log=print')
    text, images, error = k.run(last)
    assert error is None and images == 1, text  # the returned figure shows exactly once


def test_an_error_is_one_line_and_the_stop_button_keeps_the_finished_epochs(kernel):
    k, tmp = kernel
    text, images, error = k.run(f"%run 03_cnn_train.py --data cifar10 --data-dir {tmp}/none "
                                f"--no-download --out-dir {tmp}")
    assert error == "SystemExit" and text.strip().startswith("error: CIFAR-10 is not in")
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    text, _, error = k.run(f"%run 03_cnn_train.py {OFFLINE} --limit 128 --epochs 1000 "
                           f"--out-dir {tmp}/stop", when=("Epoch 2,", k.km.interrupt_kernel))
    record = json.load(open(f"{tmp}/stop/synthetic/cnn/result.json"))
    assert record["status"] == "interrupted" and len(record["result"]["train_losses"]) >= 2
    assert error == "SystemExit" and "Traceback" not in text


def test_runpy_leaves_backend_handlers_timeout_and_torch_flags_as_they_were(tmp_path,
                                                                            monkeypatch):
    import matplotlib

    mine, old_backend = signal.signal(signal.SIGTERM, lambda *a: None), matplotlib.get_backend()
    try:
        handler, backend = signal.getsignal(signal.SIGTERM), "template"
        matplotlib.use(backend)
        before = (matplotlib.get_backend(), signal.getsignal(signal.SIGTERM),
                  socket.getdefaulttimeout(), torch.are_deterministic_algorithms_enabled())
        seed = lambda: (torch.manual_seed(7), random.seed(7), np.random.seed(7))  # noqa: E731
        draw = lambda: (torch.rand(3).tolist(), random.random(), np.random.rand())  # noqa: E731
        seed()
        expected = draw()  # the student's next draws, without any run
        seed()
        for script, extra in (("01_convolution.py", []),
                              ("03_cnn_train.py", ["--epochs", "1", "--limit", "64",
                                                   "--deterministic"])):
            monkeypatch.setattr(sys, "argv", [script, *OFFLINE.split(), "--out-dir",
                                              str(tmp_path), *extra])
            with pytest.raises(SystemExit) as exit_:
                runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
            assert exit_.value.code == 0
            assert (matplotlib.get_backend(), signal.getsignal(signal.SIGTERM),
                    socket.getdefaulttimeout(), torch.are_deterministic_algorithms_enabled()) \
                == before == ("template", handler, None, False)
        assert draw() == expected  # the runs seeded 123 and drew, then gave the state back
    finally:
        signal.signal(signal.SIGTERM, mine)
        matplotlib.use(old_backend)


def test_a_pasted_plot_function_shows_its_figure_once_in_a_fresh_kernel(tmp_path):
    """README's homework imports, the lecture's plot functions pasted, no %matplotlib line
    and no pyplot drawing before: the returned figure shows, once."""
    import inspect

    import common

    text = open(os.path.join(ROOT, "README.md")).read()
    imports = re.findall(r"```python\n(.*?)```", text.split("## Copy into homework")[1], re.S)[0]
    pasted = "\n\n".join(inspect.getsource(f) for f in (
        common.plot_train_val, common.plot_loss_variation, common.plot_acc_variation,
        common.imshow))
    k = Kernel(str(tmp_path))
    try:
        assert k.run(imports + "\n" + pasted)[2] is None
        k.run("result = {'train_losses': [2.1, 1.7], 'val_losses': [2.0, 1.8], "
              "'train_accs': [20.0, 35.0], 'val_accs': [25.0, 33.0], 'test_acc': 32.5}")
        for call in ("plot_acc_variation(result)", "plot_loss_variation(result)",
                     "imshow(torch.zeros(3, 32, 32), 'a black image')"):
            text, images, error = k.run(call)
            assert error is None and images == 1, (call, text)
    finally:
        k.close()


def test_a_bad_option_under_percent_run_is_one_line(kernel):
    k, tmp = kernel
    text, images, error = k.run("%run 03_cnn_train.py --lr -1")
    assert error == "SystemExit" and images == 0
    assert text.strip().splitlines() == [
        "03_cnn_train.py: error: argument --lr: must be a positive number, got -1 (see --help)"]

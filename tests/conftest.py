"""Shared fixtures: a tiny CIFAR-10 in torchvision's own file format, and script loading."""
import importlib.util
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n 2: one torch thread per worker (and
    os.environ["OMP_NUM_THREADS"] = "1"    # for its scripts), or 2 cores spin against 4

CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]


def write_tiny_cifar(root, per_batch=60, n_test=100, seed=0):
    """cifar-10-batches-py/ with 5 train batches of `per_batch` images and a test batch,
    pickled exactly as the real files are (data: (N, 3072) uint8 rows, labels: list)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)

    def batch(name, n):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        return data, labels

    train = [batch(f"data_batch_{i}", per_batch) for i in range(1, 6)]
    test = batch("test_batch", n_test)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": CLASSES}, f)
    return train, test


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
    """A tiny CIFAR-10 in tmp_path, read by the real torchvision loader. Our files cannot
    match the official md5 sums, so only that check is patched: a file counts as intact
    when it is there."""
    import torchvision.datasets.cifar as cifar

    def files_there(self):
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, name))
                   for name, _ in self.train_list + self.test_list)

    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", files_there)
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    import torchvision.datasets.utils as utils
    monkeypatch.setattr(utils, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    train, test = write_tiny_cifar(str(tmp_path))
    return str(tmp_path), train, test


def load_script(name):
    """Import a numbered script (its name starts with a digit) as a module."""
    path = os.path.join(ROOT, name)
    spec = importlib.util.spec_from_file_location(name[:-3].lstrip("0123456789_"), path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so that inspect finds the source of its classes
    spec.loader.exec_module(module)
    return module


def run_script(*args, timeout=900):
    """Run a script as a student would, offline; returns the CompletedProcess."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_main(module, argv, capsys):
    """module.main(argv) through the scripts' own entry point (common.launch, with its one
    error handler) in this process: faster than a subprocess. Returns code, stdout, stderr."""
    import common

    capsys.readouterr()
    try:
        common.launch(lambda: module.main(list(argv)))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


@pytest.fixture
def figures_fit_their_canvas(monkeypatch):
    """Every figure that a test using this has a script save is checked first: nothing drawn
    sticks out of the canvas (a title cut at the right, a legend or label cut off). The tests
    that use it save every kind of PNG 01-04 make, on synthetic data."""
    import common
    from matplotlib.text import Text

    real = common.save_figure

    def checked(fig, path, show=False):
        fig.draw_without_rendering()
        renderer = fig._get_renderer()
        drawn, size = fig.get_tightbbox(renderer), fig.get_size_inches()  # inches, both
        if not (drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= size[0] + 0.01
                and drawn.y1 <= size[1] + 0.01):
            ticks = {t for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
                     for t in axis.get_ticklabels(which="both")}
            def outside(t):
                e = t.get_window_extent(renderer)
                return not (fig.bbox.contains(*e.min) and fig.bbox.contains(*e.max))

            out = [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()
                   and t not in ticks and outside(t)]
            pytest.fail(f"{os.path.basename(path)}: drawn {drawn.bounds} (x0, y0, width, "
                        f"height in inches) sticks out of its {tuple(size)} canvas: {out}")
        return real(fig, path, show)

    monkeypatch.setattr(common, "save_figure", checked)

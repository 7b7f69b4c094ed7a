"""What a student meets (issue 16): figures that read right and the last reliability
defects, each one line, the documented exit code, nothing lost."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

import common
from conftest import ROOT, load_script, run_main

cs = load_script("04_case_studies.py")
QUICK = ("--data", "synthetic", "--epochs", "1", "--limit", "64", "--no-download")


# ----------------------------------------------------------------------------- figures

def test_one_epoch_plots_have_integer_epoch_ticks_and_no_offset():
    flat = {"train_losses": [2.3031], "val_losses": [2.3033], "train_accs": [10.0],
            "val_accs": [10.1], "test_acc": 10.0}
    figures = [common.plot_loss_variation(flat), common.plot_acc_variation(flat),
               common.plot_curves([("training loss", {"a": [2.3031], "b": [2.3033]})])]
    for fig in figures:
        fig.canvas.draw()
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks == [1.0]  # the one epoch, counted from 1
        assert ax.yaxis.get_offset_text().get_text() == ""  # no '+2.303' offset
        common.plt.close(fig)


def test_claim_curves_that_coincide_stay_visible():
    fig = common.plot_curves([("val accuracy (%)", {"a": [10, 20], "b": [10, 20]}),
                              ("training loss", {"a": [2.3, 2.2], "b": [2.3, 2.2]})])
    lines = [ax.get_lines() for ax in fig.axes]
    assert all(ax.get_legend() is not None for ax in fig.axes)  # a legend on every panel
    assert all(a.get_linestyle() != b.get_linestyle() or a.get_marker() != b.get_marker()
               for a, b in lines)
    assert fig.axes[1].get_ylim()[0] == 0  # a loss axis starts at 0: no auto-zoom
    common.plt.close(fig)


def test_claim_figure_shows_each_runs_seed_spread_and_what_the_rule_reads():
    fig = common.plot_curves([("training error (%)",
                               {"relu": [[60, 20], [70, 30]], "tanh": [[80, 60], [90, 70]]},
                               {"y": 25})])
    ax = fig.axes[0]
    bands = [c for c in ax.collections if c.get_paths()]
    assert len(bands) == 2  # one min-max band per run
    means = [list(line.get_ydata()) for line in ax.get_lines()[:2]]
    assert means == [[65, 25], [85, 65]]  # the line is the mean over seeds
    assert list(ax.get_lines()[2].get_ydata()) == [25, 25]  # the target the rule reads
    assert "2 seeds" in ax.get_legend().get_texts()[0].get_text()
    common.plt.close(fig)


# ----------------------------------------------------------------------------- data

def _archive_only(root):
    archive = os.path.join(root, common.CIFAR_FILE)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(os.path.join(root, "cifar-10-batches-py"), arcname="cifar-10-batches-py")
    shutil.rmtree(os.path.join(root, "cifar-10-batches-py"))
    return archive


def test_full_disk_while_unpacking_keeps_the_archive(tiny_cifar, monkeypatch):
    archive = _archive_only(tiny_cifar[0])

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", no_space)
    with pytest.raises(common.DataError, match="is full while unpacking") as err:
        common.get_data("auto", tiny_cifar[0], download=False)
    assert "corrupt" not in str(err.value) and os.path.getsize(archive) > 0
    assert sorted(os.listdir(tiny_cifar[0])) == [common.CIFAR_FILE]


def test_read_only_data_dir_is_one_line(tiny_cifar, monkeypatch):
    _archive_only(tiny_cifar[0])

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(common.tempfile, "mkdtemp", read_only)
    with pytest.raises(common.DataError, match="writable folder"):
        common.get_data("auto", tiny_cifar[0], download=False)


@pytest.mark.parametrize("which", ["data_dir", "folder"])
def test_a_file_where_the_data_folder_should_be_is_not_absent(tmp_path, which):
    if which == "data_dir":
        root = tmp_path / "afile"
        root.write_text("x")
    else:
        root = tmp_path
        (tmp_path / "cifar-10-batches-py").write_text("x")
    with pytest.raises(common.DataError, match="is a file, not a folder"):
        common.get_data("auto", str(root), download=False, log=lambda *_: None)


def test_corrupt_folder_message_names_our_options(tiny_cifar):
    os.remove(os.path.join(tiny_cifar[0], "cifar-10-batches-py", "data_batch_2"))
    with pytest.raises(common.DataError) as err:
        common.get_data("cifar10", tiny_cifar[0], download=False)
    assert "download=True" not in str(err.value) and "--data synthetic" in str(err.value)


# ----------------------------------------------------------------------------- 04

def test_04_train_twice_keeps_the_first_results(tmp_path, capsys):
    for _ in range(2):
        assert run_main(cs, ["--train", "lenet", *QUICK, "--out-dir", str(tmp_path)],
                        capsys).returncode == 0
    out = tmp_path / "04_case_studies"
    for name in ("train_results", "val_accuracy", "accuracy_vs_cost"):
        ext = ".json" if name == "train_results" else ".png"
        assert (out / f"{name}{ext}").exists() and (out / f"{name}-2{ext}").exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["lenet", "lenet-2"]


def test_04_table_stopped_after_one_model_says_so(tmp_path, monkeypatch, capsys):
    def one_then_stop(names, device, precision, rows):
        rows.append({"model": "lenet", "params": 1, "macs": 1, "stages": [],
                     "train_images_per_s": 1.0})
        raise KeyboardInterrupt

    monkeypatch.setattr(cs, "compare", one_then_stop)
    proc = run_main(cs, ["--out-dir", str(tmp_path)], capsys)
    assert proc.returncode == 130 and "1 of 11 models measured" in proc.stderr
    record = json.loads((tmp_path / "04_case_studies" / "compare.json").read_text())
    assert record["status"] == "interrupted" and record["complete"] is False


@pytest.mark.parametrize("argv, message", [
    (["--claim", "3x3", "--lr", "0.5"], "drop --lr/--l2"),
    (["--train", "resnet6000002"], "deeper than 1202 layers"),
])
def test_04_refuses_what_it_would_ignore_or_cannot_build(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cs.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


def test_reserve_keeps_files_that_go_together_on_one_suffix(tmp_path):
    (tmp_path / "compare.png").write_text("earlier")  # its json was deleted by hand
    paths = common.reserve(str(tmp_path / "compare.json"), also=["compare.png"])
    assert [os.path.basename(p) for p in paths] == ["compare-2.json", "compare-2.png"]
    assert (tmp_path / "compare.png").read_text() == "earlier"


# ----------------------------------------------------------------------------- output streams, temp files

def test_safe_stream_survives_a_full_disk_and_a_closed_stream():
    with open("/dev/full", "w") as full:
        stream = common._SafeStream(full)
        stream.write("x" * 10000)
        stream.flush()  # ENOSPC: the text goes to /dev/null, no exception
    closed = common._SafeStream(None)  # `>&-`: Python gives sys.stdout = None
    assert closed.write("text") == 4
    closed.flush()


def test_a_killed_runs_temp_file_is_cleaned_on_the_next_save(tmp_path):
    stale = tmp_path / ".tmp-abc.json"
    stale.write_text("{half")
    old = time.time() - 2 * common.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    fresh = tmp_path / ".tmp-def.json"  # another run writing now: left alone
    fresh.write_text("{")
    common.save_json({"a": 1}, str(tmp_path / "result.json"))
    assert not stale.exists() and fresh.exists()
    assert json.loads((tmp_path / "result.json").read_text()) == {"a": 1}


def test_ctrl_c_while_torch_loads_is_one_line_and_130(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "01_convolution.py", "--out-dir", str(tmp_path)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(0.4)  # torch takes seconds to import; the script is inside that now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().startswith("stopped by SIGINT")

"""What a student meets: figures that read right and lay themselves out, 04's outputs."""
import json

import pytest

import common
from conftest import load_script, run_main

cs = load_script("04_case_studies.py")
QUICK = ("--data", "synthetic", "--epochs", "1", "--limit", "64", "--no-download")


def test_one_epoch_plots_have_integer_epoch_ticks_and_no_offset():
    flat = {"train_losses": [2.3031], "val_losses": [2.3033], "train_accs": [10.0],
            "val_accs": [10.1], "test_acc": 10.0}
    figures = [common.plot_loss_variation(flat), common.plot_acc_variation(flat),
               common.plot_curves([("training loss", {"a": [2.3031], "b": [2.3033]})])]
    for fig in figures:
        fig.canvas.draw()
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        assert [t for t in ax.get_xticks() if lo <= t <= hi] == [1.0]  # epochs count from 1
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
                               {"relu": [[60, 20], [70, 30]], "tanh": [[80, 60], [90, 70]]}, 2)])
    ax = fig.axes[0]
    assert len([c for c in ax.collections if c.get_paths()]) == 2  # one min-max band per run
    assert [list(line.get_ydata()) for line in ax.get_lines()[:2]] == [[65, 25], [85, 65]]
    assert list(ax.get_lines()[2].get_xdata()) == [2, 2]  # the epoch the rule reads
    assert "2 seeds" in ax.get_legend().get_texts()[0].get_text()
    common.plt.close(fig)


def test_the_accuracy_figure_says_why_there_is_no_test_accuracy():
    base = {"train_losses": [2.0], "val_losses": [2.0], "train_accs": [20.0], "val_accs": [25.0],
            "test_acc": None}
    for status, text in (("interrupted", "run interrupted"), ("diverged", "run diverged"),
                         ("completed", "no test set")):
        fig = common.plot_acc_variation(dict(base, status=status))
        assert any(text in t.get_text() for t in fig.axes[0].texts)
        common.plt.close(fig)


def test_04_train_twice_keeps_the_first_results(tmp_path, capsys):
    for _ in range(2):
        assert run_main(cs, ["--train", "lenet", *QUICK, "--out-dir", str(tmp_path)],
                        capsys).returncode == 0
    out = tmp_path / "synthetic" / "04_case_studies"
    assert sorted(p.name for p in out.iterdir()) == ["train", "train-2"]
    for folder in ("train", "train-2"):
        assert sorted(p.name for p in (out / folder).iterdir()) == [
            "accuracy_vs_cost.png", "lenet", "results.json", "val_accuracy.png"]


def test_04_table_stopped_after_one_model_says_so(tmp_path, monkeypatch, capsys):
    def one_then_stop(names, device, precision, rows):
        rows.append({"model": "lenet", "params": 1, "macs": 1, "stages": [],
                     "train_images_per_s": 1.0})
        raise KeyboardInterrupt

    monkeypatch.setattr(cs, "compare", one_then_stop)
    proc = run_main(cs, ["--out-dir", str(tmp_path)], capsys)
    assert proc.returncode == 130 and "1 of 11 models measured" in proc.stderr
    record = json.loads((tmp_path / "04_case_studies" / "compare.json").read_text())
    assert record["status"] == "interrupted" and len(record["models"]) == 1


@pytest.mark.parametrize("argv, message", [
    (["--claim", "3x3", "--lr", "0.5"], "drop --lr/--l2"),
    (["--train", "resnet6000002"], "unknown model resnet6000002"),
    (["--trian", "lenet"], "unrecognized arguments: --trian lenet (see --help)"),
])
def test_04_refuses_what_it_would_ignore_or_cannot_build(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cs.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "usage:" not in err


@pytest.mark.usefixtures("figures_fit_their_canvas")
def test_the_figure_guard_fails_a_title_cut_at_the_right(tmp_path):
    fig, ax = common.subplots(figsize=(3, 2))
    common.save_figure(fig, str(tmp_path / "fits.png"))
    ax.set_title("a title far too long for a figure three inches wide, cut at the right")
    with pytest.raises(pytest.fail.Exception, match="sticks out of its"):
        common.save_figure(fig, str(tmp_path / "cut.png"))


def test_every_readme_reference_names_a_heading_that_is_there(capsys):
    """'(README, Troubleshooting)' in --help or in the code points to a heading of README."""
    import os
    import re

    from conftest import ROOT

    headings = re.findall(r"(?m)^#+ (.+)$", open(os.path.join(ROOT, "README.md")).read())
    texts = []
    for script in ("01_convolution.py", "02_padding_pooling.py", "03_cnn_train.py",
                   "04_case_studies.py"):
        with pytest.raises(SystemExit):
            load_script(script).build_parser().parse_args(["--help"])
        texts.append(" ".join(capsys.readouterr().out.split()))
    for name in ("common.py", "01_convolution.py", "02_padding_pooling.py", "03_cnn_train.py",
                 "04_case_studies.py"):  # strings continued over lines joined again
        texts.append(re.sub(r'"\s*\n\s*f?"|\n\s*', " ", open(os.path.join(ROOT, name)).read()))
    named = {m for t in texts for m in re.findall(r"README, ([A-Z][\w' -]*[\w'])", t)}
    assert named and named <= set(headings), named - set(headings)

"""04_case_studies.py: every model, the block facts, and the script's runs."""
import functools
import json

import pytest
import torch
import torch.nn as nn

import common
from conftest import load_script, run_main

cs = load_script("04_case_studies.py")

# The parameter counts README's table states (python 04_case_studies.py prints them).
PARAMS = {"lenet": 62_006, "alexnet": 7_506_762, "vgg": 9_225_610, "vgg_bn": 9_228_362,
          "googlenet": 564_402, "resnet20": 269_722, "resnet56": 853_018,
          "densenet": 769_162, "seresnet20": 272_782, "vgg3x3": 400_810, "vgg5x5": 550_890}


def test_every_model_is_listed():
    assert set(cs.MODELS) == set(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_model_shape_params_and_one_step(name):
    torch.manual_seed(0)
    model = cs.build(name)
    assert common.count_params(model) == PARAMS[name]
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # one SGD step on a fixed batch lowers that batch's loss
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    model.train()
    if name in ("alexnet",):  # dropout: compare losses with it switched off
        model.eval()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)  # small enough to descend
    before = nn.functional.cross_entropy(model(x), y)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = nn.functional.cross_entropy(model(x), y)
    assert after < before


def test_googlenet_aux_classifier_trains_with_the_loop():
    torch.manual_seed(0)
    model = cs.GoogLeNet(aux=True)
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 10), (2, 10)]
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    batches = [(torch.randn(4, 3, 32, 32), torch.arange(4))]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss, acc = common.train(model, batches, opt, nn.CrossEntropyLoss(), "cpu")
    assert loss > 0 and 0 <= acc <= 100
    assert model.aux.net[1][0].weight.grad is not None   # the aux head got a gradient


def test_inception_channels_are_the_sum_of_branches():
    m = cs.Inception(192, 64, 96, 128, 16, 32, 32).eval()
    y = m(torch.randn(1, 192, 28, 28))
    assert y.shape == (1, 64 + 128 + 32 + 32, 28, 28) and m.out_channels == 256
    naive = cs.Inception(192, 64, 96, 128, 16, 32, 32, reduce=False).eval()
    assert naive(torch.randn(1, 192, 28, 28)).shape[1] == 64 + 128 + 32 + 192


def test_bottleneck_saves_multiply_adds():
    facts = cs.inception_bottleneck()
    assert facts[True]["macs"] < facts[False]["macs"] / 2


@pytest.mark.parametrize("c_in,layers,k", [(24, 16, 12), (10, 3, 4)])
def test_dense_block_outputs_in_plus_l_times_k(c_in, layers, k):
    block = cs.DenseBlock(c_in, layers, k)
    y = block(torch.randn(2, c_in, 8, 8))
    assert y.shape == (2, c_in + layers * k, 8, 8) and block.out_channels == c_in + layers * k


def test_se_scales_lie_between_0_and_1():
    se = cs.SEBlock(32)
    x = torch.randn(4, 32, 8, 8) * 10
    s = se.scales(x)
    assert s.shape == (4, 32) and (s > 0).all() and (s < 1).all()
    assert torch.allclose(se(x), x * s[:, :, None, None])


@pytest.mark.parametrize("block_cls", [cs.BasicBlock, cs.SEBasicBlock])
def test_residual_block_with_zeroed_branch_returns_its_input(block_cls):
    block = block_cls(16, 16).eval()
    nn.init.zeros_(block.bn2.weight)       # the residual branch now outputs 0
    nn.init.zeros_(block.bn2.bias)
    x = torch.randn(2, 16, 8, 8)
    assert torch.allclose(block(x), torch.relu(x))
    x = x.relu()                           # a non-negative input passes through unchanged
    assert torch.allclose(block(x), x)


def test_downsampling_shortcut_pads_channels_with_zeros():
    block = cs.BasicBlock(16, 32, stride=2).eval()
    x = torch.rand(1, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (1, 32, 4, 4)
    assert torch.equal(s[:, 8:24], x[:, :, ::2, ::2]) and s[:, :8].abs().sum() == 0


@pytest.mark.usefixtures("figures_fit_their_canvas")
def test_default_table_writes_json_and_figure(tmp_path, monkeypatch, capsys):
    # the real table, with a shorter speed measurement (one step of 4 images per model)
    monkeypatch.setattr(cs, "throughput", functools.partial(cs.throughput, batch=4, steps=1))
    proc = run_main(cs, ["--out-dir", str(tmp_path)], capsys)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "04_case_studies"
    record = json.loads((folder / "compare.json").read_text())
    assert {r["model"]: r["params"] for r in record["models"]} == PARAMS
    assert all(r["macs"] > 0 and r["train_images_per_s"] > 0 for r in record["models"])
    assert (folder / "compare.png").stat().st_size > 0
    assert (folder / "imagenet_top5.png").stat().st_size > 0
    for lesson in ("Inception 3a", "SE block", "gradient norm reaching the first conv",
                   "Yang et al. 2019", "DenseNet-BC-100 block 1"):
        assert lesson in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines() if "/" not in line) <= 100


@pytest.mark.usefixtures("figures_fit_their_canvas")
def test_train_two_models_on_synthetic(tmp_path, capsys):
    proc = run_main(cs, ["--train", "lenet", "resnet20", "--data", "synthetic", "--epochs",
                         "1", "--limit", "256", "--no-download", "--out-dir", str(tmp_path)],
                    capsys)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "synthetic" / "04_case_studies" / "train"
    table = json.loads((folder / "results.json").read_text())
    assert table["data"] == "synthetic"
    assert [r["model"] for r in table["models"]] == ["lenet", "resnet20"]
    assert all(0 <= r["test_acc"] <= 100 and r["params"] == PARAMS[r["model"]]
               for r in table["models"])
    assert (folder / "val_accuracy.png").stat().st_size > 0
    for name in ("lenet", "resnet20"):
        for f in ("loss.png", "accuracy.png", "result.json"):
            assert (folder / name / f).exists()


def test_unknown_model_exits_2_listing_valid_names(capsys):
    proc = run_main(cs, ["--train", "resnet18"], capsys)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "unknown model resnet18" in proc.stderr
    for name in PARAMS:
        assert name in proc.stderr


@pytest.mark.parametrize("name,blocks", [("resnet32", 15), ("seresnet44", 21)])
def test_resnet_depth_is_selectable(name, blocks):
    model = cs.build(name)
    n_blocks = sum(isinstance(m, cs.BasicBlock) for m in model.modules())
    assert n_blocks == blocks  # (depth - 2) / 2 residual blocks
    assert cs.model_spec("resnet21") is None and cs.model_spec("resnet") is None


# ----------------------------------------------------------------------------- the slides' claims

@pytest.mark.usefixtures("figures_fit_their_canvas")
@pytest.mark.parametrize("claim", sorted(cs.CLAIMS))
def test_each_claim_runs_end_to_end(claim, tmp_path, capsys):
    code = cs.main(["--claim", claim, "--data", "synthetic", "--limit", "16", "--epochs", "1",
                    "--no-download", "--out-dir", str(tmp_path)])
    assert code == 0
    folder = tmp_path / "synthetic" / "04_case_studies" / "claims"
    record = json.loads((folder / f"{claim}.json").read_text())
    assert record["verdict"].split()[0] in ("holds", "contradicted", "inconclusive")
    assert record["seeds"] == [123, 124] and record["paper"]
    for part in record["parts"] + record["conditions"]:
        assert part["name"] and part["rule"] and part["ours"]
        assert part["verdict"] in ("holds", "contradicted", "inconclusive")
        assert (part["reason"] is not None) == (part["verdict"] == "inconclusive")
    assert record["settings"]["limit"] == 16 and record["settings"]["epochs"] == 1
    assert set(record["runs"]) == set(cs.CLAIMS[claim]["runs"])
    assert all(len(seeds) == 2 and len(seeds[0]["val_accs"]) == 1
               for seeds in record["runs"].values())
    assert (folder / f"{claim}.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "claim" in out and "rule:" in out and f"verdict: {record['verdict']}" in out
    assert "what changes this verdict:" in out
    assert max(len(line) for line in out.splitlines() if "/" not in line) <= 100  # no wrap
    if claim == "aux":  # nothing learned in one epoch on 16 images: no power, never 'holds'
        assert record["parts"][0]["reason"].startswith("no power")


def results(**curves):
    """Made-up results, {run: [one result per seed]}: train accuracy == val accuracy."""
    return {run: [{"train_accs": [acc], "val_accs": [acc], "val_acc": acc} for acc in accs]
            for run, accs in curves.items()}


def test_the_rule_on_made_up_numbers():
    part = cs.CLAIMS["relu"]["parts"][0]  # relu_paper beats tanh_paper in training error
    verdict = lambda **c: cs.decide(part, results(**c), quick=True)  # noqa: E731
    assert verdict(relu_paper=[60, 62], tanh_paper=[40, 41])["verdict"] == "holds"
    assert verdict(relu_paper=[40, 41], tanh_paper=[60, 62])["verdict"] == "contradicted"
    noise = verdict(relu_paper=[50, 58], tanh_paper=[45, 47])  # gain 8 < spread 8 + 1
    assert noise["verdict"] == "inconclusive" and noise["reason"].startswith("within noise")
    weak = verdict(relu_paper=[12, 20], tanh_paper=[10, 11])  # nothing learned
    assert weak["verdict"] == "inconclusive" and weak["reason"].startswith("no power")
    assert cs.claim_verdict([{"verdict": "holds"}, {"verdict": "inconclusive"}]) == \
        ("inconclusive", "for parts 1 and 2")
    assert cs.claim_verdict([{"verdict": "holds"}, {"verdict": "contradicted"}])[0] == \
        "contradicted"
    assert cs.claim_verdict([{"verdict": "holds"}, {"verdict": "inconclusive",
                                                    "skipped": True}]) == \
        ("holds", "for part 1; part 2 needs --budget full")
    assert cs.claim_verdict([{"verdict": "holds"}] + [{"verdict": "inconclusive",
                                                       "skipped": True}] * 2) == \
        ("holds", "for part 1; parts 2 and 3 need --budget full")


def test_the_no_difference_rule_on_made_up_numbers():
    part = cs.CLAIMS["aux"]["parts"][1]  # with BN the side head makes no difference
    assert part["same"] and cs.SAME == 5.0
    verdict = lambda **c: cs.decide(part, results(**c), quick=True)  # noqa: E731
    same = verdict(bn_aux=[60, 61], bn=[60.5, 61.5])  # |gain| 0.5 + spread 1 < 5
    assert same["verdict"] == "holds" and same["reason"] is None
    apart = verdict(bn_aux=[70, 71], bn=[60, 61])  # |gain| 10 > spread 1 + 1
    assert apart["verdict"] == "contradicted"
    apart = verdict(bn_aux=[50, 51], bn=[60, 61])  # either direction is a difference
    assert apart["verdict"] == "contradicted"
    noisy = verdict(bn_aux=[60, 66], bn=[62, 63])  # gain 0.5, spread 6: neither
    assert noisy["verdict"] == "inconclusive" and "nor |gain| + spread" in noisy["reason"]
    weak = verdict(bn_aux=[11, 12], bn=[11, 12])  # nothing learned: no power, never 'holds'
    assert weak["verdict"] == "inconclusive" and weak["reason"].startswith("no power")


def test_small_inception_shapes_parameters_and_the_2x2():
    for bn in (True, False):
        for aux in (False, True):
            net = cs.SmallInception(bn, aux)
            x = torch.randn(4, 3, 32, 32)
            out = net.train()(x)
            assert (out[0].shape, out[1].shape) == ((4, 10), (4, 10)) if aux else \
                out.shape == (4, 10)
            assert net.eval()(x).shape == (4, 10)  # no side head at test time
            assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == bn
    stem = cs.SmallInception().eval().stem(torch.zeros(1, 3, 32, 32))  # the modules: 8x8
    assert stem.shape == (1, 32, 8, 8) == net.modules_[0](stem).shape
    # per module: 1x1 8 + 1x1 8 -> 3x3 16 + 1x1 4 -> 5x5 4 + pool -> 1x1 4 = 32 channels
    module = (32 * 8 + 8) + (32 * 8 + 8) + (8 * 9 * 16 + 16) + (32 * 4 + 4) + \
        (4 * 25 * 4 + 4) + (32 * 4 + 4)
    assert common.count_params(cs.Inception(32, 8, 8, 16, 4, 4, 4, bn=False)) == module
    stem, head = 3 * 9 * 32 + 32, 32 * 10 + 10
    assert common.count_params(cs.SmallInception(bn=False)) == stem + 8 * module + head == 20_138
    assert common.count_params(cs.SmallInception(bn=False, aux=True)) == 20_138 + head
    assert set(cs.CLAIMS["aux"]["runs"]) == {"plain", "plain_aux", "bn", "bn_aux"}


@pytest.mark.usefixtures("figures_fit_their_canvas")
def test_a_part_only_the_full_budget_can_power_trains_nothing_at_quick(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setattr(common, "train_and_save", lambda *a, **k: pytest.fail("trained"))
    figures, save = [], common.save_figure
    monkeypatch.setattr(common, "save_figure", lambda fig, *a: figures.append(fig) or
                        save(fig, *a))
    assert cs.main(["--claim", "3x3", "--out-dir", str(tmp_path)]) == 0  # arithmetic decides
    folder = tmp_path / "04_case_studies" / "claims"
    record = json.loads((folder / "3x3.json").read_text())
    assert [p["verdict"] for p in record["parts"]] == ["holds", "inconclusive"]
    assert "--budget full" in record["parts"][1]["reason"] and record["verdict"] == \
        "holds for part 1; part 2 needs --budget full"  # the file says what the line says
    assert "verdict: holds for part 1; part 2 needs --budget full (" in capsys.readouterr().out
    assert (folder / "3x3.png").stat().st_size > 0 and not (folder / "3x3").exists()
    nets = [cs.SmallVGG(3), cs.SmallVGG(5)]  # 3x3.png: the cost part as bars, 3x3 beside 5x5
    assert [[b.get_height() for b in ax.patches] for ax in figures[0].axes] == [
        [common.count_params(n) for n in nets], [cs.image_macs(n) for n in nets]]
    assert [t.get_text() for t in figures[0].axes[0].get_xticklabels()] == ["two 3x3", "one 5x5"]
    degradation = cs.CLAIMS["degradation"]["parts"]
    assert [bool(p.get("full_because")) for p in degradation] == [False, True, True]


def test_cuda_convnet_layers_params_and_init():
    net = cs.CudaConvnet("relu", paper=True)
    assert common.count_params(net) == 89_578  # 2,432 + 25,632 + 51,264 + 10,250
    shapes, x = [], torch.zeros(2, 3, 32, 32)
    for layer in net.features:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes[1] == (32, 16, 16) and shapes[5] == (32, 8, 8) and shapes[8] == (64, 4, 4)
    conv1, conv2 = net.features[0], net.features[3]
    assert conv1.weight.std().item() == pytest.approx(1e-4, rel=0.1)
    assert conv2.weight.std().item() == pytest.approx(1e-2, rel=0.1)
    assert conv1.bias.abs().sum() == 0
    grey = torch.zeros(1, 3, 1, 1)  # (0.5 - 0.5) / 0.5: a mid-grey pixel, 127.5 of 255
    raw = grey * net.scale + net.shift
    assert torch.allclose(raw.flatten(), 127.5 - 255 * torch.tensor(cs.CIFAR_MEAN))
    modern = cs.CudaConvnet("tanh", paper=False)
    assert modern.features[0].weight.std().item() > 1e-2  # Glorot: not the paper's 1e-4
    assert isinstance(modern.features[2], nn.Tanh)


def test_claims_need_two_seeds(capsys):
    with pytest.raises(SystemExit):
        cs.parse_args(["--claim", "aux", "--seeds", "1"])
    assert "at least 2" in capsys.readouterr().err


def test_plain_net_is_the_resnet_without_shortcuts():
    plain, res = cs.build("plain20"), cs.build("resnet20")
    assert common.count_params(plain) == common.count_params(res) == 269_722
    plain.load_state_dict(res.state_dict())  # the same layers and weights ...
    plain.eval(), res.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x), res(x))  # ... but no identity path
    block = cs.BasicBlock(8, 8, residual=False)
    nn.init.zeros_(block.bn2.weight)  # branch output 0: a plain block gives 0, not x
    assert block(torch.rand(1, 8, 4, 4)).abs().sum() == 0
    assert cs.model_spec("plain56") is not None and cs.model_spec("plain57") is None


def test_3x3_pair_has_18c2_and_5x5_has_25c2_weights_per_stage():
    for k, per_c2 in ((3, 18), (5, 25)):
        net = cs.SmallVGG(k)
        stages = (net.stage1, net.stage2, net.stage3)
        bodies = [sum(m.weight.numel() for m in stage.modules() if isinstance(m, nn.Conv2d)
                      and m.kernel_size != (1, 1)) for stage in stages]
        assert bodies == [per_c2 * c * c for c in (32, 64, 128)]
    assert cs.SmallVGG(5)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_imagenet_table_is_ordered_and_matches_the_sources():
    years = [y for y, *_ in cs.IMAGENET_TOP5]
    assert years == sorted(set(years))
    assert {y: e for y, _, e, _ in cs.IMAGENET_TOP5} == {
        2010: 28.2, 2011: 25.8, 2012: 16.4, 2013: 11.7, 2014: 6.67, 2015: 3.57, 2016: 2.99,
        2017: 2.25}
    assert cs.HUMAN_TOP5[0] == 5.1 and all(source for *_, source in cs.IMAGENET_TOP5)


def test_unknown_claim_exits_2_with_the_list(capsys):
    with pytest.raises(SystemExit) as exit_:
        cs.parse_args(["--claim", "bogus"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    for name in cs.CLAIMS:
        assert name in err


def test_a_diverged_run_still_gives_a_claim_its_verdict(tmp_path, monkeypatch):
    real = common.train_and_save

    def diverged(*args, **kwargs):
        net, result, folder, code = real(*args, **kwargs)
        return net, dict(result, status="diverged"), folder, 3

    monkeypatch.setattr(common, "train_and_save", diverged)
    assert cs.main(["--claim", "relu", "--data", "synthetic", "--limit", "16", "--epochs", "1",
                    "--no-download", "--out-dir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "synthetic" / "04_case_studies" / "claims" /
                         "relu.json").read_text())
    assert record["runs"]["relu_paper"][0]["status"] == "diverged"


def test_an_interrupted_run_gives_no_verdict(tmp_path, monkeypatch, capsys):
    real = common.train_and_save
    monkeypatch.setattr(common, "train_and_save",
                        lambda *a, **k: real(*a, **k)[:3] + (130,))
    code = cs.main(["--claim", "relu", "--data", "synthetic", "--limit", "16", "--epochs", "1",
                    "--no-download", "--out-dir", str(tmp_path)])
    assert code == 130 and "no verdict" in capsys.readouterr().err
    assert not (tmp_path / "synthetic" / "04_case_studies" / "claims" / "relu.json").exists()

"""`edgekd update`: fine-tune on new data with Learning without Forgetting; head extension; the update chain."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.distill import LwFObjective, TrainConfig, UpdateConfig, update_model
from edgekd.distill._update import FineTuneObjective, extend_head, plan_classes, update_config
from edgekd.errors import InvalidInputError
from edgekd.modeldir import load_model_dir, read_card
from edgekd.monitor import REFERENCE_FILE
from edgekd.students import build_model
from edgekd.teachers import Teacher

NEW_SITE = "synthetic:classes=2,n=96,size=16,channels=1,seed=4"
CFG = TrainConfig(epochs=1, batch_size=32, lr=1e-3, warmup_epochs=0)


def test_plan_classes_keeps_the_data_order_or_appends_new_classes():
    assert plan_classes(["a", "b"], ["a", "b"]) == (["a", "b"], None)
    assert plan_classes(["a", "b"], ["b", "a", "c"]) == (["b", "a", "c"], None)
    assert plan_classes(["a", "b"], ["c", "d"]) == (["a", "b", "c", "d"], [2, 3])
    assert plan_classes(["a", "b"], ["b", "c"]) == (["a", "b", "c"], [1, 2])


def test_extended_head_keeps_the_old_class_logits(tiny_model_dir):
    old, card = load_model_dir(tiny_model_dir)
    new = build_model(card.spec.model_copy(update={"num_classes": 3}))
    extend_head(old, new, [2, 0])  # old class 0 -> row 2, old class 1 -> row 0
    x = card.preprocess(torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8))
    with torch.no_grad():
        before, after = old.eval()(x), new.eval()(x)
    torch.testing.assert_close(after[:, [2, 0]], before)


def test_lwf_objective_is_ce_plus_weighted_kd_on_the_old_classes(tiny_model_dir):
    old, card = load_model_dir(tiny_model_dir)
    teacher = Teacher.from_module(old, card.preprocess, name="old")
    torch.manual_seed(1)
    student = build_model(card.spec.model_copy(update={"num_classes": 3})).eval()
    objective = LwFObjective(card.preprocess, card.task, teacher, [1, 2], weight=0.7, T=2.0)
    x, y = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1, 2])
    loss, terms = objective(student, x, y)
    with torch.no_grad():
        s, t = student(card.preprocess(x)), old(card.preprocess(x))
    # Li & Hoiem's L_old up to a constant: KL of the T = 2 softened outputs, without Hinton's T^2 factor
    kd = F.kl_div(F.log_softmax(s[:, [1, 2]] / 2, 1), F.softmax(t / 2, 1), reduction="batchmean")
    assert float(terms["lwf"]) == pytest.approx(float(kd), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(s, y) + 0.7 * kd), rel=1e-5)


def _running_stats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if ".running_" in k}


def test_frozen_norm_statistics_make_the_lwf_term_zero_for_the_unchanged_model(tiny_model_dir):
    """The updated model starts as the old one: with frozen batch norm the LwF term is 0 and the statistics stay."""
    old, card = load_model_dir(tiny_model_dir)
    teacher = Teacher.from_module(old, card.preprocess, name="old")
    student = load_model_dir(tiny_model_dir)[0].train()  # the mode the training loop puts it in
    before = _running_stats(student)
    assert before  # small:tinycnn has batch norm
    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8), torch.tensor([0, 1] * 4)
    _, terms = LwFObjective(card.preprocess, card.task, teacher, [0, 1])(student, x, y)
    assert float(terms["lwf"]) == pytest.approx(0.0, abs=1e-6)
    assert all(torch.equal(v, _running_stats(student)[k]) for k, v in before.items())
    # with batch statistics the same weights compute another function, and the new images' statistics
    # replace the old ones: what freeze_norm=True prevents
    live = LwFObjective(card.preprocess, card.task, teacher, [0, 1], freeze_norm=False)
    _, terms = live(student.train(), x, y)
    assert float(terms["lwf"]) > 1e-3
    assert not all(torch.equal(v, _running_stats(student)[k]) for k, v in before.items())


def test_fine_tune_objective_freezes_norm_statistics_unless_asked(tiny_model_dir):
    student, card = load_model_dir(tiny_model_dir)
    before = _running_stats(student)
    x, y = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8), torch.tensor([0, 1] * 4)
    FineTuneObjective(card.preprocess, card.task)(student.train(), x, y)
    assert all(torch.equal(v, _running_stats(student)[k]) for k, v in before.items())
    FineTuneObjective(card.preprocess, card.task, freeze_norm=False)(student.train(), x, y)
    assert not all(torch.equal(v, _running_stats(student)[k]) for k, v in before.items())


def test_update_defaults_are_a_fine_tune_schedule():
    cfg = update_config()
    assert (cfg.epochs, cfg.lr, cfg.warmup_epochs) == (5, 5e-4, 0.0)
    assert update_config(lr=1e-4).lr == 1e-4


@pytest.mark.slow
def test_domain_then_class_incremental_updates_record_the_chain(tiny_model_dir, tmp_path):
    site_b = update_model(tiny_model_dir, NEW_SITE, tmp_path / "b", UpdateConfig(lwf=True, train=CFG), progress=False)
    note = site_b.lineage.notes["update"]
    assert (site_b.lineage.stage, note["method"], note["kind"]) == ("update", "lwf", "domain-incremental")
    assert site_b.lineage.parent == tiny_model_dir and site_b.lineage.teachers == [tiny_model_dir]
    assert [c["model"] for c in note["chain"]] == [tiny_model_dir] and note["chain"][0]["data"] == read_card(
        tiny_model_dir
    ).lineage.data
    assert (tmp_path / "b" / REFERENCE_FILE).is_file()  # drift statistics on the new data's val split

    plain = update_model(tiny_model_dir, NEW_SITE, tmp_path / "plain", UpdateConfig(train=CFG), progress=False)
    assert plain.lineage.notes["update"]["method"] == "finetune" and plain.lineage.losses == ["ce"]
    parent = _running_stats(load_model_dir(tiny_model_dir)[0])
    for updated in (tmp_path / "b", tmp_path / "plain"):  # the old data's batch-norm statistics are kept
        assert read_card(updated).lineage.notes["update"]["freeze_norm"] is True
        got = _running_stats(load_model_dir(updated)[0])
        assert all(torch.equal(v, got[k]) for k, v in parent.items())

    three = "synthetic:classes=3,n=90,size=16,channels=1,seed=6"  # class_0, class_1 and a new class_2
    c = update_model(tmp_path / "b", three, tmp_path / "c", UpdateConfig(lwf_weight=0.5, train=CFG), progress=False)
    note = c.lineage.notes["update"]
    assert c.label_names == ["class_0", "class_1", "class_2"] and note["new_classes"] == ["class_2"]
    assert note["kind"] == "class-incremental" and [x["model"] for x in note["chain"]] == [
        tiny_model_dir,
        str(tmp_path / "b"),
    ]
    assert read_card(tmp_path / "c").spec.num_classes == 3 and load_model_dir(tmp_path / "c")[0] is not None


def test_refusals_and_the_cli(tiny_model_dir, tmp_path):
    with pytest.raises(InvalidInputError, match="1-channel images, the data has 3"):
        update_model(
            tiny_model_dir, "synthetic:classes=2,n=40,size=16,channels=3", tmp_path / "x", UpdateConfig(train=CFG)
        )
    with pytest.raises(InvalidInputError, match="already exists"):
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / "f").write_text("x")
        update_model(tiny_model_dir, NEW_SITE, tmp_path / "taken", UpdateConfig(train=CFG))
    r = CliRunner().invoke(
        app,
        [
            "update",
            tiny_model_dir,
            "--data",
            NEW_SITE,
            "--lwf-weight",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--max-steps-per-epoch",
            "1",
            "--out",
            str(tmp_path / "u"),
            "--update-norm",
            "--quiet",
            "--json",
            "-",
        ],
    )
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)["lineage"]
    assert got["notes"]["update"]["lwf_weight"] == 2.0 and got["losses"] == ["ce", "lwf:2,T=2"]
    assert got["notes"]["update"]["freeze_norm"] is False


def test_update_config_is_the_single_source_and_its_file_is_honoured(tiny_model_dir, tmp_path):
    from edgekd.errors import InvalidInputError as Invalid

    assert UpdateConfig().lwf_term is None and UpdateConfig().train == update_config()
    assert UpdateConfig(lwf_weight=0.5).lwf_term == 0.5  # a weight implies LwF
    assert UpdateConfig(lwf=False, lwf_weight=0.5).lwf_term is None
    assert UpdateConfig(lwf=True).lwf_term == 1.0
    cfg = UpdateConfig.build(None, {"epochs": 2, "lr": 1e-4})  # schedule keys may be written flat
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.warmup_epochs) == (2, 1e-4, 0.0)
    with pytest.raises(Invalid, match="lwf_wieght"):
        UpdateConfig.build(None, {"lwf_wieght": 1.0})

    (tmp_path / "u.yaml").write_text("lwf_weight: 0.25\nlwf_temperature: 3\nbatch_size: 32\nmax_steps_per_epoch: 1\n")
    args = ["update", tiny_model_dir, "--data", NEW_SITE, "--config", str(tmp_path / "u.yaml"), "--epochs", "1"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "u"), "--quiet", "--json", "-"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)["lineage"]
    assert got["notes"]["update"]["lwf_weight"] == 0.25 and got["losses"] == ["ce", "lwf:0.25,T=3"]
    (tmp_path / "bad.yaml").write_text("lwf_wieght: 1\n")
    r = CliRunner().invoke(app, [*args[:4], "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 3 and "lwf_wieght" in r.output and not (tmp_path / "b").exists()

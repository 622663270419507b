"""Distillation: feature taps, teachers (model dir, ONNX, in-memory), the objective, the teacher cache, the CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgekd.data import Augment, AugmentedDataset, load_data
from edgekd.distill import (
    RunSettings,
    TeacherCache,
    TrainConfig,
    build_distill_objective,
    distill_model,
    fit,
    parse_loss,
    topk_reconstruct,
)
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.modeldir import ModelSpec, load_model_dir, read_card
from edgekd.specs import Task
from edgekd.students import FeatureTaps, build_model
from edgekd.teachers import Teacher, load_teacher

from .conftest import SYNTH, SYNTH3

CFG = dict(epochs=2, batch_size=32, lr=5e-3, warmup_epochs=0.5)


@pytest.fixture(scope="module")
def data():
    return load_data(SYNTH)


def _student(data, name="small:resnet8"):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name=name, num_classes=data.num_classes, in_chans=data.channels))
    return model, data.preprocess()


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


class _CountCalls:
    """Counts forward calls of a module (to prove the cache spares the teacher)."""

    def __init__(self, module: nn.Module) -> None:
        self.n = 0
        module.register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))


# --- feature taps ---------------------------------------------------------------------------------------------


def test_taps_capture_and_remove_hooks(data):
    model, pre = _student(data)
    x = pre(_batch(data, 4))
    with FeatureTaps(model, ["layer1", "layer3"]) as feats:
        model(x)
        assert _hook_count(model) == 2
    assert set(feats) == {"layer1", "layer3"} and feats["layer3"].shape[0] == 4
    assert _hook_count(model) == 0


def test_taps_removed_when_the_step_raises(data):
    model, _ = _student(data)
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureTaps(model, ["layer2", "layer3"]):
            assert _hook_count(model) == 2
            raise RuntimeError("boom")
    assert _hook_count(model) == 0
    with pytest.raises(RuntimeError):  # a failing forward (wrong input shape) also leaves nothing behind
        with FeatureTaps(model, ["layer2"]):
            model(torch.zeros(2, 5, 16, 16))
    assert _hook_count(model) == 0


def test_unknown_layer_lists_tap_points(data):
    model, _ = _student(data)
    with pytest.raises(InvalidInputError) as e:
        FeatureTaps(model, ["layer9"], who="student")
    assert "layer9" in str(e.value) and "layer1, layer2, layer3" in str(e.value)


# --- teachers -------------------------------------------------------------------------------------------------


def _batch(data, n=16):
    return torch.stack([data.train[i][0] for i in range(n)])


def test_onnx_teacher_matches_torch_teacher(tiny_model_dir, data, tmp_path):
    model, card = load_model_dir(tiny_model_dir)
    path = tmp_path / "teacher.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 16, 16),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}},
            dynamo=False,
        )
    torch_t = load_teacher(tiny_model_dir, data=data)
    onnx_t = load_teacher(f"onnx:{path}", data=data)
    assert onnx_t.kind == "onnx" and torch_t.kind == "torch" and onnx_t.model is None
    assert onnx_t.preprocess == card.preprocess.model_copy(update={"channel_mode": onnx_t.preprocess.channel_mode})
    images = _batch(data)
    a, b = torch_t.logits(images), onnx_t.logits(images)
    assert a.shape == b.shape == (16, 2)
    assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(InvalidInputError, match="ONNX"):
        student, pre = _student(data)
        build_distill_objective(student, pre, data.task, [onnx_t], ["ce", "fitnet:1,s=layer3,t=features.3"])


def test_model_dir_teacher_is_lazy_and_checks_classes(tiny_model_dir, data):
    t = load_teacher(tiny_model_dir, data=data)
    assert t._model is None and t.num_classes == 2  # not loaded until it must run
    assert t.logits(_batch(data, 2)).shape == (2, 2) and t._model is not None
    with pytest.raises(InvalidInputError, match="3 classes"):
        load_teacher(tiny_model_dir, data=load_data(SYNTH3))


def test_checkpoint_teacher(tiny_model_dir, data, tmp_path):
    from safetensors.torch import save_file

    model, _ = load_model_dir(tiny_model_dir)
    save_file(model.state_dict(), str(tmp_path / "t.safetensors"))
    ckpt = load_teacher(f"ckpt:{tmp_path / 't.safetensors'}@small:tinycnn", data=data)
    images = _batch(data, 8)
    assert torch.allclose(ckpt.logits(images), load_teacher(tiny_model_dir, data=data).logits(images), atol=1e-6)
    with pytest.raises(InvalidInputError, match="ckpt:FILE@MODEL"):
        load_teacher("ckpt:t.safetensors", data=data)


def test_random_registry_teacher_is_refused(data):
    with pytest.raises(InvalidInputError, match="random"):
        load_teacher("small:resnet8", data=data)
    with pytest.raises(InvalidInputError, match="1000 classes"):
        load_teacher("tv:resnet18", data=data, pretrained=True)
    with pytest.raises(ArtifactError):
        load_teacher("no/such/dir", data=data)


def test_teacher_and_student_use_their_own_preprocess(data):
    """A 3-channel teacher at 32 px and a 1-channel student at 16 px share one raw batch."""
    torch.manual_seed(0)
    t_model = build_model(ModelSpec(name="small:resnet8", num_classes=2, in_chans=3)).eval()
    t_pre = data.preprocess(input_size=(32, 32), in_chans=3)
    seen = []
    t_model.conv1.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    teacher = Teacher.from_module(t_model, t_pre, name="t32")
    student, s_pre = _student(data)
    obj = build_distill_objective(
        student, s_pre, data.task, [teacher], ["ce", "kd:1,T=4", "fitnet:1,s=layer3,t=layer3", "at:1,s=layer2,t=layer2"]
    )
    images = _batch(data, 8)
    seen.clear()
    loss, terms = obj(student, images, torch.tensor([data.train[i][1] for i in range(8)]), torch.arange(8), 0)
    assert seen == [(8, 3, 32, 32)]
    assert set(terms) == {"ce", "kd", "fitnet", "at"} and torch.isfinite(loss)
    loss.backward()
    assert obj.losses[2].adapters[0].weight.grad.abs().sum() > 0
    assert torch.allclose(teacher.logits(images), t_model(t_pre(images)), atol=1e-6)


# --- the objective ----------------------------------------------------------------------------------------------


def test_weighted_teachers_combine_logit_losses(data):
    torch.manual_seed(1)
    pre = data.preprocess()
    t1, t2 = (
        Teacher.from_module(build_model(ModelSpec(name="small:tinycnn", num_classes=2, in_chans=1)), pre)
        for _ in range(2)
    )
    student, _ = _student(data, "small:tinycnn")
    student.eval()
    obj = build_distill_objective(student, pre, data.task, [t1, t2], ["kd:1,T=2"], teacher_weights=[7, 3])
    images, y = _batch(data, 8), torch.zeros(8, dtype=torch.long)
    _, terms = obj(student, images, y, torch.arange(8), 0)
    s = student(pre(images))
    kd = parse_loss("kd:1,T=2").build()
    from edgekd.distill import LossBatch, ModelOutputs

    b = LossBatch(y, Task.BINARY)
    expected = 0.7 * kd(ModelOutputs(s), ModelOutputs(t1.logits(images)), b) + 0.3 * kd(
        ModelOutputs(s), ModelOutputs(t2.logits(images)), b
    )
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(InvalidInputError, match="teacher weights"):
        build_distill_objective(student, pre, data.task, [t1, t2], ["kd"], teacher_weights=[1.0])


def test_objective_rejects_misfits(data, tiny_model_dir):
    student, pre = _student(data)
    teacher = load_teacher(tiny_model_dir, data=data)
    with pytest.raises(InvalidInputError, match="needs a teacher"):
        build_distill_objective(student, pre, data.task, [], ["ce", "kd"])
    with pytest.raises(InvalidInputError, match="mlkd"):
        build_distill_objective(student, pre, Task.MULTILABEL, [teacher], ["kd"])
    with pytest.raises(InvalidInputError, match="unknown layer 'layer4'.*layer1, layer2, layer3"):
        build_distill_objective(student, pre, data.task, [teacher], ["fitnet:1,s=layer4,t=features.3"])
    with pytest.raises(InvalidInputError, match="teacher=1"):
        build_distill_objective(student, pre, data.task, [teacher], ["rkd:1,teacher=1"])


def test_recovery_style_student_module(data, tiny_model_dir, tmp_path):
    """Prune recovery: any nn.Module student, a model-dir teacher, ce + kd, the shared fit loop."""
    torch.manual_seed(0)
    student = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
    )
    card = read_card(tiny_model_dir)
    teacher = load_teacher(tiny_model_dir, data=data)
    obj = build_distill_objective(
        student, card.preprocess, card.task, [teacher], [parse_loss("ce:1"), parse_loss("kd:1,T=4")]
    )
    res = fit(
        student, obj, data, TrainConfig(epochs=1, batch_size=64), tmp_path, preprocess=card.preprocess, progress=False
    )
    assert res.best_epoch == 1 and {"ce", "kd", "loss"} <= set(res.history[0])


# --- distill_model and the teacher cache ----------------------------------------------------------------------


def test_distill_model_writes_model_dir_with_lineage(tiny_model_dir, tmp_path):
    settings = RunSettings(
        student="small:tinycnn",
        teachers=[tiny_model_dir],
        data=SYNTH,
        train=TrainConfig(**CFG),
        losses=["ce:1", "dkd:1,warmup=1"],
    )
    card = distill_model(settings, tmp_path / "s", progress=False)
    assert card.lineage.stage == "distill" and card.lineage.teachers == [tiny_model_dir]
    assert card.lineage.losses == ["ce:1", "dkd:1,warmup=1"]
    model, loaded = load_model_dir(tmp_path / "s")
    assert loaded.spec.name == "small:tinycnn" and loaded.metrics["test"]["acc"] > 0.5
    hist = [json.loads(x) for x in (tmp_path / "s" / "history.jsonl").read_text().splitlines()]
    assert "dkd" in hist[0] and "ce" in hist[0]
    import yaml

    config = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert config["teacher"] == [tiny_model_dir] and config["loss"] == ["ce:1", "dkd:1,warmup=1"]


def test_cache_second_epoch_does_not_call_the_teacher(tiny_model_dir, data, tmp_path):
    student, pre = _student(data, "small:tinycnn")
    teacher = load_teacher(tiny_model_dir, data=data)
    cache = TeacherCache.open(tmp_path / "cache", teachers=[teacher], data=data)
    obj = build_distill_objective(student, pre, data.task, [teacher], ["ce", "kd"], cache=cache)
    calls = _CountCalls(teacher.model)
    per_epoch = []

    def record(epoch, _):
        per_epoch.append(calls.n)

    fit(student, obj, data, TrainConfig(**CFG), tmp_path / "run", preprocess=pre, progress=False, on_epoch_end=record)
    assert per_epoch[0] == 4 and per_epoch[1] == 4  # 128 samples / 32: four teacher passes, all in epoch 1
    assert cache.complete() and cache.hits == len(data.train) and cache.status == "created"
    # the stored logits are the teacher's (fp16)
    images = _batch(data, 8)
    stored, hit = TeacherCache.open(tmp_path / "cache", teachers=[teacher], data=data).lookup(0, torch.arange(8))
    assert hit.all() and torch.allclose(stored[0], teacher.logits(images), atol=2e-2)


def test_cache_views_replay_the_augmentation(tiny_model_dir, data, tmp_path):
    """With V=2 views and 3 epochs, epoch 2 replays epoch 0's augmentation and reads the cache."""
    teacher = load_teacher(tiny_model_dir, data=data)
    settings = RunSettings(
        student="small:tinycnn",
        teachers=[tiny_model_dir],
        data=data.spec,
        train=TrainConfig(**{**CFG, "epochs": 3, "augment": "light"}),
        cache={"views": 2},
    )
    card = distill_model(settings, tmp_path / "s", data=data, progress=False)
    notes = card.lineage.notes
    assert notes["cache"]["views"] == 2 and notes["teacher_calls"] == 8  # epochs 0 and 1 only
    cache = TeacherCache.open(tmp_path / "s" / "teacher_cache", teachers=[teacher], data=data, augment="light", views=2)
    assert cache.status == "reused" and cache.complete()
    aug = AugmentedDataset(data.train, Augment.preset("light"), seed=0)
    for view in (0, 1):
        aug.set_epoch(view)
        images = torch.stack([aug[i][0] for i in range(6)])
        stored, _ = cache.lookup(view, torch.arange(6))
        assert torch.allclose(stored[0], teacher.logits(images), atol=2e-2)


def test_cache_fingerprint_mismatch_rebuilds(tiny_model_dir, data, tmp_path):
    teacher = load_teacher(tiny_model_dir, data=data)
    cache = TeacherCache.open(tmp_path / "c", teachers=[teacher], data=data)
    cache.store(0, torch.arange(4), [torch.randn(4, 2)])
    cache.flush()
    again = TeacherCache.open(tmp_path / "c", teachers=[teacher], data=data)
    assert again.status == "reused" and again.lookup(0, torch.arange(6))[1].tolist() == [True] * 4 + [False] * 2
    again.store(0, torch.arange(4, 8), [torch.randn(4, 2)])
    other = TeacherCache.open(tmp_path / "c", teachers=[teacher], data=data, augment="light", seed=1, views=2)
    assert other.status.startswith("rebuilt") and "augment" in other.status and "views" in other.status
    assert not other.lookup(0, torch.arange(4))[1].any()
    again.flush()  # a run still holding the replaced cache must not mark entries of the new one
    assert (
        again.readonly
        and not TeacherCache.open(tmp_path / "c", teachers=[teacher], data=data, augment="light", seed=1, views=2)
        .lookup(0, torch.arange(8))[1]
        .any()
    )
    with pytest.raises(ArtifactError, match="another configuration"):
        TeacherCache.open(tmp_path / "c", teachers=[teacher], data=data, readonly=True)
    t2 = Teacher.from_module(build_model(ModelSpec(name="small:tinycnn", num_classes=2, in_chans=1)), data.preprocess())
    swapped = TeacherCache.open(tmp_path / "c", teachers=[t2], data=data, augment="light", seed=1, views=2)
    assert "teachers.weights_sha256" in swapped.status
    student, pre = _student(data)
    with pytest.raises(InvalidInputError, match="drop --cache-teacher"):
        build_distill_objective(student, pre, data.task, [t2], ["kd", "at:1,s=layer3,t=features.3"], cache=swapped)


def test_topk_reconstruction(data, tmp_path):
    z = torch.tensor([[4.0, 1.0, 0.5, -1.0, 2.0], [0.0, 0.1, 3.0, -2.0, -2.5]])
    vals, idx = z.topk(2, dim=1)
    rec = topk_reconstruct(vals, idx, torch.logsumexp(z, 1), 5)
    p, q = z.softmax(1), rec.softmax(1)
    top = torch.zeros_like(z, dtype=torch.bool).scatter_(1, idx, True)
    assert torch.allclose(q[top], p[top], atol=1e-6) and torch.allclose(rec[top], z[top])
    rest = (1 - p[top].view(2, 2).sum(1)) / 3
    assert torch.allclose(q[~top].view(2, 3), rest[:, None].expand(2, 3), atol=1e-6)
    # through the cache: 3 classes, top-2 stored in fp16
    d3 = load_data(SYNTH3)
    t = Teacher.from_module(build_model(ModelSpec(name="small:tinycnn", num_classes=3, in_chans=3)), d3.preprocess())
    cache = TeacherCache.open(tmp_path / "k", teachers=[t], data=d3, topk=2)
    logits = torch.tensor([[3.0, -1.0, 0.5], [0.2, 2.0, 1.0]])
    cache.store(0, torch.tensor([5, 9]), [logits])
    back, hit = cache.lookup(0, torch.tensor([9, 5, 1]))
    assert hit.tolist() == [True, True, False]
    expected = topk_reconstruct(*logits.topk(2, 1), torch.logsumexp(logits, 1), 3)
    assert torch.allclose(back[0], expected[[1, 0]], atol=1e-2)
    with pytest.raises(InvalidInputError, match="single-label"):
        ml = load_data("synthetic:classes=3,n=40,task=multilabel")
        TeacherCache.open(
            tmp_path / "m",
            teachers=[
                Teacher.from_module(
                    build_model(ModelSpec(name="small:tinycnn", num_classes=3, in_chans=1)), ml.preprocess()
                )
            ],
            data=ml,
            topk=2,
        )


# --- CLI --------------------------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_distill_end_to_end(tiny_model_dir, tmp_path):
    """Two runs share a cache: the second never runs (or even loads) the teacher."""
    from edgekd.cli import app

    for run in ("a", "b"):
        r = runner.invoke(
            app,
            [
                "distill",
                "--student",
                "small:tinycnn",
                "--teacher",
                tiny_model_dir,
                "--data",
                SYNTH,
                "--loss",
                "ce:1",
                "--loss",
                "kd:0.9,T=4",
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--cache-teacher",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--out",
                str(tmp_path / run),
                "--quiet",
                "--json",
                str(tmp_path / f"{run}.json"),
            ],
        )
        assert r.exit_code == 0, r.output
    a, b = (json.loads((tmp_path / f"{run}.json").read_text()) for run in ("a", "b"))
    assert a["lineage"]["losses"] == ["ce:1", "kd:0.9,T=4"] and a["metrics"]["test"]["n"] > 0
    assert a["lineage"]["notes"]["teacher_calls"] == 4 and a["lineage"]["notes"]["cache"]["status"] == "created"
    assert b["lineage"]["notes"]["teacher_calls"] == 0 and b["lineage"]["notes"]["cache"]["status"] == "reused"
    assert read_card(tmp_path / "b").lineage.stage == "distill"


def test_cli_distill_yaml_config(tiny_model_dir, tmp_path):
    from edgekd.cli import app

    config = tmp_path / "distill.yaml"
    config.write_text(
        f"student: small:resnet8\nteacher: [{tiny_model_dir}]\ndata: '{SYNTH}'\nepochs: 1\n"
        "loss: ['ce:1', 'fitnet:1,s=layer7,t=features.3']\n"
    )
    r = runner.invoke(app, ["distill", "--config", str(config), "--out", str(tmp_path / "x")])
    assert r.exit_code == 3 and "layer7" in r.output and "layer1, layer2, layer3" in r.output


def test_cli_distill_wrong_layer_exits_3(tiny_model_dir, tmp_path):
    from edgekd.cli import app

    r = runner.invoke(
        app,
        [
            "distill",
            "--student",
            "small:resnet8",
            "--teacher",
            tiny_model_dir,
            "--data",
            SYNTH,
            "--loss",
            "fitnet:1,s=layer9,t=features.3",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert r.exit_code == 3
    assert "layer9" in r.output and "layer1, layer2, layer3" in r.output


def test_cli_distill_help_has_example():
    from edgekd.cli import app

    r = runner.invoke(app, ["distill", "--help"])
    assert r.exit_code == 0 and "Example" in r.output and "--cache-teacher" in r.output


def test_finetune_takes_class_weighting_and_label_smoothing_from_its_config(tiny_model_dir):
    """Pruning recovery and QAT fine-tune through `finetune`: their TrainConfig's class_weighting and
    label_smoothing reach the task term (they were silently ignored), with and without a teacher."""
    from edgekd.data import load_data
    from edgekd.distill import TrainConfig, class_weights
    from edgekd.distill._finetune import finetune_objective
    from edgekd.distill._objective import SupervisedObjective
    from edgekd.distill.losses._logit import CELoss
    from edgekd.modeldir import load_model_dir
    from edgekd.teachers import Teacher

    data = load_data("synthetic:classes=3,n=90,size=16,channels=1,seed=3")
    data.train.targets[:60] = 0  # imbalanced: balanced weights differ from 1
    model, card = load_model_dir(tiny_model_dir)
    cfg = TrainConfig(class_weighting="balanced", label_smoothing=0.1)
    expected = class_weights(data, cfg.class_weighting)
    assert not torch.allclose(expected, torch.ones_like(expected))
    plain = finetune_objective(model, card.preprocess, data, teacher=None, cfg=cfg)
    assert isinstance(plain, SupervisedObjective) and plain.label_smoothing == 0.1
    torch.testing.assert_close(plain.class_weights, expected)
    teacher = Teacher.from_module(load_model_dir(tiny_model_dir)[0], card.preprocess, name="t")
    kd = finetune_objective(model, card.preprocess, data, teacher=teacher, cfg=cfg)
    (ce,) = [m for m in kd.modules() if isinstance(m, CELoss)]
    torch.testing.assert_close(ce.class_weights, expected)
    assert ce.smoothing == 0.1
    default = finetune_objective(model, card.preprocess, data, teacher=None)
    assert default.class_weights is None and default.label_smoothing == 0.0

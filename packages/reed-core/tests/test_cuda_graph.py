"""The whole training step as one CUDA graph (train.speed.cuda_graph, reed_core.cuda_graph).

The CPU tests cover the batch copy, the curriculum key and the configuration errors; the CUDA
tests (run on a GPU machine; skipped in CPU CI) train the toy task with recorded steps and compare
every logged loss and every parameter with eager steps.
"""

from dataclasses import dataclass, replace

import pytest
import torch

from reed_core.cuda_graph import copy_into
from reed_core.examples.toy2d import Toy2DConfig, ToyTask
from reed_core.schedules import constant, linear_warmup
from reed_core.speed import SpeedConfig
from reed_core.train import Trainer, read_metrics


@dataclass
class Batch:
    x: torch.Tensor
    z: dict
    name: str


def test_copy_into_writes_every_tensor_in_place_and_keeps_the_static_tensors():
    static = Batch(torch.zeros(2, 3), {"a": torch.zeros(4), "b": [torch.zeros(1)]}, "vision")
    x, a, b0 = static.x, static.z["a"], static.z["b"][0]
    new = Batch(torch.ones(2, 3), {"a": torch.arange(4.0), "b": [torch.full((1,), 7.0)]}, "vision")
    copy_into(static, new)
    assert static.x is x and static.z["a"] is a and static.z["b"][0] is b0  # same storage
    assert torch.equal(x, new.x) and torch.equal(a, new.z["a"]) and b0.item() == 7.0


@pytest.mark.parametrize(
    "new, message",
    [
        (Batch(torch.ones(3, 3), {"a": torch.zeros(4), "b": [torch.zeros(1)]}, "vision"), r"batch\.x: shape"),
        (
            Batch(
                torch.ones(2, 3), {"a": torch.zeros(4, dtype=torch.int64), "b": [torch.zeros(1)]}, "vision"
            ),
            r"batch\.z\['a'\]",
        ),
        (Batch(torch.ones(2, 3), {"a": torch.zeros(4)}, "vision"), r"batch\.z: keys"),
        (Batch(torch.ones(2, 3), {"a": torch.zeros(4), "b": [torch.zeros(1)]}, "caption"), r"batch\.name"),
    ],
)
def test_copy_into_names_the_field_that_changed(new, message):
    static = Batch(torch.zeros(2, 3), {"a": torch.zeros(4), "b": [torch.zeros(1)]}, "vision")
    with pytest.raises(ValueError, match=message):
        copy_into(static, new)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"cuda_graph": True, "fused_update": "off"}, "train.speed.cuda_graph needs the fused update"),
        ({"cuda_graph": True, "compile_mode": "reduce-overhead"}, "cannot nest"),
        ({"cuda_graph_warmup": 0}, "train.speed.cuda_graph_warmup"),
    ],
)
def test_cuda_graph_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        SpeedConfig(**fields)


def test_cuda_graph_on_the_cpu_is_a_clear_error(tmp_path):
    cfg = toy(tmp_path, 2, "cpu", cuda_graph=True)
    with pytest.raises(ValueError, match="train.speed.cuda_graph needs a CUDA device"):
        Trainer(cfg.train, ToyTask(cfg))


def toy(run_dir, steps, device, diffusion_warmup=0, **speed):
    """The toy task, small; ``speed``: train.speed.* fields (the fused update on by default)."""
    cfg = Toy2DConfig(num_examples=512, width=32, depth=3, eval_samples=64, sample_steps=4)
    w_diff = linear_warmup(0, diffusion_warmup) if diffusion_warmup else constant()
    curriculum = replace(cfg.reed.curriculum, w_diff=w_diff)
    speed.setdefault("fused_update", "on")
    return replace(
        cfg,
        reed=replace(cfg.reed, curriculum=curriculum),
        train=replace(
            cfg.train,
            run_dir=str(run_dir),
            steps=steps,
            batch_size=32,
            log_every=1,
            ckpt_every=3,
            progress_bar=False,
            tensorboard=False,
            device=device,
            speed=SpeedConfig(**speed),
        ),
    )


def run(cfg):
    trainer = Trainer(cfg.train, ToyTask(cfg), experiment_config=cfg)
    trainer.fit()
    return trainer, [m for m in read_metrics(cfg.train.run_dir) if "loss" in m]


def assert_same_run(a, b, rtol=1e-5, atol=1e-6):
    (ta, ma), (tb, mb) = a, b
    assert [m["step"] for m in ma] == [m["step"] for m in mb]
    for x, y in zip(ma, mb):
        for key in ("loss", "loss_gen", "grad_norm", "w_diff"):
            assert y[key] == pytest.approx(x[key], rel=rtol, abs=atol), (x["step"], key, x[key], y[key])
    for pa, pb in zip(ta.model.parameters(), tb.model.parameters()):
        torch.testing.assert_close(pb, pa, rtol=rtol, atol=atol)
    for pa, pb in zip(ta.ema.parameters(), tb.ema.parameters()):
        torch.testing.assert_close(pb, pa, rtol=rtol, atol=atol)


@pytest.mark.gpu
@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_recorded_steps_train_as_eager_steps(tmp_path, param_dtype):
    eager = run(toy(tmp_path / "eager", 9, "cuda", param_dtype=param_dtype))
    graphed = run(
        toy(tmp_path / "graph", 9, "cuda", param_dtype=param_dtype, cuda_graph=True, cuda_graph_warmup=2)
    )
    steps = graphed[0].graphed_step
    assert (steps.captures, steps.replays) == (1, 9 - 3)  # 2 eager, 1 recorded (and run), 6 replays
    assert_same_run(eager, graphed)


def test_the_loss_given_the_step_as_a_tensor_matches_the_host_step(tmp_path):
    # under train.speed.cuda_graph the loss sees the step on the device; the curriculum must agree
    cfg = toy(tmp_path, 2, "cpu", diffusion_warmup=8)
    task = ToyTask(cfg)
    batch = task.batch(3, 0, 1, torch.device("cpu"))
    for step in (0, 3, 7, 8, 50):
        torch.manual_seed(0)
        host = task.loss(task.model, batch, step)
        torch.manual_seed(0)
        device = task.loss(task.model, batch, torch.tensor(float(step), dtype=torch.float64))
        assert device.loss.dtype == host.loss.dtype == torch.float32
        torch.testing.assert_close(device.loss, host.loss, rtol=1e-6, atol=1e-7)
        assert float(device.terms["w_diff"]) == pytest.approx(host.terms["w_diff"], abs=1e-7)


@pytest.mark.gpu
def test_a_ramping_curriculum_is_replayed_from_one_graph(tmp_path):
    # w_diff ramps over steps 0..4: computed on the device, the graph needs no second capture
    eager = run(toy(tmp_path / "eager", 10, "cuda", diffusion_warmup=4))
    graphed = run(
        toy(tmp_path / "graph", 10, "cuda", diffusion_warmup=4, cuda_graph=True, cuda_graph_warmup=1)
    )
    steps = graphed[0].graphed_step
    assert (steps.captures, steps.replays) == (1, 8)
    assert [m["w_diff"] for m in graphed[1]][:6] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert_same_run(eager, graphed)


class KeyedToyTask(ToyTask):
    """A task with one host value that changes at step 5 (say, a switch read on the host)."""

    def graph_key(self, step):
        return step >= 5


@pytest.mark.gpu
def test_a_changed_graph_key_records_the_step_again(tmp_path):
    cfg = toy(tmp_path / "keyed", 10, "cuda", cuda_graph=True, cuda_graph_warmup=2)
    trainer = Trainer(cfg.train, KeyedToyTask(cfg), experiment_config=cfg)
    trainer.fit()
    steps = trainer.graphed_step
    # steps 0-1 eager, 2 recorded, 3-4 replayed; key changes: 5-6 eager, 7 recorded, 8-9 replayed
    assert (steps.captures, steps.replays) == (2, 4)
    eager = run(toy(tmp_path / "eager", 10, "cuda"))
    assert_same_run(eager, (trainer, [m for m in read_metrics(cfg.train.run_dir) if "loss" in m]))


@pytest.mark.gpu
def test_recorded_steps_resume_exactly(tmp_path):
    straight = run(toy(tmp_path / "a", 8, "cuda", cuda_graph=True, cuda_graph_warmup=1))
    run(toy(tmp_path / "b", 3, "cuda", cuda_graph=True, cuda_graph_warmup=1))  # checkpoints at step 3
    resumed = run(toy(tmp_path / "b", 8, "cuda", cuda_graph=True, cuda_graph_warmup=1))
    assert resumed[0].graphed_step.captures == 1
    assert_same_run(straight, resumed, rtol=0, atol=0)

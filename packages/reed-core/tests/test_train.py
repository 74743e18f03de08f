import json
import os
import signal
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
import torch.nn as nn
from torchao.float8.float8_linear import Float8Linear

from reed_core.examples.toy2d import Toy2DConfig, ToyTask
from reed_core.speed import SpeedConfig
from reed_core.train import CheckpointError, EpochSampler, Trainer, load_checkpoint, read_metrics

SPEED_FIELDS = {f.name for f in fields(SpeedConfig)}


def tiny(run_dir, steps, **train):
    """The toy task, small; ``train`` holds train.* and train.speed.* fields by their names."""
    # CPU runs (fp32, deterministic) on any machine; GPU runs are in test_cuda_graph.py
    train.setdefault("device", "cpu")
    speed = {k: train.pop(k) for k in list(train) if k in SPEED_FIELDS}
    cfg = Toy2DConfig(num_examples=512, width=32, depth=3, eval_samples=64, sample_steps=4)
    return replace(
        cfg,
        train=replace(
            cfg.train,
            run_dir=str(run_dir),
            steps=steps,
            batch_size=32,
            log_every=1,
            ckpt_every=3,
            progress_bar=False,
            tensorboard=False,
            speed=SpeedConfig(**speed),
            **train,
        ),
    )


def fit(cfg):
    return Trainer(cfg.train, ToyTask(cfg), experiment_config=cfg)


def test_resume_continues_exactly_where_an_uninterrupted_run_goes(tmp_path):
    straight = fit(tiny(tmp_path / "a", 6))
    straight.fit()
    first = fit(tiny(tmp_path / "b", 3))  # stops (and checkpoints) at step 3
    first.fit()
    resumed = fit(tiny(tmp_path / "b", 6))
    resumed.fit()
    a = [m for m in read_metrics(tmp_path / "a") if "loss" in m]
    b = [m for m in read_metrics(tmp_path / "b") if "loss" in m]
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    for ma, mb in zip(a, b):
        assert ma["loss"] == mb["loss"], (ma["step"], ma["loss"], mb["loss"])
    for pa, pb in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    for pa, pb in zip(straight.ema.parameters(), resumed.ema.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


class TerminatedToyTask(ToyTask):
    """The toy task that sends its own process SIGTERM during step ``kill_at`` (0-based)."""

    kill_at = 4

    def loss(self, model, batch, step):
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().loss(model, batch, step)


def test_sigterm_checkpoints_the_current_step_and_the_run_resumes_exactly(tmp_path):
    straight = fit(tiny(tmp_path / "a", 8))
    straight.fit()
    cfg = tiny(tmp_path / "b", 8)  # checkpoints every 3 steps: step 5 is between checkpoints
    killed = Trainer(cfg.train, TerminatedToyTask(cfg), experiment_config=cfg)
    before = signal.getsignal(signal.SIGTERM)
    killed.fit()
    assert killed.step == 5
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["step"] == 5
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is removed again
    resumed = fit(cfg)
    resumed.fit()
    a = [m for m in read_metrics(tmp_path / "a") if "loss" in m]
    b = [m for m in read_metrics(tmp_path / "b") if "loss" in m]
    assert [m["step"] for m in b] == list(range(1, 9))
    assert [m["loss"] for m in a] == [m["loss"] for m in b]
    for pa, pb in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_sigterm_handler_installed_before_is_left_in_place(tmp_path):
    """Under submitit, SIGTERM belongs to submitit (it ignores it; SIGUSR2 checkpoints and
    requeues): the trainer must not take it over and stop early."""
    received = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        cfg = tiny(tmp_path / "c", 8)
        trainer = Trainer(cfg.train, TerminatedToyTask(cfg), experiment_config=cfg)
        trainer.fit()
    finally:
        signal.signal(signal.SIGTERM, before)
    assert received == [signal.SIGTERM] and trainer.step == 8


def test_resume_after_a_crash_between_checkpoints_logs_each_step_once(tmp_path):
    cfg = tiny(tmp_path / "c", 5)
    trainer = fit(cfg)
    trainer.fit()  # checkpoints at 3 and 5
    ckpt = load_checkpoint(tmp_path / "c" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 5 and ckpt["config"]["train"]["steps"] == 5
    (tmp_path / "c" / "metrics.jsonl").write_text(
        (tmp_path / "c" / "metrics.jsonl").read_text() + '{"step": 6, "loss": 1.0}\n'
    )
    fit(replace(cfg, train=replace(cfg.train, steps=7))).fit()
    steps = [m["step"] for m in read_metrics(tmp_path / "c") if "loss" in m]
    assert steps == [1, 2, 3, 4, 5, 6, 7]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    cfg = tiny(tmp_path / "d", 3)
    fit(cfg).fit()
    path = tmp_path / "d" / "checkpoints" / "last.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="last.pt is corrupt"):
        fit(replace(cfg, train=replace(cfg.train, steps=4))).fit()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_epoch_sampler_splits_one_global_batch_over_ranks():
    sampler = EpochSampler(100, 8, seed=3)
    assert sampler.steps_per_epoch == 12
    full = sampler.indices(5)
    parts = [sampler.indices(5, rank, 2) for rank in range(2)]
    assert sorted(np.concatenate(parts).tolist()) == sorted(full.tolist())
    epoch0 = np.concatenate([sampler.indices(s) for s in range(12)])
    assert len(set(epoch0.tolist())) == 96  # no repeats inside an epoch
    assert not np.array_equal(sampler.indices(0), sampler.indices(12))  # reshuffled each epoch
    assert np.array_equal(EpochSampler(100, 8, seed=3).indices(13), sampler.indices(13))


DECAY_AND_WARMUP = dict(weight_decay=0.01, lr_warmup_steps=3)


def test_trainer_with_fused_update_trains_as_the_reference_and_resumes_across_them(tmp_path):
    reference = fit(tiny(tmp_path / "ref", 6, fused_update="off", **DECAY_AND_WARMUP))
    assert reference.fused_update is None
    reference.fit()
    # fused for 3 steps, checkpoint, then the reference update for 3
    first = fit(tiny(tmp_path / "mixed", 3, fused_update="on", **DECAY_AND_WARMUP))
    assert first.fused_update is not None
    first.fit()
    resumed = fit(tiny(tmp_path / "mixed", 6, fused_update="off", **DECAY_AND_WARMUP))
    resumed.fit()
    a = [m for m in read_metrics(tmp_path / "ref") if "loss" in m]
    b = [m for m in read_metrics(tmp_path / "mixed") if "loss" in m]
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    for ma, mb in zip(a, b):
        assert mb["loss"] == pytest.approx(ma["loss"], rel=1e-5)
        assert mb["grad_norm"] == pytest.approx(ma["grad_norm"], rel=1e-5)
    for pa, pb in zip(reference.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)
    for pa, pb in zip(reference.ema.parameters(), resumed.ema.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)


def test_unknown_fused_update_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="train.speed.fused_update"):
        tiny(tmp_path, 1, fused_update="yes")


def test_trainer_trains_in_float8_keeps_a_plain_ema_and_resumes_without_it(tmp_path):
    patterns = ("denoiser.blocks.*",)
    first = fit(tiny(tmp_path / "run", 3, float8="tensorwise", float8_modules=patterns))
    assert first.float8_layers and all(".blocks." in name for name in first.float8_layers)
    converted = dict(first.model.named_modules())
    assert all(isinstance(converted[name], Float8Linear) for name in first.float8_layers)
    ema_modules = dict(first.ema.named_modules())
    assert all(type(ema_modules[name]) is nn.Linear for name in first.float8_layers)
    first.fit()
    # the checkpoint holds plain tensors: the run goes on in bf16/fp32 matmuls
    resumed = fit(tiny(tmp_path / "run", 5, float8="off"))
    resumed.fit()
    steps = [m for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4, 5]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in steps)


def test_trainer_float8_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="train.speed.float8: unknown 'e4m3'"):
        tiny(tmp_path, 1, float8="e4m3")
    with pytest.raises(ValueError, match="train.speed.float8_modules"):
        tiny(tmp_path, 1, float8="tensorwise", float8_modules=())
    cfg = tiny(tmp_path, 1, float8="tensorwise", float8_modules=("denoiser.*",))  # embed is 18 -> 32
    with pytest.raises(ValueError, match="layer 'denoiser.embed'"):
        fit(cfg)


def test_compile_regions_compiles_each_outermost_match_and_trains_as_eager(tmp_path):
    eager = fit(tiny(tmp_path / "eager", 3))
    eager.fit()
    regions = fit(tiny(tmp_path / "regions", 3, compile=True, compile_regions=("denoiser.blocks.*",)))
    assert regions.compiled_regions == [f"denoiser.blocks.{i}" for i in range(3)]  # not their children
    assert regions.train_model is regions.model  # the rest of the model stays eager
    regions.fit()
    a = [m["loss"] for m in read_metrics(tmp_path / "eager") if "loss" in m]
    b = [m["loss"] for m in read_metrics(tmp_path / "regions") if "loss" in m]
    assert b == pytest.approx(a, rel=1e-4)
    assert list(regions.model.state_dict()) == list(eager.model.state_dict())  # no _orig_mod prefix
    with pytest.raises(ValueError, match=r"train.speed.compile_regions: no submodule .*\['encoder.\*'\]"):
        fit(tiny(tmp_path / "none", 1, compile=True, compile_regions=("encoder.*",)))


def test_logged_means_survive_loss_terms_in_reused_buffers(tmp_path):
    """Under CUDA graphs (compile_mode=reduce-overhead) a loss term may be a graph output buffer
    that the next step overwrites in place; the logged mean must still be that of each step's value."""

    class BufferTask(ToyTask):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.buffer = torch.zeros(())

        def loss(self, model, batch, step):
            out = super().loss(model, batch, step)
            self.buffer.fill_(float(step + 1))  # the same storage every step, as a graph replay writes
            out.terms["replayed"] = self.buffer
            return out

    cfg = tiny(tmp_path / "g", 4)
    cfg = replace(cfg, train=replace(cfg.train, log_every=2))
    Trainer(cfg.train, BufferTask(cfg), experiment_config=cfg).fit()
    logged = [m["replayed"] for m in read_metrics(tmp_path / "g") if "replayed" in m]
    assert logged == [1.5, 3.5]


BF16_PARAMS = dict(param_dtype="bfloat16", precision="bf16", **DECAY_AND_WARMUP)


def test_bf16_params_keep_float32_masters_checkpoint_them_and_resume_exactly(tmp_path):
    straight = fit(tiny(tmp_path / "a", 6, **BF16_PARAMS))
    assert straight.fused_update is not None  # the masters live there
    straight.fit()
    first = fit(tiny(tmp_path / "b", 3, **BF16_PARAMS))
    first.fit()
    resumed = fit(tiny(tmp_path / "b", 6, **BF16_PARAMS))
    resumed.fit()

    trained = [p for p in resumed.model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.bfloat16 for p in trained)
    assert all(m.dtype == torch.float32 for m in resumed.master_params)
    assert all(p.dtype == torch.float32 for p in resumed.ema.parameters())
    moments = [v for s in resumed.optimizer.state.values() for k, v in s.items() if k.startswith("exp_avg")]
    assert len(moments) == 2 * len(trained) and all(v.dtype == torch.float32 for v in moments)
    for p, m in zip(trained, resumed.master_params):  # the parameters are the rounded masters
        assert torch.equal(p, m.to(torch.bfloat16))
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    for (name, _), m in zip(resumed._trained, resumed.master_params):
        assert ckpt["model"][name].dtype == torch.float32 and torch.equal(ckpt["model"][name], m)

    a = [m["loss"] for m in read_metrics(tmp_path / "a") if "loss" in m]
    b = [m["loss"] for m in read_metrics(tmp_path / "b") if "loss" in m]
    assert len(b) == 6 and a == b
    for ma, mb in zip(straight.master_params, resumed.master_params):
        torch.testing.assert_close(mb, ma, rtol=0, atol=0)
    for ea, eb in zip(straight.ema.parameters(), resumed.ema.parameters()):
        torch.testing.assert_close(eb, ea, rtol=0, atol=0)


def test_bf16_params_train_as_float32_params_under_autocast(tmp_path):
    """The forward sees the same bf16-rounded weights either way (autocast rounds float32 ones),
    so the float32 masters follow the float32 parameters of a bf16-autocast run closely."""
    reference = fit(tiny(tmp_path / "ref", 6, precision="bf16", fused_update="on", **DECAY_AND_WARMUP))
    init = [p.detach().clone() for p in reference.model.parameters()]
    reference.fit()
    low = fit(tiny(tmp_path / "low", 6, **BF16_PARAMS))
    low.fit()
    a = [m for m in read_metrics(tmp_path / "ref") if "loss" in m]
    b = [m for m in read_metrics(tmp_path / "low") if "loss" in m]
    assert [m["loss"] for m in b] == pytest.approx([m["loss"] for m in a], rel=2e-3)
    assert [m["grad_norm"] for m in b] == pytest.approx([m["grad_norm"] for m in a], rel=2e-3)
    # each master moved as its float32 parameter did, up to a few bf16-rounded gradients (e.g. of
    # LayerNorm weights) flipping Adam's sign near zero: measured 0.1-2.1% of the move
    for (name, p), p0, m in zip(reference.model.named_parameters(), init, low.master_params):
        moved, apart = (p - p0).norm(), (m - p).norm()
        assert moved > 1e-3 and apart < 0.05 * moved, (name, float(moved), float(apart))


def test_checkpoints_resume_across_parameter_dtypes(tmp_path):
    fit(tiny(tmp_path / "run", 2, precision="bf16", fused_update="on")).fit()
    low = fit(tiny(tmp_path / "run", 4, param_dtype="bfloat16", precision="bf16"))
    low.fit()
    back = fit(tiny(tmp_path / "run", 6, precision="bf16", fused_update="on"))
    back.fit()
    assert [m["step"] for m in read_metrics(tmp_path / "run") if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert all(p.dtype == torch.float32 for p in back.model.parameters())
    for p, m in zip([p for p in back.model.parameters()], low.master_params):  # resumed from the masters
        assert not torch.equal(p, m)  # and trained on


def test_param_dtype_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="train.speed.param_dtype: unknown 'float16'"):
        tiny(tmp_path, 1, param_dtype="float16")
    with pytest.raises(ValueError, match="train.speed.param_dtype=bfloat16 needs bf16 autocast"):
        tiny(tmp_path, 1, param_dtype="bfloat16", fused_update="off")
    with pytest.raises(ValueError, match="train.speed.param_dtype=bfloat16 needs bf16 autocast"):
        tiny(tmp_path, 1, param_dtype="bfloat16", precision="fp32")
    with pytest.raises(ValueError, match="train.speed.param_dtype=bfloat16 needs bf16 autocast"):
        fit(tiny(tmp_path, 1, param_dtype="bfloat16", device="cpu"))  # auto precision: fp32 on a CPU


class ScriptedEvalTask(ToyTask):
    """The toy task whose evaluation returns a fixed sequence of scores (one per evaluation)."""

    def __init__(self, cfg, scores):
        super().__init__(cfg)
        self.scores = list(scores)

    def evaluate(self, model, ema, step, run_dir):
        return {"score": self.scores[step - 1]}


def test_best_checkpoint_and_early_stopping(tmp_path):
    scores = [3.0, 2.0, 2.5, 2.6, 1.0, 0.5]  # best (min) at step 2, then two evaluations without one
    cfg = tiny(tmp_path / "run", 6, eval_every=1, best_metric="eval/score", best_mode="min", patience=2)
    trainer = Trainer(cfg.train, ScriptedEvalTask(cfg, scores), experiment_config=cfg)
    trainer.fit()
    ckpt = tmp_path / "run" / "checkpoints"
    assert trainer.step == 4  # stopped after steps 3 and 4 brought no new best
    assert load_checkpoint(ckpt / "best.pt", "cpu")["step"] == 2
    assert load_checkpoint(ckpt / "last.pt", "cpu")["step"] == 4
    record = json.loads((ckpt / "best.json").read_text())
    assert record == {
        "metric": "eval/score",
        "mode": "min",
        "value": 2.0,
        "step": 2,
        "evals_since_best": 2,
        "stopped": True,
    }
    # a resumed run stays stopped (nothing more is trained or logged)
    again = Trainer(cfg.train, ScriptedEvalTask(cfg, scores), experiment_config=cfg)
    again.fit()
    assert again.step == 4 and max(m["step"] for m in read_metrics(tmp_path / "run")) == 4
    # without patience the best is kept and training runs to the end: best at step 6
    cfg = tiny(tmp_path / "full", 6, eval_every=1, best_metric="eval/score", best_mode="min")
    Trainer(cfg.train, ScriptedEvalTask(cfg, scores), experiment_config=cfg).fit()
    assert load_checkpoint(tmp_path / "full" / "checkpoints" / "best.pt", "cpu")["step"] == 6
    # a metric the evaluation does not give, and bad settings, are clear errors
    cfg = tiny(tmp_path / "typo", 2, eval_every=1, best_metric="eval/scroe")
    with pytest.raises(ValueError, match="train.best_metric: 'eval/scroe' is not among .*eval/score"):
        Trainer(cfg.train, ScriptedEvalTask(cfg, scores), experiment_config=cfg).fit()
    with pytest.raises(ValueError, match="train.patience: needs train.best_metric"):
        tiny(tmp_path / "x", 2, patience=3)
    with pytest.raises(ValueError, match="train.best_mode: unknown 'lowest'"):
        tiny(tmp_path / "x", 2, best_metric="eval/score", best_mode="lowest")


def test_a_damaged_or_foreign_best_record_is_a_clear_error(tmp_path):
    cfg = tiny(tmp_path / "run", 2, eval_every=1, best_metric="eval/score")
    record = tmp_path / "run" / "checkpoints" / "best.json"
    record.parent.mkdir(parents=True)
    record.write_text("{not json")
    with pytest.raises(ValueError, match=r"best.json: not a best-checkpoint record"):
        Trainer(cfg.train, ScriptedEvalTask(cfg, [1.0, 2.0]), experiment_config=cfg)
    record.write_text(json.dumps({"metric": "eval/loss", "mode": "min"}))
    with pytest.raises(ValueError, match=r"train.best_metric: .*best.json tracks 'eval/loss' \(min\)"):
        Trainer(cfg.train, ScriptedEvalTask(cfg, [1.0, 2.0]), experiment_config=cfg)

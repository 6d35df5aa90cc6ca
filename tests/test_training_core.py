"""Tests of the shared training pieces: config overrides, schedule, flat optimiser, frozen parts, anomaly guard, loop,
checkpoints with exact resume (also after SIGKILL) and the safetensors export."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _training_standins import LineParams, LineWorld, MLPAgent
from safetensors.numpy import load_file

from sima2.training import (
    Checkpointer,
    GuardConfig,
    GuardState,
    MetricsLogger,
    MonitorConfig,
    OptimConfig,
    TrainConfig,
    TrainingHalted,
    TrainState,
    apply_overrides,
    guard_step,
    make_bc,
    make_ppo,
    make_schedule,
    run_loop,
)
from sima2.training.optim import flatten_small

HERE = Path(__file__).parent
SRC = HERE.parent / "src"


def test_overrides_are_typed_and_validated():
    config = apply_overrides(
        TrainConfig(), ["optim.lr=3e-4", "ppo.num_envs=8", "monitor.jsonl=false", "stage=ppo"]
    )
    assert config.optim.lr == 3e-4 and config.ppo.num_envs == 8 and config.monitor.jsonl is False
    assert config.stage == "ppo" and TrainConfig().optim.lr == 1e-4  # the default is untouched
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        apply_overrides(TrainConfig(), ["ppo.nope=1"])
    with pytest.raises(ValueError, match="expected an int"):
        apply_overrides(TrainConfig(), ["ppo.num_envs=2.5"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(TrainConfig(), ["ppo.num_envs"])
    with pytest.raises(ValueError, match="is a section"):
        apply_overrides(TrainConfig(), ["ppo=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("ppo.num_envs=-4", r"'ppo.num_envs': PPOConfig.num_envs must be >= 1, got -4"),
        ("ppo.num_minibatches=0", "PPOConfig.num_minibatches must be >= 1"),
        ("ppo.gamma=2.0", r"PPOConfig.gamma must be in \[0, 1\], got 2.0"),
        ("optim.lr=-1", "OptimConfig.lr must be a finite number >= 0"),
        ("optim.lr=1e400", "OptimConfig.lr must be a finite number >= 0, got inf"),
        ("ppo.num_envs=1e400", "expected an int, got inf"),
        ("eval.num_episodes=0", "EvalConfig.num_episodes must be >= 1"),
        ("checkpoint.every=0", "CheckpointConfig.every must be >= 1"),
        ("data.on_invalid=skip", "DataConfig.on_invalid must be 'raise' or 'drop'"),
        ("guard.ema_decay=1.0", r"GuardConfig.ema_decay must be in \[0, 1\)"),
        ("stage=rl", "TrainConfig.stage must be 'bc' or 'ppo'"),
    ],
)
def test_out_of_range_overrides_are_refused_when_the_config_is_built(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(TrainConfig(), [override])


def test_schedule_warms_up_then_decays_to_final_lr():
    schedule = make_schedule(OptimConfig(lr=1e-4, final_lr=1e-5, warmup_steps=10, decay_steps=100))
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(1e-4)
    assert float(schedule(55)) < 1e-4
    assert float(schedule(100)) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="decay_steps"):
        make_schedule(OptimConfig(warmup_steps=10, decay_steps=10))


def test_small_models_are_optimised_as_one_flat_vector_with_the_same_updates():
    inner = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(1e-2, weight_decay=0.01))
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.arange(4.0)}
    flat, per_array = flatten_small(inner), flatten_small(inner, max_size=15)
    flat_state, state = flat.init(params), per_array.init(params)
    assert [x.shape for x in jax.tree.leaves(flat_state) if x.ndim] == [(16,), (16,)]  # Adam's two moments
    assert {x.shape for x in jax.tree.leaves(state) if x.ndim} == {(3, 4), (4,)}  # 16 > 15: left as is
    for step in range(3):
        grads = jax.tree.map(lambda x, s=step: jnp.sin(x + s), params)
        flat_updates, flat_state = flat.update(grads, flat_state, params)
        updates, state = per_array.update(grads, state, params)
        for a, b in zip(jax.tree.leaves(flat_updates), jax.tree.leaves(updates), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        params = optax.apply_updates(params, updates)
    mixed = {"w": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2, jnp.float32)}  # raveling would upcast
    assert {x.dtype for x in jax.tree.leaves(flatten_small(inner).init(mixed)) if x.ndim} == {
        jnp.dtype(jnp.bfloat16),
        jnp.dtype(jnp.float32),
    }


def _toy_state() -> TrainState:
    return TrainState(
        jnp.zeros(3), jnp.zeros(3), jax.random.key(0), jnp.zeros((), jnp.int32), GuardState.init()
    )


def _toy_step(state, loss):
    """Moves the 'model' by one and reports `loss`, as a real step would after an update."""
    new = TrainState(
        state.model + 1.0, state.opt_state + 1.0, jax.random.split(state.key)[0], state.step + 1, state.guard
    )
    return new, {"loss": loss, "grad_norm": jnp.abs(loss)}


def test_guard_skips_nonfinite_and_spiking_updates_and_stops_when_they_repeat():
    step = jax.jit(guard_step(_toy_step, GuardConfig(warmup_steps=3, spike_factor=5.0, max_consecutive=2)))
    state = _toy_state()
    for _ in range(3):
        state, metrics = step(state, jnp.float32(1.0))
    assert float(state.model[0]) == 3.0 and not bool(metrics["anomaly"])
    state, metrics = step(state, jnp.float32(jnp.nan))
    assert bool(metrics["anomaly"]) and float(state.model[0]) == 3.0 and float(state.opt_state[0]) == 3.0
    assert int(state.step) == 4  # the step counter and key still move on: the bad batch is not retried
    state, metrics = step(state, jnp.float32(1.2))
    assert float(state.model[0]) == 4.0 and int(metrics["skipped_updates"]) == 1
    state, metrics = step(state, jnp.float32(100.0))  # a spike
    assert bool(metrics["anomaly"]) and float(state.model[0]) == 4.0
    state, _ = step(state, jnp.float32(jnp.inf))
    assert bool(state.guard.stopped) and int(state.guard.reason) == 1
    state, _ = step(state, jnp.float32(1.0))  # a stopped run never updates again
    assert float(state.model[0]) == 4.0


def test_run_loop_halts_on_repeated_anomalies_and_keeps_last_good_checkpoint(tmp_path):
    step = jax.jit(guard_step(_toy_step, GuardConfig(max_consecutive=3)))
    batches = iter([jnp.float32(1.0)] * 4 + [jnp.float32(jnp.nan)] * 10)
    checkpointer = Checkpointer(tmp_path / "ckpt", every=2, keep=5, async_save=False)
    logger = MetricsLogger(tmp_path, MonitorConfig(log_every=1, progress=False, tensorboard=False))
    with pytest.raises(TrainingHalted, match="3 consecutive anomalies .non-finite"):
        run_loop(_toy_state(), step, 20, batches=batches, checkpointer=checkpointer, logger=logger)
    logger.close()
    assert checkpointer.all_steps() == [2, 4, 6]
    restored, _ = checkpointer.restore(_toy_state())
    assert float(restored.model[0]) == 4.0  # step 6 holds the last good parameters
    assert "halt" in (tmp_path / "metrics.jsonl").read_text()


def test_run_loop_with_several_steps_per_call_matches_single_steps(tmp_path):
    # A batch-free step whose loss changes every step, so the logs show which step's metrics were kept.
    jitted = jax.jit(guard_step(lambda state, _: _toy_step(state, state.step.astype(jnp.float32)), GuardConfig()))
    calls = []

    def counted(state, batch):
        calls.append(None)  # once per dispatched single step, once per trace of a multi-step program
        return jitted(state, batch)

    finals, logs = [], []
    for steps_per_call in (1, 3):
        out = tmp_path / str(steps_per_call)
        checkpointer = Checkpointer(out / "ckpt", every=5, keep=5, async_save=False)
        logger = MetricsLogger(out, MonitorConfig(log_every=4, progress=False, tensorboard=False))
        calls.clear()
        state = run_loop(
            _toy_state(), counted, 10, checkpointer=checkpointer, logger=logger, steps_per_call=steps_per_call
        )
        logger.close()
        checkpointer.close()
        finals.append(state)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        logs.append([(r["step"], r["loss"]) for r in records])
        assert checkpointer.all_steps() == [5, 10]
    assert len(calls) < 10  # fewer dispatches: steps 0-3 and 5-8 ran three to a call
    assert logs[0] == logs[1] == [(4, 3.0), (8, 7.0), (10, 9.0)]
    assert int(finals[1].step) == 10 and float(finals[1].model[0]) == 10.0
    np.testing.assert_array_equal(finals[0].opt_state, finals[1].opt_state)
    with pytest.raises(ValueError, match="batch-free"):
        run_loop(finals[0], counted, 12, batches=iter([None] * 2), steps_per_call=2)


def _line_batch(size=8, nan=False):
    proprio = np.full((size, 2), np.nan if nan else 0.5, np.float32)
    return {
        "obs": {
            "image": np.zeros((size, 4, 4, 3), np.uint8),
            "instruction": np.ones((size, 1), np.int32),
            "proprio": proprio,
        },
        "action": np.ones((size, 3), np.int32),
    }


def test_compile_step_donates_the_state_and_matches_filter_jit():
    """The loop's compiled step gives the same states as `eqx.filter_jit`, consumes the state it is given
    (its buffers are reused), and `own_buffers` keeps the caller's copy intact."""
    from sima2.training.loop import compile_step, own_buffers

    agent = MLPAgent(jax.random.key(0))
    init, step = make_bc(agent, apply_overrides(TrainConfig(), ["bc.noise_std=0.0"]))
    start = init(jax.random.key(1))
    expected, _ = eqx.filter_jit(step)(start, _line_batch())
    compiled = compile_step(step, start)
    given = own_buffers(start)
    state, metrics = compiled(given, _line_batch())
    arrays = lambda s: jax.tree.leaves(eqx.filter(s, eqx.is_inexact_array))  # noqa: E731
    for mine, theirs in zip(arrays(state), arrays(expected), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert given.model.policy.weight.is_deleted()  # donated
    assert not start.model.policy.weight.is_deleted() and not agent.policy.weight.is_deleted()
    state, _ = compiled(state, _line_batch())  # the returned state feeds the next step
    assert int(state.step) == 2


def test_injected_nan_batch_is_survived_and_frozen_parts_stay_put():
    agent = MLPAgent(jax.random.key(0))
    frozen = jax.tree.map(lambda _: True, agent)
    frozen = eqx.tree_at(lambda a: (a.torso.layers[0].weight, a.torso.layers[0].bias), frozen, (False, False))
    config = apply_overrides(TrainConfig(), ["optim.lr=1e-2", "optim.warmup_steps=1", "bc.noise_std=0.0"])
    init, step = make_bc(agent, config, filter_spec=frozen)
    step = eqx.filter_jit(step)
    state, _ = step(init(jax.random.key(1)), _line_batch())
    before = state.model
    state, metrics = step(state, _line_batch(nan=True))
    assert bool(metrics["anomaly"])
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.model), strict=True)
    )
    state, metrics = step(state, _line_batch())
    assert not bool(metrics["anomaly"]) and np.isfinite(float(metrics["loss"]))
    assert not np.array_equal(state.model.policy.weight, before.policy.weight)
    assert np.array_equal(state.model.torso.layers[0].weight, agent.torso.layers[0].weight)


def _three_ppo_checkpoints(folder, keep, position_per_step):
    """Three PPO updates on the line world, each checkpointed (data_position = step * position_per_step)."""
    config = apply_overrides(TrainConfig(), ["ppo.num_envs=4", "ppo.rollout_length=4", "ppo.num_minibatches=2"])
    init, step = make_ppo(MLPAgent(jax.random.key(0)), LineWorld(), LineParams(), config)
    step = eqx.filter_jit(step)
    state = init(jax.random.key(1))
    checkpointer = Checkpointer(folder, every=1, keep=keep, async_save=False)
    for i in range(1, 4):
        state, _ = step(state, None)
        checkpointer.save(i, state, {"data_position": i * position_per_step})
    checkpointer.wait()
    return config, init, step, state, checkpointer


def test_checkpoint_restores_exactly_keeps_last_k_and_exports_safetensors(tmp_path):
    _, init, step, state, checkpointer = _three_ppo_checkpoints(tmp_path, keep=2, position_per_step=10)
    assert checkpointer.all_steps() == [2, 3]
    restored, meta = checkpointer.restore(init(jax.random.key(7)))
    assert meta["data_position"] == 30 and meta["step"] == 3
    same = jax.tree.map(
        lambda a, b: bool(jnp.array_equal(a, b)),
        jax.tree.map(
            lambda x: jax.random.key_data(x) if x.dtype == jax.random.key(0).dtype else x,
            eqx.filter(state, eqx.is_array),
        ),
        jax.tree.map(
            lambda x: jax.random.key_data(x) if x.dtype == jax.random.key(0).dtype else x,
            eqx.filter(restored, eqx.is_array),
        ),
    )
    assert all(jax.tree.leaves(same))
    # Placed as the template is (uncommitted on one device), so the compiled step is reused, not recompiled.
    template_arrays = jax.tree.leaves(eqx.filter(init(jax.random.key(7)), eqx.is_array))
    assert [x.committed for x in jax.tree.leaves(eqx.filter(restored, eqx.is_array))] == [
        x.committed for x in template_arrays
    ]
    # One more step from the restored state matches one more step from the original.
    a, _ = step(state, None)
    compiled = step._cached._cache_size()
    b, _ = step(restored, None)
    assert step._cached._cache_size() == compiled
    assert np.array_equal(a.model.policy.weight, b.model.policy.weight)
    folder = state.model.save_pretrained(tmp_path / "final")  # what a stage writes to out/final
    tensors = load_file(str(folder / "model.safetensors"))
    assert np.array_equal(tensors["policy.weight"], np.asarray(state.model.policy.weight))
    checkpointer.close()


# orbax leaves coroutines of the failed reads to the garbage collector; their warnings are noise here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning", "ignore::RuntimeWarning")
def test_resume_skips_a_damaged_newest_checkpoint_and_keeps_it_aside(tmp_path):
    config, init, step, _, checkpointer = _three_ppo_checkpoints(tmp_path, keep=3, position_per_step=1)
    checkpointer.close()
    damaged = [f for f in (tmp_path / "3").rglob("*") if f.is_file() and f.stat().st_size > 0]
    for f in damaged:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated, as by a crash mid-write
    (tmp_path / "7").mkdir()  # a stray, empty step folder
    checkpointer = Checkpointer(tmp_path, every=1, keep=3, async_save=False)
    restored, meta = checkpointer.restore(init(jax.random.key(7)))
    assert meta["step"] == 2 and meta["data_position"] == 2
    assert (tmp_path / "3.unreadable").is_dir() and (tmp_path / "7.unreadable").is_dir()
    assert checkpointer.all_steps() == [1, 2]
    checkpointer.save(3, step(restored, None)[0], {"data_position": 3})  # the resumed run saves step 3 again
    checkpointer.wait()
    assert checkpointer.restore(init(jax.random.key(7)))[1]["step"] == 3
    checkpointer.close()
    # A checkpoint that cannot fit this run's state (another configuration) is named, and nothing moves.
    other = apply_overrides(config, ["ppo.num_envs=8"])
    init_other, _ = make_ppo(MLPAgent(jax.random.key(0)), LineWorld(), LineParams(), other)
    checkpointer = Checkpointer(tmp_path, every=1, keep=3, async_save=False)
    with pytest.raises(ValueError, match="no checkpoint in .* restores into this run's training state"):
        checkpointer.restore(init_other(jax.random.key(7)))
    assert checkpointer.all_steps() == [1, 2, 3]
    checkpointer.close()


def _run(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{HERE}")
    return subprocess.Popen(
        [sys.executable, str(HERE / "_training_run.py"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    full = _run(["ppo", str(tmp_path / "full"), "10", "--save-every", "2"])
    assert full.wait(timeout=300) == 0, full.stdout.read()
    killed = _run(["ppo", str(tmp_path / "cut"), "10", "--save-every", "2", "--sleep", "0.5"])
    deadline = time.time() + 240
    while not (tmp_path / "cut" / "checkpoints" / "4").exists():
        assert killed.poll() is None and time.time() < deadline, "run ended before its checkpoint"
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "cut" / "final").exists()
    resumed = _run(["ppo", str(tmp_path / "cut"), "10", "--save-every", "2", "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    assert "resume" in (tmp_path / "cut" / "metrics.jsonl").read_text()
    expected = np.load(tmp_path / "full" / "final_params.npz")
    got = np.load(tmp_path / "cut" / "final_params.npz")
    for name in expected:
        assert np.array_equal(expected[name], got[name]), name

"""Entry points per training stage: `train_bc` and `train_ppo` build the state, resume if asked, run the
shared loop with logging and checkpoints, and save the final model with its own `save_pretrained` under
`out/final` (for an `Agent`: loadable with `Agent.from_pretrained`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import equinox as eqx
import jax
from jax.sharding import Mesh
from jaxtyping import PyTree

from sima2.training.bc import PlanLoss, frozen_instruction_features, make_bc
from sima2.training.checkpoint import Checkpointer
from sima2.training.config import TrainConfig, config_to_dict
from sima2.training.data import DemonstrationBatches, longest_instruction
from sima2.training.dataset_checks import check_dataset
from sima2.training.loop import Hook, TrainState, compile_step, own_buffers, run_loop
from sima2.training.monitor import MetricsLogger
from sima2.training.parallel import shard_batch, shard_train_state, to_host
from sima2.training.ppo import make_ppo, vmap_seeds
from sima2.training.recurrent import is_memoryless
from sima2.training.validation import HeldOutAccuracy, split_validation, stage_validation

log = logging.getLogger("sima2.training")


def run_stage(
    config: TrainConfig,
    init_fn: Callable[[Any], TrainState],
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict]],
    *,
    resume: bool = False,
    make_batches: Callable[[int], Any] | None = None,
    mesh: Mesh | None = None,
    hooks: Sequence[Hook] = (),
    samples_per_step: int = 1,
    num_seeds: int = 1,
    jit: bool = True,
    evaluate: Callable[[TrainState], dict[str, float]] | None = None,
) -> TrainState:
    """The common driver: init (or resume), jit, `run_loop`, then `model.save_pretrained(out / "final")` (the
    model is an `AbstractAgent`; with several seeds, seed 0's). `jit=False` for a step that runs a host loop
    and jits its own update (`make_host_ppo`)."""
    out = Path(config.out)
    is_main = jax.process_index() == 0
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config_to_dict(config), indent=2))
    key = jax.random.key(config.seed)
    if num_seeds > 1:
        state, step_fn = vmap_seeds(init_fn, step_fn, key, num_seeds)
    else:
        state = init_fn(key)
    if mesh is not None:
        state = shard_train_state(state, mesh, env_axis=1 if num_seeds > 1 else 0)
    checkpointer = Checkpointer(
        out / "checkpoints",
        every=config.checkpoint.every,
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )
    logger = MetricsLogger(out, config.monitor, desc=config.stage)
    position = 0
    batches = None
    try:
        if resume and checkpointer.latest_step() is not None:
            state, meta = checkpointer.restore(state)
            position = int(meta.get("data_position", 0))
            logger.event(int(meta["step"]), "resume", f"resumed from {checkpointer.directory}/{meta['step']}")
        batches = make_batches(position) if make_batches is not None else None
        state = own_buffers(state)  # the compiled step donates them; the caller's agent stays whole
        state = run_loop(
            state,
            compile_step(step_fn, state) if jit else step_fn,
            config.num_updates,
            batches=batches,
            data_position=None if batches is None else (lambda: batches.position),
            checkpointer=checkpointer,
            logger=logger,
            hooks=hooks,
            samples_per_step=samples_per_step,
            evaluate=evaluate,  # e.g. held-out accuracy, at checkpoint steps and the end
            evaluate_every=config.checkpoint.every,
        )
    finally:
        if batches is not None:
            batches.close()
        checkpointer.close()
        logger.close()
    arrays, static = eqx.partition(state.model, eqx.is_array)
    arrays = to_host(arrays)
    if num_seeds > 1:
        arrays = jax.tree.map(lambda x: x[0], arrays)  # seed 0's weights; all seeds stay in the checkpoint
    if is_main:
        eqx.combine(arrays, static).save_pretrained(out / "final")
    return state


def _chain(first: Callable[[dict, dict], dict], second: Callable[[dict, dict], dict]) -> Callable[[dict, dict], dict]:
    return lambda rows, batch: second(rows, first(rows, batch))


def train_bc(
    config: TrainConfig,
    agent: Any,
    dataset: datasets.Dataset,
    *,
    image_shape: Sequence[int],
    action_nvec: Sequence[int],
    filter_spec: PyTree | None = None,
    plan_loss: PlanLoss | None = None,
    transform: Callable[[dict, dict], dict] | None = None,
    resume: bool = False,
    mesh: Mesh | None = None,
    hooks: Sequence[Hook] = (),
    vocab_size: int | None = None,
    proprio_size: int | None = None,
    touch_size: int | None = None,
    precompute_instructions: bool = False,
) -> TrainState:
    """Behaviour cloning on demonstrations, validated first (bad rows raise, or are logged and dropped).

    `vocab_size` / `proprio_size` / `touch_size`, when given, bound the rows' instruction ids and their
    proprioception and touch lengths.
    With several processes, each passes its own shard of the dataset and its local batch size.
    `precompute_instructions`: the agent's language model is frozen, so its instruction features are
    computed once per distinct instruction before training (`bc.frozen_instruction_features`).
    `config.data.validation_episodes = k`: the k episodes of largest `episode_id` are not trained on; their
    greedy action accuracy is logged (`val_action_accuracy`) every `config.checkpoint.every` updates and at
    the end, and the latest is written to `out/validation.json` (`sima2.training.validation`).

    An agent with a memory (a non-empty `initial_carry()`) needs `config.bc.sequence_length` > 1: single
    rows would train it as if it never remembered anything (a ValueError says so).
    """
    if config.bc.sequence_length == 1 and not is_memoryless(agent):
        raise ValueError(
            "the agent has a recurrent memory (its initial_carry() is not empty), but bc.sequence_length=1 "
            "clones it on single rows, each from a fresh memory, so the memory is never trained; set "
            "bc.sequence_length to e.g. 8 with bc.batch_size counting windows, or start from a preset's "
            "settings: sima2.training.pipeline_config(\"cpu-small\").bc"
        )
    dataset = check_dataset(
        dataset,
        image_shape=image_shape,
        action_nvec=action_nvec,
        on_invalid=config.data.on_invalid,
        vocab_size=vocab_size,
        proprio_size=proprio_size,
        touch_size=touch_size,
        allow_empty_instructions=config.data.allow_empty_instructions,
    )
    if precompute_instructions:
        features = frozen_instruction_features(agent, dataset, longest_instruction(dataset))
        transform = features if transform is None else _chain(transform, features)
    init_fn, step_fn = make_bc(agent, config, filter_spec=filter_spec, plan_loss=plan_loss)
    # Held out after the instruction features above were computed, so they cover the held-out rows too.
    dataset, held_out = split_validation(dataset, config.data.validation_episodes)
    validation = None if held_out is None else stage_validation(
        HeldOutAccuracy(held_out, action_nvec, instruction_length=longest_instruction(dataset), transform=transform),
        config.out,
    )
    local_batch = config.bc.batch_size // jax.process_count()
    put = (lambda batch: shard_batch(batch, mesh)) if mesh is not None else jax.device_put

    def make_batches(position: int) -> DemonstrationBatches:
        batches = DemonstrationBatches(
            dataset,
            local_batch,
            seed=config.seed,
            shuffle=config.data.shuffle,
            position=position,
            prefetch=config.data.prefetch,
            put=put,
            transform=transform,
            sequence_length=config.bc.sequence_length,
            window_mode=config.bc.window_starts,
        )
        if batches.steps_covered < 1.0:
            log.warning("%.1f%% of the demonstration steps are in no training window (bc.window_starts=%r, "
                        "bc.sequence_length=%d); bc.window_starts='whole_episodes' trains every step",
                        100 * (1 - batches.steps_covered), config.bc.window_starts, config.bc.sequence_length)
        log.info(
            "behaviour cloning on %d rows: %d %s of %d steps, %.1f%% of the rows inside one, %d batches an epoch",
            len(dataset), len(batches.starts), "windows" if config.bc.sequence_length > 1 else "rows",
            config.bc.sequence_length, 100 * batches.steps_covered, batches.batches_per_epoch,
        )
        return batches

    return run_stage(
        config,
        init_fn,
        step_fn,
        resume=resume,
        make_batches=make_batches,
        mesh=mesh,
        hooks=hooks,
        samples_per_step=config.bc.batch_size * config.bc.sequence_length,
        evaluate=validation,
    )


def train_ppo(
    config: TrainConfig,
    agent: Any,
    env: Any,
    env_params: PyTree,
    *,
    filter_spec: PyTree | None = None,
    resume: bool = False,
    mesh: Mesh | None = None,
    hooks: Sequence[Hook] = (),
) -> TrainState:
    """PPO on a functional env, `config.ppo.num_seeds` seeds at once (vmapped)."""
    init_fn, step_fn = make_ppo(agent, env, env_params, config, filter_spec=filter_spec)
    ppo = config.ppo
    return run_stage(
        config,
        init_fn,
        step_fn,
        resume=resume,
        mesh=mesh,
        hooks=hooks,
        samples_per_step=ppo.num_envs * ppo.rollout_length * ppo.num_seeds,
        num_seeds=ppo.num_seeds,
    )

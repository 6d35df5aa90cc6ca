"""Entry points per training stage: `train_bc` and `train_ppo` build the state, resume if asked, run the
shared loop with logging and checkpoints, and save the final model with its own `save_pretrained` under
`out/final` (for an `Agent`: loadable with `Agent.from_pretrained`).
"""

from __future__ import annotations

import json
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
) -> TrainState:
    """The common driver: init (or resume), jit, `run_loop`, then `model.save_pretrained(out / "final")` (the
    model is an `AbstractAgent`; with several seeds, seed 0's)."""
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
            compile_step(step_fn, state),
            config.num_updates,
            batches=batches,
            data_position=None if batches is None else (lambda: batches.position),
            checkpointer=checkpointer,
            logger=logger,
            hooks=hooks,
            samples_per_step=samples_per_step,
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
    """
    dataset = check_dataset(
        dataset,
        image_shape=image_shape,
        action_nvec=action_nvec,
        on_invalid=config.data.on_invalid,
        vocab_size=vocab_size,
        proprio_size=proprio_size,
        touch_size=touch_size,
    )
    if precompute_instructions:
        features = frozen_instruction_features(agent, dataset, longest_instruction(dataset))
        transform = features if transform is None else _chain(transform, features)
    init_fn, step_fn = make_bc(agent, config, filter_spec=filter_spec, plan_loss=plan_loss)
    local_batch = config.bc.batch_size // jax.process_count()
    put = (lambda batch: shard_batch(batch, mesh)) if mesh is not None else jax.device_put

    def make_batches(position: int) -> DemonstrationBatches:
        return DemonstrationBatches(
            dataset,
            local_batch,
            seed=config.seed,
            shuffle=config.data.shuffle,
            position=position,
            prefetch=config.data.prefetch,
            put=put,
            transform=transform,
            sequence_length=config.bc.sequence_length,
        )

    return run_stage(
        config,
        init_fn,
        step_fn,
        resume=resume,
        make_batches=make_batches,
        mesh=mesh,
        hooks=hooks,
        samples_per_step=config.bc.batch_size * config.bc.sequence_length,
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

"""End-to-end PPO throughput (env steps/s, rollout + update) on CartPole: sima2 vs rejax vs Stable-Baselines3.

sima2 and rejax train on gymnax CartPole-v1 fully inside one `jit` (compile time excluded: each is run
once to warm up, then timed, blocking until the result is ready). Stable-Baselines3 trains on gymnasium
CartPole-v1 with PyTorch. All three use separate actor and critic MLPs with two hidden layers of 64 and
SiLU, the same number of parallel envs, rollout length, epochs and minibatch count (1024 samples each),
Adam at 3e-4 with no weight decay, gradient clipping at 0.5, value clipping, entropy bonus 0.01 and
per-minibatch advantage normalisation. Differences left: rejax clips each gradient element where the
others clip the global norm, and initialisations differ. rejax's periodic evaluation is switched off, so
only training is timed. The runs are interleaved `--repeats` times and the best of each is reported, since
a shared CPU makes single timings noisy. Needs the benchmark extra (gymnax, six, rejax, stable-baselines3).

    python benchmarks/bench_ppo.py [--num-envs 64] [--rollout-length 64] [--updates 32] [--sb3-updates 2]
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import gymnax
import jax
import jax.numpy as jnp

from sima2.contract import AbstractAgent, ActionSpec, ActOutput, ArraySpec, Env, EnvSpec, ObservationSpec, StepInfo
from sima2.training import (
    TrainConfig,
    apply_overrides,
    make_optimizer,
    make_ppo,
    ppo_update,
    scan_steps,
    trainable_spec,
)
from sima2.training.ppo import collect_rollout


class CartPoleEnv(Env):
    """gymnax CartPole through sima2's env contract: its state, observation and non-resetting step; the
    contract's `step` adds the auto-reset. Observations are CartPole's 4 floats (no pixels, no text)."""

    env: object = eqx.field(static=True)

    @property
    def spec(self):
        return EnvSpec(
            observation=ObservationSpec(
                image=ArraySpec((1, 1, 3), "uint8"),
                instruction=ArraySpec((1,), "int32"),
                proprio=ArraySpec((4,), "float32"),
                vocab_size=1,
            ),
            action=ActionSpec((2,)),
            max_instruction_words=1,
        )

    def default_params(self):
        return self.env.default_params

    def init(self, key, params):
        return self.env.reset_env(key, params)[1]

    def observe(self, state, params):
        # The contract's observation: CartPole's 4 floats as proprio, and an empty image and instruction.
        return {
            "image": jnp.zeros((1, 1, 3), jnp.uint8),
            "instruction": jnp.zeros((1,), jnp.int32),
            "proprio": self.env.get_obs(state),
        }

    def transition(self, key, state, action, params):
        out = self.env.step_env(key, state, action, params)
        _, state, reward, done = out[:4]
        if len(out) == 6:  # gymnax versions that report truncation apart
            done = out[3] | out[4]
        return state, reward.astype(jnp.float32), StepInfo(terminated=done, truncated=False)

    def expert_action(self, state, params):
        raise NotImplementedError("CartPole has no scripted expert")


class MLPActorCritic(AbstractAgent):
    """Separate actor and critic MLPs (64, 64), as rejax and SB3 use by default."""

    actor: eqx.nn.MLP
    critic: eqx.nn.MLP

    def __init__(self, key, obs_size=4, num_actions=2, width=64):
        actor_key, critic_key = jax.random.split(key)
        self.actor = eqx.nn.MLP(obs_size, num_actions, width, 2, activation=jax.nn.silu, key=actor_key)
        self.critic = eqx.nn.MLP(obs_size, "scalar", width, 2, activation=jax.nn.silu, key=critic_key)

    def initial_carry(self):
        return jnp.zeros((0,), jnp.float32)

    def act(self, key, obs, carry, *, deterministic=False, instruction=None):
        state = obs["proprio"]
        logits = jax.nn.log_softmax(self.actor(state))
        action = jnp.argmax(logits) if deterministic else jax.random.categorical(key, logits)
        entropy = -(jnp.exp(logits) * logits).sum()
        return action, carry, ActOutput(log_prob=logits[action], value=self.critic(state), entropy=entropy)

    def observation_features(self, obs, instruction=None):
        return obs["proprio"]

    def instruction_features(self, instruction):
        return None  # no instruction

    def instruction_features_frozen(self):
        return False

    def evaluate_features(self, obs, carry, action):
        logits = jax.nn.log_softmax(self.actor(obs))
        entropy = -(jnp.exp(logits) * logits).sum()
        return logits[action], entropy, self.critic(obs), carry

    def critic_filter(self):
        critic = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda m: m.critic, critic, jax.tree.map(eqx.is_inexact_array, self.critic))

    def trainable_filter(self):
        return jax.tree.map(eqx.is_inexact_array, self)

    def save_pretrained(self, save_directory):
        raise NotImplementedError("the benchmark's agent is not saved")


def sima2_runner(num_envs, rollout_length, update_epochs, num_minibatches, updates):
    gym_env, env_params = gymnax.make("CartPole-v1")
    config = apply_overrides(
        TrainConfig(),
        [
            f"ppo.num_envs={num_envs}",
            f"ppo.rollout_length={rollout_length}",
            f"ppo.update_epochs={update_epochs}",
            f"ppo.num_minibatches={num_minibatches}",
            "optim.lr=3e-4",
            "optim.final_lr=3e-4",
            "optim.warmup_steps=0",
            f"optim.decay_steps={updates * update_epochs * num_minibatches + 1}",
            "optim.weight_decay=0.0",
            "optim.max_grad_norm=0.5",
        ],
    )
    agent, env = MLPActorCritic(jax.random.key(0)), CartPoleEnv(gym_env)
    init_fn, step_fn = make_ppo(agent, env, env_params, config)

    @eqx.filter_jit
    def train(key):
        state, metrics = scan_steps(step_fn, init_fn(key), updates)
        return state.step, metrics["return"]

    jax.block_until_ready(train(jax.random.key(0)))
    final_returns = []

    def run(seed):
        start = time.perf_counter()
        _, returns = jax.block_until_ready(train(jax.random.key(seed)))
        final_returns.append(float(returns[-1]))
        return time.perf_counter() - start

    return run, final_returns, update_only_runner(agent, env, env_params, config, init_fn, updates)


def update_only_runner(agent, env, env_params, config, init_fn, updates):
    """sima2's PPO update alone (epochs x minibatches on one fixed trajectory), `updates` times in one jit:
    the ceiling on env-steps/s with these network and batch settings if rollouts cost nothing."""
    optimizer, spec = make_optimizer(config.optim), trainable_spec(agent, None)
    state = init_fn(jax.random.key(0))
    _, trajectory, start_carry, last_value = collect_rollout(
        state.model, env, env_params, state.rollout, jax.random.key(1), config.ppo.rollout_length
    )

    def one_update(state, batch=None):
        return ppo_update(
            state, trajectory, start_carry, last_value, optimizer=optimizer, spec=spec, config=config.ppo
        )

    @eqx.filter_jit
    def update_only(state):
        return scan_steps(one_update, state, updates)[1]["loss"]

    jax.block_until_ready(update_only(state))

    def run(seed):
        start = time.perf_counter()
        jax.block_until_ready(update_only(state))
        return time.perf_counter() - start

    return run


def rejax_runner(num_envs, num_steps, num_epochs, num_minibatches, updates):
    from gymnax.environments.classic_control import CartPole
    from rejax import PPO

    class FiveTupleCartPole(CartPole):
        """rejax 0.1.3 expects the older 5-tuple gymnax step; gymnax 1.0 splits done in two."""

        def step(self, key, state, action, params=None):
            obs, state, reward, terminated, truncated, info = super().step(key, state, action, params)
            return obs, state, reward, terminated | truncated, info

    algo = PPO.create(
        env=FiveTupleCartPole(),
        num_envs=num_envs,
        num_steps=num_steps,
        num_epochs=num_epochs,
        num_minibatches=num_minibatches,
        total_timesteps=updates * num_envs * num_steps,
        eval_freq=updates * num_envs * num_steps,
        learning_rate=3e-4,
        max_grad_norm=0.5,
        agent_kwargs={"activation": "swish", "hidden_layer_sizes": (64, 64)},
        skip_initial_evaluation=True,
    )
    # rejax evaluates 128 episodes after every `eval_freq` steps inside `train`; time training alone.
    algo = algo.replace(eval_callback=lambda algo, ts, rng: ())
    train = jax.jit(algo.train)
    jax.block_until_ready(train(jax.random.key(0)))

    def run(seed):
        start = time.perf_counter()
        jax.block_until_ready(train(jax.random.key(seed)))
        return time.perf_counter() - start

    return run


def sb3_runner(num_envs, num_steps, num_epochs, num_minibatches, updates):
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("CartPole-v1", n_envs=num_envs, seed=0)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=num_steps,
        batch_size=num_envs * num_steps // num_minibatches,
        n_epochs=num_epochs,
        learning_rate=3e-4,
        max_grad_norm=0.5,
        ent_coef=0.01,
        clip_range_vf=0.2,
        device="cpu",
        seed=0,
        policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.SiLU},
    )
    model.learn(total_timesteps=num_envs * num_steps)  # warm-up update

    def run(seed):
        del seed
        start = time.perf_counter()
        model.learn(total_timesteps=updates * num_envs * num_steps, reset_num_timesteps=False)
        return time.perf_counter() - start

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--rollout-length", type=int, default=64, help="steps per world per update")
    parser.add_argument("--update-epochs", type=int, default=4)
    parser.add_argument("--num-minibatches", type=int, default=4)
    parser.add_argument("--updates", type=int, default=32)
    parser.add_argument("--sb3-updates", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed runs; the best counts")
    args = parser.parse_args()
    shape = (args.num_envs, args.rollout_length, args.update_epochs, args.num_minibatches)
    print(
        f"PPO on CartPole-v1: {args.num_envs} envs x {args.rollout_length} steps, {args.update_epochs} epochs x "
        f"{args.num_minibatches} minibatches, MLP (64, 64) SiLU actor/critic, {jax.devices()[0].platform}, "
        f"best of {args.repeats}"
    )
    sima2_run, final_returns, update_run = sima2_runner(*shape, args.updates)
    runs = {
        "sima2": (sima2_run, args.updates),
        "update": (update_run, args.updates),
        "rejax": (rejax_runner(*shape, args.updates), args.updates),
        "SB3": (sb3_runner(*shape, args.sb3_updates), args.sb3_updates),
    }
    best = {name: float("inf") for name in runs}
    for repeat in range(args.repeats):
        for name, (run, _) in runs.items():
            best[name] = min(best[name], run(repeat + 1))
    rate = {name: updates * args.num_envs * args.rollout_length / best[name] for name, (_, updates) in runs.items()}
    print(
        f"sima2  : {rate['sima2']:12,.0f} env-steps/s  (mean episode return after {args.updates} updates: "
        f"{sum(final_returns) / len(final_returns):.1f}, averaged over the timed runs)"
    )
    print(
        f"  sima2 update alone (same trajectory, no rollout): {rate['update']:12,.0f} env-steps/s, the ceiling "
        f"with free rollouts = {rate['update'] / rate['SB3']:.1f}x SB3"
    )
    print(f"rejax  : {rate['rejax']:12,.0f} env-steps/s")
    print(f"SB3    : {rate['SB3']:12,.0f} env-steps/s")
    print(f"ratio sima2/rejax: {rate['sima2'] / rate['rejax']:.2f}x (goal >= 1.0x)")
    print(f"ratio sima2/SB3  : {rate['sima2'] / rate['SB3']:.1f}x (goal >= 20x)")


if __name__ == "__main__":
    main()

"""Tests of PPO: GAE, learning on a small functional world (recurrent and memoryless minibatching),
sequence replay, vmapped seeds, the gymnasium host loop and evaluation."""

import equinox as eqx
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _training_standins import GRUAgent, LineParams, LineWorld, MLPAgent

from sima2.contract import ActOutput
from sima2.training import (
    EvalConfig,
    HostRollout,
    TrainConfig,
    apply_overrides,
    compute_gae,
    evaluate,
    evaluate_splits,
    make_host_ppo,
    make_ppo,
    vmap_seeds,
)
from sima2.training.ppo import collect_rollout, random_permutation
from sima2.training.recurrent import evaluate_sequences
from sima2.training.rollout import AgentActor, init_rollout

SMALL = [
    "ppo.num_envs=16",
    "ppo.rollout_length=16",
    "ppo.num_minibatches=2",
    "ppo.update_epochs=2",
    "optim.lr=3e-3",
    "optim.warmup_steps=1",
    "optim.decay_steps=100",
]


def test_gae_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    reward, value = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)
    done = rng.random((6, 3)) < 0.3
    last = rng.normal(size=3).astype(np.float32)
    adv, ret = compute_gae(jnp.asarray(reward), jnp.asarray(value), jnp.asarray(done), jnp.asarray(last), 0.9, 0.8)
    expected = np.zeros((6, 3), np.float32)
    for e in range(3):
        running, next_value = 0.0, last[e]
        for t in reversed(range(6)):
            nd = 1.0 - done[t, e]
            delta = reward[t, e] + 0.9 * next_value * nd - value[t, e]
            running = delta + 0.9 * 0.8 * nd * running
            expected[t, e], next_value = running, value[t, e]
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, expected + value, rtol=1e-5, atol=1e-6)


class _MemorylessAgent(MLPAgent):
    """MLPAgent with an empty carry: PPO minibatches its (time, world) steps as one flat batch."""

    def initial_carry(self):
        return jnp.zeros((0,), jnp.float32)


@pytest.mark.parametrize("n", [1, 2, 5, 1000, 4096, 70_000])
def test_random_permutation_is_a_permutation(n):
    order = np.asarray(jax.jit(random_permutation, static_argnums=1)(jax.random.key(n), n))
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    if n >= 1000:  # not the identity, nor a rotation of it
        assert np.mean(np.diff(order) == 1) < 0.01


def test_random_permutation_is_uniform():
    """Every ordering of 4 items equally likely, every item equally likely in every position (chi-square
    at p = 0.001 over 24,000 draws), and different keys give independent orders."""
    draws = 24_000
    orders = np.asarray(jax.vmap(lambda k: random_permutation(k, 4))(jax.random.split(jax.random.key(0), draws)))
    codes = orders @ np.array([64, 16, 4, 1])
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == 24
    expected = draws / 24
    assert ((counts - expected) ** 2 / expected).sum() < 49.7  # chi-square, 23 dof, p = 0.001
    for position in range(4):
        per_item = np.bincount(orders[:, position], minlength=4)
        assert ((per_item - draws / 4) ** 2 / (draws / 4)).sum() < 16.3  # 3 dof, p = 0.001
    # Large n: the item at each position is uniform too (first position over 2,000 keys of a 4096-shuffle).
    firsts = np.asarray(
        jax.vmap(lambda k: random_permutation(k, 4096)[0])(jax.random.split(jax.random.key(1), 2000))
    )
    per_bin = np.bincount(firsts // 512, minlength=8)
    assert ((per_bin - 250) ** 2 / 250).sum() < 24.3  # 7 dof, p = 0.001


@pytest.mark.parametrize("agent_type", [MLPAgent, _MemorylessAgent])
def test_ppo_learns_the_line_world(agent_type):
    init, step = make_ppo(
        agent_type(jax.random.key(0)), LineWorld(), LineParams(), apply_overrides(TrainConfig(), SMALL)
    )
    step = eqx.filter_jit(step)
    state = init(jax.random.key(1))
    state, first = step(state, None)
    for _ in range(30):
        state, metrics = step(state, None)
    assert float(first["success_rate"]) < 0.7
    assert float(metrics["success_rate"]) > 0.9
    assert float(metrics["episode_length"]) < float(first["episode_length"])
    assert {"reward_goal", "reward_invalid", "invalid_move_rate", "entropy", "value_loss"} <= set(metrics)


def test_expert_distillation_pulls_the_policy_to_the_expert_and_decays():
    def run(coef: float) -> list[dict]:
        overrides = [*SMALL, f"ppo.expert_coef={coef}", "ppo.expert_decay_updates=4", "ppo.ent_coef=0.0"]
        init, step = make_ppo(
            MLPAgent(jax.random.key(0)), LineWorld(), LineParams(), apply_overrides(TrainConfig(), overrides)
        )
        step, state, history = eqx.filter_jit(step), init(jax.random.key(1)), []
        for _ in range(5):
            state, metrics = step(state, None)
            history.append(metrics)
        return history

    history = run(5.0)
    assert [float(m["expert_coef"]) for m in history] == [5.0, 3.75, 2.5, 1.25, 0.0]
    assert float(history[3]["expert_loss"]) < 0.7 * float(history[0]["expert_loss"])
    assert "expert_loss" not in run(0.0)[0]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])  # AdamW's decay must not move frozen arrays either
def test_critic_warmup_trains_only_the_value_function_first(weight_decay):
    overrides = [*SMALL, "ppo.critic_warmup_updates=2", f"optim.weight_decay={weight_decay}"]
    init, step = make_ppo(MLPAgent(jax.random.key(0)), LineWorld(), LineParams(),
                          apply_overrides(TrainConfig(), overrides))
    step = eqx.filter_jit(step)
    state = init(jax.random.key(1))
    before = state.model
    for _ in range(2):
        state, metrics = step(state, None)
    # Only the critic's own head moved: neither the policy head nor the shared torso the policy reads.
    np.testing.assert_array_equal(state.model.policy.weight, before.policy.weight)
    np.testing.assert_array_equal(state.model.torso.layers[0].weight, before.torso.layers[0].weight)
    assert not np.allclose(state.model.value.weight, before.value.weight)
    state, _ = step(state, None)
    assert not np.allclose(state.model.policy.weight, before.policy.weight)
    assert not np.allclose(state.model.torso.layers[0].weight, before.torso.layers[0].weight)


@pytest.mark.parametrize("agent_type", [GRUAgent, _MemorylessAgent])
def test_replay_reproduces_rollout_log_probs_and_values(agent_type):
    agent = agent_type(jax.random.key(0))
    rollout = init_rollout(AgentActor(agent), LineWorld(), LineParams(), jax.random.key(1), 4)
    # Two rollouts so the second starts mid-episode with a non-trivial carry.
    rollout, _, _, _ = collect_rollout(agent, LineWorld(), LineParams(), rollout, jax.random.key(2), 5)
    _, trajectory, start_carry, _ = collect_rollout(agent, LineWorld(), LineParams(), rollout, jax.random.key(3), 12)
    assert bool(trajectory.first[1:].any())  # episodes restart inside the sequence
    if agent_type is GRUAgent:
        assert float(jnp.abs(start_carry).max()) > 0
    log_prob, _, value = evaluate_sequences(agent, trajectory.obs, trajectory.action, trajectory.first, start_carry)
    np.testing.assert_allclose(log_prob, trajectory.agent.log_prob, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value, trajectory.agent.value, rtol=1e-5, atol=1e-5)


def test_replay_of_the_agent_in_the_built_in_world_reproduces_its_rollout():
    """The agent's replay encodes all observations first and runs only its memory over time
    (`observation_features` / `evaluate_features`): it must score exactly what acting scored."""
    import sima2.envs as envs
    from sima2.policy import Agent

    env, params = envs.make("sima2/GoTo-v0")
    agent = Agent.from_preset("tiny", env.spec, key=jax.random.key(0))
    collect = eqx.filter_jit(collect_rollout)
    rollout = eqx.filter_jit(init_rollout)(AgentActor(agent), env, params, jax.random.key(1), 3)
    rollout, _, _, _ = collect(agent, env, params, rollout, jax.random.key(2), 8)
    _, trajectory, start_carry, _ = collect(agent, env, params, rollout, jax.random.key(3), 8)
    assert float(jnp.abs(start_carry).max()) > 0  # the replay starts mid-episode, from a remembered state
    log_prob, _, value = eqx.filter_jit(evaluate_sequences)(
        agent, trajectory.obs, trajectory.action, trajectory.first, start_carry
    )
    np.testing.assert_allclose(log_prob, trajectory.agent.log_prob, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(value, trajectory.agent.value, rtol=1e-4, atol=1e-4)


def test_vmapped_seeds_match_separate_runs():
    config = apply_overrides(TrainConfig(), [*SMALL, "ppo.num_envs=4", "ppo.rollout_length=4"])
    init, step = make_ppo(MLPAgent(jax.random.key(0)), LineWorld(), LineParams(), config)
    key = jax.random.key(5)
    states, multi_step = vmap_seeds(init, step, key, 3)
    states, _ = eqx.filter_jit(multi_step)(states, None)
    single, _ = eqx.filter_jit(step)(init(jax.random.split(key, 3)[2]), None)
    np.testing.assert_allclose(states.model.policy.weight[2], single.model.policy.weight, rtol=1e-5, atol=1e-6)
    assert not np.allclose(states.model.policy.weight[0], states.model.policy.weight[1])


def test_host_loop_trains_on_gymnasium_cartpole():
    vector_env = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")

    def to_obs(obs):
        n = obs.shape[0]
        return {
            "image": np.zeros((n, 4, 4, 3), np.uint8),
            "instruction": np.zeros((n, 1), np.int32),
            "proprio": np.asarray(obs, np.float32),
        }

    agent = MLPAgent(jax.random.key(0), in_size=4 * 4 * 3 + 2 + 4)
    rollout = HostRollout(agent, vector_env, 16, to_env_action=lambda a: a[:, 0] % 2, to_obs=to_obs, seed=0)
    config = apply_overrides(TrainConfig(), ["ppo.num_envs=4", "ppo.num_minibatches=2", "ppo.update_epochs=1"])
    init, step = make_host_ppo(agent, rollout, config)
    state = init(jax.random.key(1))
    for _ in range(3):
        state, metrics = step(state, None)
    assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))
    assert float(metrics["episodes"]) >= 0
    assert not np.array_equal(state.model.policy.weight, agent.policy.weight)
    vector_env.close()


class _ExpertAgent(MLPAgent):
    """Walks toward the instructed end: succeeds in the optimal number of steps."""

    def act(self, key, obs, carry, *, deterministic=False, instruction=None):
        action = jnp.stack([obs["instruction"][0], jnp.int32(0), jnp.int32(0)]).astype(jnp.int32)
        zero = jnp.float32(0.0)
        return action, carry, ActOutput(log_prob=zero, value=zero, entropy=zero)


class _ArrayLineParams(eqx.Module):
    """LineParams held as arrays, as real env params are: new values must not mean a new program."""

    size: jax.Array
    max_steps: jax.Array


def test_evaluate_reports_success_and_efficiency():
    config = EvalConfig(num_envs=8, num_episodes=16, max_steps=20)
    expert = evaluate(_ExpertAgent(jax.random.key(0)), LineWorld(), LineParams(), jax.random.key(1), config)
    assert expert["success_rate"] == 1.0 and expert["navigation_efficiency"] == 1.0
    assert expert["episode_length"] == 2.0 and expert["episodes"] == 16
    assert expert["return"] == 1.0


def test_greedy_evaluation_takes_the_most_likely_action():
    calls = []

    class Recording(MLPAgent):
        def act(self, key, obs, carry, *, deterministic=False, instruction=None):
            calls.append(deterministic)  # traced once per program: records which mode was compiled
            return super().act(key, obs, carry, deterministic=deterministic)

    agent = Recording(jax.random.key(0))
    greedy = evaluate(agent, LineWorld(), LineParams(), jax.random.key(1), EvalConfig(8, 8, 20, deterministic=True))
    evaluate(agent, LineWorld(), LineParams(), jax.random.key(1), EvalConfig(8, 8, 20))
    assert calls == [True, False]
    # Greedy actions do not depend on the key.
    again = evaluate(agent, LineWorld(), LineParams(), jax.random.key(7), EvalConfig(8, 8, 20, deterministic=True))
    assert greedy["episode_length"] == again["episode_length"] and greedy["return"] == again["return"]


def test_evaluate_splits_share_one_compiled_program():
    traces = []

    class CountingAgent(MLPAgent):
        def act(self, key, obs, carry, *, deterministic=False, instruction=None):
            traces.append(None)  # a Python side effect: runs while tracing, never in the compiled program
            return super().act(key, obs, carry, deterministic=deterministic)

    splits = {
        "train": _ArrayLineParams(jnp.int32(5), jnp.int32(8)),
        "heldout": _ArrayLineParams(jnp.int32(7), jnp.int32(10)),
    }
    config = EvalConfig(num_envs=8, num_episodes=16, max_steps=20)
    agent = CountingAgent(jax.random.key(0))
    results = evaluate_splits(agent, LineWorld(), {"train": splits["train"]}, jax.random.key(2), config)
    traced_once = len(traces)
    assert traced_once > 0
    results.update(evaluate_splits(agent, LineWorld(), splits, jax.random.key(2), config))
    assert len(traces) == traced_once  # the second split (and a repeat of the first) reused the program
    assert set(results) == {"train", "heldout"}
    assert results["train"]["success_rate"] < 1.0 and results["heldout"]["episodes_per_s"] > 0
    assert results["heldout"].get("navigation_efficiency", 0.0) <= 1.0
    # The held-out params really reached the compiled program: a longer line gives longer episodes.
    assert results["heldout"]["episode_length"] > results["train"]["episode_length"]

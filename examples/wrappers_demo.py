"""Compose the built-in world with the reward shaper, rollback wrapper and safety filter, and run it batched.

    python examples/wrappers_demo.py

A random policy that respects ``obs["action_mask"]`` drives 8 worlds for 200 steps inside one `jit`
(`vmap` over worlds, `lax.scan` over time); the script prints the shaped reward terms, rollbacks,
fallback steps and blocked actions.
"""

import jax
import jax.numpy as jnp
import numpy as np

import sima2.envs
from sima2.envs.wrappers import RewardShaper, RollbackWrapper, SafetyFilter

NUM_WORLDS, NUM_STEPS = 8, 200

world, params = sima2.envs.make("sima2/GoTo-v0")
nvec = world.spec.action.nvec


DROP = sima2.envs.KEY_NAMES.index("drop")


def is_destructive(state, action, params):
    # Dropping what the agent carries (a key it still needs, say) is the irreversible move we block here.
    return (action[0] == DROP) & (state.carrying >= 0)


env = SafetyFilter(
    RollbackWrapper(
        RewardShaper(world, success=1.0, invalid_move=-0.1, new_region=0.5, potential=0.1),
        timeout_s=10.0,
        penalty=1.0,
        # Simulated time comes from the world's info.elapsed_ticks (each action is held 6-30 ticks at 60 Hz).
        fallback_steps=20,  # the world's expert navigates for 20 steps after a rollback
    ),
    is_destructive=is_destructive,
)


def masked_random_action(key, mask):
    """Sample each factor uniformly among the values the mask allows."""
    keys = jax.random.split(key, len(nvec))
    splits = np.cumsum(nvec)[:-1]
    logits = [jnp.where(m, 0.0, -jnp.inf) for m in jnp.split(mask, splits)]
    return jnp.stack([jax.random.categorical(k, lg) for k, lg in zip(keys, logits, strict=True)])


@jax.jit
def run(key):
    reset_keys = jax.random.split(key, NUM_WORLDS)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, params)

    def body(carry, step_key):
        obs, state = carry
        action_key, env_key = jax.random.split(step_key)
        actions = jax.vmap(masked_random_action)(jax.random.split(action_key, NUM_WORLDS), obs["action_mask"])
        step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
        obs, state, reward, done, info = step(jax.random.split(env_key, NUM_WORLDS), state, actions, params)
        return (obs, state), (reward, info)

    _, (rewards, infos) = jax.lax.scan(body, (obs, state), jax.random.split(key, NUM_STEPS))
    return rewards, infos


rewards, infos = run(jax.random.key(0))
print(f"mean shaped reward per step: {float(rewards.mean()):+.4f}")
for term in ("reward_success", "reward_invalid_move", "reward_exploration", "reward_potential"):
    print(f"  {term:22s} {float(infos.extras[term].sum()):+9.2f} (total over {NUM_WORLDS} worlds)")
print(f"rollbacks: {int(infos.world_rollback.sum())}, fallback steps: {int(infos.fallback_step.sum())}")
print(f"blocked actions: {int(infos.action_blocked.sum())} (the mask keeps the policy from choosing them)")

"""Small stand-ins for tests of sima2.training: a functional env and tiny MLP/GRU agents.

They implement the contract (`sima2.contract.Env` and `AbstractAgent`), so the training utilities are
exercised without the real world.
"""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from sima2.contract import (
    AbstractAgent,
    ActionSpec,
    ActOutput,
    ArraySpec,
    Env,
    EnvSpec,
    ObservationSpec,
    StepInfo,
)
from sima2.interop.mapping import named_arrays
from sima2.interop.pretrained import write_safetensors

NVEC = (4, 3, 2)


def save_pretrained(agent, directory):
    """What a stage writes to `out/final`: every array under its dotted path, through sima2's one writer."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(named_arrays(agent), folder / "model.safetensors", {"format": "sima2-test-agent"})
    return folder


class LineParams(eqx.Module):
    size: int = eqx.field(static=True, default=5)
    max_steps: int = eqx.field(static=True, default=8)


class LineState(eqx.Module):
    pos: jax.Array
    goal: jax.Array
    side: jax.Array
    t: jax.Array


class LineWorld(Env):
    """Walk left or right along a line to the end named by the one-token instruction (0 left, 1 right)."""

    image_size: int = eqx.field(static=True, default=4)
    action_nvec: tuple = eqx.field(static=True, default=NVEC)

    @property
    def spec(self):
        return EnvSpec(
            observation=ObservationSpec(
                image=ArraySpec((self.image_size, self.image_size, 3), "uint8"),
                instruction=ArraySpec((1,), "int32"),
                proprio=ArraySpec((2,), "float32"),
                vocab_size=2,
            ),
            action=ActionSpec(self.action_nvec),
            max_instruction_words=1,
        )

    def default_params(self):
        return LineParams()

    def observe(self, state, params):
        image = jnp.zeros((self.image_size, self.image_size, 3), jnp.uint8)
        image = image.at[0, jnp.minimum(state.pos, self.image_size - 1), 0].set(255)
        proprio = jnp.stack([state.pos / params.size, state.t / params.max_steps]).astype(jnp.float32)
        return {"image": image, "instruction": state.side[None].astype(jnp.int32), "proprio": proprio}

    def init(self, key, params):
        side = jax.random.bernoulli(key).astype(jnp.int32)
        return LineState(pos=jnp.int32(params.size // 2), goal=side * (params.size - 1), side=side, t=jnp.int32(0))

    def transition(self, key, state, action, params):
        move = jnp.where(action[0] == 0, -1, jnp.where(action[0] == 1, 1, 0))
        target = state.pos + move
        invalid = (target < 0) | (target >= params.size) | (move == 0)
        pos = jnp.clip(target, 0, params.size - 1).astype(jnp.int32)
        t = state.t + 1
        success = pos == state.goal
        timeout = (t >= params.max_steps) & ~success
        reward_goal = success.astype(jnp.float32)
        reward_invalid = -0.05 * invalid.astype(jnp.float32)
        info = StepInfo(
            terminated=success,
            truncated=timeout,
            success=success,
            invalid_move=invalid,
            agent_pos=jnp.stack([pos, 0]).astype(jnp.float32),
            distance_to_goal=jnp.abs(pos - state.goal).astype(jnp.float32),
            optimal_path_length=jnp.float32(params.size // 2),
            path_length=t.astype(jnp.float32),
            extras={"reward_goal": reward_goal, "reward_invalid": reward_invalid},
        )
        stepped = LineState(pos=pos, goal=state.goal, side=state.side, t=t)
        return stepped, reward_goal + reward_invalid, info

    def expert_action(self, state, params):
        key = jnp.where(state.goal < state.pos, 0, 1)
        return jnp.stack([key, jnp.int32(1), jnp.int32(0)]).astype(jnp.int32)


def _features(obs):
    image = obs["image"].astype(jnp.float32).reshape(-1) / 255.0
    instruction = jax.nn.one_hot(obs["instruction"][0], 2)
    return jnp.concatenate([image, instruction, obs["proprio"]])


def _factored(logits, obs, action=None, key=None, deterministic=False):
    if "action_mask" in obs:
        logits = jnp.where(obs["action_mask"], logits, -1e9)
    splits = [4, 7]
    parts = jnp.split(logits, splits)
    if action is None and deterministic:
        action = jnp.stack([jnp.argmax(p) for p in parts])
    elif action is None:
        keys = jax.random.split(key, len(parts))
        action = jnp.stack([jax.random.categorical(k, p) for k, p in zip(keys, parts, strict=True)])
    log_probs = [jax.nn.log_softmax(p) for p in parts]
    log_prob = sum(lp[action[..., i]] for i, lp in enumerate(log_probs))  # one action or a stack of them
    entropy = sum(-(jnp.exp(lp) * lp).sum() for lp in log_probs)
    return action.astype(jnp.int32), log_prob, entropy


class _StandInAgent(AbstractAgent):
    """The parts of the agent contract every stand-in shares: features are the observation itself."""

    def observation_features(self, obs, instruction=None):
        return obs

    def instruction_features(self, instruction):
        return None  # reads the instruction with the rest of the observation, at every step

    def instruction_features_frozen(self):
        return False

    def trainable_filter(self):
        return jax.tree.map(eqx.is_inexact_array, self)

    def save_pretrained(self, save_directory):
        return save_pretrained(self, save_directory)


class MLPAgent(_StandInAgent):
    torso: eqx.nn.MLP
    policy: eqx.nn.Linear
    value: eqx.nn.Linear

    def __init__(self, key, in_size=4 * 4 * 3 + 4, width=32):
        k1, k2, k3 = jax.random.split(key, 3)
        self.torso = eqx.nn.MLP(in_size, width, width, 1, activation=jnp.tanh, key=k1)
        self.policy = eqx.nn.Linear(width, sum(NVEC), key=k2)
        self.value = eqx.nn.Linear(width, "scalar", key=k3)

    def initial_carry(self):
        return jnp.zeros((1,), jnp.float32)

    def _heads(self, obs):
        h = jnp.tanh(self.torso(_features(obs)))
        return self.policy(h), self.value(h)

    def critic_filter(self):
        critic = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda m: m.value, critic, jax.tree.map(eqx.is_inexact_array, self.value))

    def act(self, key, obs, carry, *, deterministic=False, instruction=None):
        logits, value = self._heads(obs)
        action, log_prob, entropy = _factored(logits, obs, key=key, deterministic=deterministic)
        return action, carry, ActOutput(log_prob=log_prob, value=value, entropy=entropy)

    def evaluate_features(self, obs, carry, action):
        logits, value = self._heads(obs)
        _, log_prob, entropy = _factored(logits, obs, action=action)
        return log_prob, entropy, value, carry


class MemorylessMLPAgent(MLPAgent):
    """`MLPAgent` with an empty carry, as the contract spells "no memory": behaviour cloning may train it on
    single rows (`train_bc` refuses that for an agent with a memory)."""

    def initial_carry(self):
        return jnp.zeros((0,), jnp.float32)


class GRUAgent(_StandInAgent):
    encoder: eqx.nn.Linear
    cell: eqx.nn.GRUCell
    policy: eqx.nn.Linear
    value: eqx.nn.Linear
    hidden: int = eqx.field(static=True)

    def __init__(self, key, in_size=4 * 4 * 3 + 4, hidden=16):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.encoder = eqx.nn.Linear(in_size, hidden, key=k1)
        self.cell = eqx.nn.GRUCell(hidden, hidden, key=k2)
        self.policy = eqx.nn.Linear(hidden, sum(NVEC), key=k3)
        self.value = eqx.nn.Linear(hidden, "scalar", key=k4)
        self.hidden = hidden

    def initial_carry(self):
        return jnp.zeros((self.hidden,), jnp.float32)

    def _core(self, obs, carry):
        carry = self.cell(jnp.tanh(self.encoder(_features(obs))), carry)
        return self.policy(carry), self.value(carry), carry

    def critic_filter(self):
        critic = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda m: m.value, critic, jax.tree.map(eqx.is_inexact_array, self.value))

    def act(self, key, obs, carry, *, deterministic=False, instruction=None):
        logits, value, carry = self._core(obs, carry)
        action, log_prob, entropy = _factored(logits, obs, key=key, deterministic=deterministic)
        return action, carry, ActOutput(log_prob=log_prob, value=value, entropy=entropy)

    def evaluate_features(self, obs, carry, action):
        logits, value, carry = self._core(obs, carry)
        _, log_prob, entropy = _factored(logits, obs, action=action)
        return log_prob, entropy, value, carry

    def save_pretrained(self, directory):
        return save_pretrained(self, directory)


def append_row(rows: dict[str, list], *, image, instruction: str, instruction_ids, proprio, action, episode: int,
               step: int, touch=()) -> None:
    """Add one demonstration row (the `FEATURES` columns) to `rows`: no plan, subgoal 0 not done."""
    values = dict(image=image, instruction=instruction, instruction_ids=list(instruction_ids), proprio=list(proprio),
                  touch=list(touch), action=list(action), episode_id=episode, step_id=step, plan=[],
                  subgoal_index=0, subgoal_done=False)
    for name, value in values.items():
        rows[name].append(value)


"""Tests for the functional wrappers (RewardShaper, RollbackWrapper, SafetyFilter) on a toy grid world.

The toy world implements the contract (`sima2.contract.Env`): init / observe / transition (reset and step
with auto-reset come from the base), (key, look, duration) actions, a typed `StepInfo` with
`elapsed_ticks`, and an expert_action. It reports the action it executed in ``info.extras`` ("action_key",
"action_look", "action_duration"), so tests see what actually reached the world through the wrappers.
"""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jaxtyping import Array, Bool, Int, PRNGKeyArray

from sima2.contract import ActionSpec, ArraySpec, Env, EnvSpec, ObservationSpec, StepInfo
from sima2.envs.wrappers import (
    RewardShaper,
    RollbackWrapper,
    SafetyFilter,
    unwrap_state,
)

SIZE = 6
NOOP, RIGHT, LEFT, UP, DOWN, INTERACT = range(6)
MOVES = jnp.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1], [0, 0]], jnp.int32)
TICKS_PER_DURATION = 15  # 0.25 s at 60 Hz


class ToyParams(eqx.Module):
    max_steps: Int[Array, ""]


class ToyState(eqx.Module):
    pos: Int[Array, "2"]
    goal: Int[Array, "2"]
    t: Int[Array, ""]


class ToyWorld(Env):
    """SIZE x SIZE room: walk to the goal; bumping the border or interacting is an invalid move.

    With `report_ticks` False the world does not report `elapsed_ticks` (the StepInfo default, 1 tick)."""

    action_nvec: tuple[int, int, int] = eqx.field(static=True, default=(6, 2, 2))
    report_ticks: bool = eqx.field(static=True, default=True)

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(
            observation=ObservationSpec(
                image=ArraySpec((SIZE, SIZE, 3), "uint8"),
                instruction=ArraySpec((3,), "int32"),
                proprio=ArraySpec((2,), "float32"),
                vocab_size=SIZE + 2,
            ),
            action=ActionSpec(self.action_nvec),
            max_instruction_words=3,
        )

    def default_params(self) -> ToyParams:
        return PARAMS

    def init(self, key: PRNGKeyArray, params: ToyParams) -> ToyState:
        pos_key, goal_key = jax.random.split(key)
        pos = jax.random.randint(pos_key, (2,), 0, SIZE)
        offset = jax.random.randint(goal_key, (2,), 1, SIZE)
        return ToyState(pos=pos, goal=(pos + offset) % SIZE, t=jnp.zeros((), jnp.int32))

    def observe(self, state: ToyState, params: ToyParams) -> dict:
        image = jnp.zeros((SIZE, SIZE, 3), jnp.uint8)
        image = image.at[state.goal[1], state.goal[0], 1].set(255).at[state.pos[1], state.pos[0], 0].set(255)
        instruction = jnp.concatenate([jnp.array([1], jnp.int32), state.goal.astype(jnp.int32) + 2])
        return {"image": image, "instruction": instruction, "proprio": state.pos.astype(jnp.float32) / SIZE}

    def transition(self, key: PRNGKeyArray, state: ToyState, action: Int[Array, "3"], params: ToyParams):
        target = state.pos + MOVES[action[0]]
        bumped = jnp.any((target < 0) | (target >= SIZE))
        pos = jnp.where(bumped, state.pos, target)
        success = jnp.all(pos == state.goal)
        t = state.t + 1
        timeout = (t >= params.max_steps) & ~success
        ticks = {"elapsed_ticks": (action[2] + 1) * TICKS_PER_DURATION} if self.report_ticks else {}
        info = StepInfo(
            terminated=success,
            truncated=timeout,
            success=success,
            invalid_move=bumped | (action[0] == INTERACT),
            agent_pos=pos.astype(jnp.float32) + 0.5,
            distance_to_goal=jnp.sum(jnp.abs(pos - state.goal)).astype(jnp.float32),
            extras={"action_key": action[0], "action_look": action[1], "action_duration": action[2]},
            **ticks,
        )
        return ToyState(pos=pos, goal=state.goal, t=t), success.astype(jnp.float32), info

    def expert_action(self, state: ToyState, params: ToyParams) -> Int[Array, "3"]:
        delta = state.goal - state.pos
        key = jnp.where(delta[0] > 0, RIGHT, jnp.where(delta[0] < 0, LEFT, jnp.where(delta[1] > 0, UP, DOWN)))
        return jnp.array([key, 0, 0], jnp.int32)


def toy_probe(state: ToyState, params: ToyParams) -> tuple[Array, Array]:
    """(agent_pos, distance_to_goal) of a world state, as the RewardShaper's probe returns them."""
    return state.pos.astype(jnp.float32) + 0.5, jnp.sum(jnp.abs(state.pos - state.goal)).astype(jnp.float32)


def executed_action(info: StepInfo) -> np.ndarray:
    """The action the toy world executed, as it reports it in `info.extras` (last axis: factors)."""
    names = ("action_key", "action_look", "action_duration")
    return np.stack([np.asarray(info.extras[n]) for n in names], -1).astype(np.int32)


PARAMS = ToyParams(max_steps=jnp.asarray(12, jnp.int32))


def random_actions(key: PRNGKeyArray, n: int, nvec=(6, 2, 2)) -> Int[Array, "n 3"]:
    keys = jax.random.split(key, len(nvec))
    return jnp.stack([jax.random.randint(k, (n,), 0, m) for k, m in zip(keys, nvec, strict=True)], -1)


@eqx.filter_jit
def rollout(env, key: PRNGKeyArray, actions: Int[Array, "T 3"], params: ToyParams = PARAMS):
    """Reset, then step through `actions`; returns per-step (obs, state, reward, done, info)."""
    reset_key, step_key = jax.random.split(key)
    obs, state = env.reset(reset_key, params)

    def body(state, inputs):
        k, action = inputs
        obs, state, reward, done, info = env.step(k, state, action, params)
        return state, (obs, state, reward, done, info)

    keys = jax.random.split(step_key, actions.shape[0])
    _, trajectory = jax.lax.scan(body, state, (keys, actions))
    return (obs, state), trajectory


# ---------------------------------------------------------------------------------------------- RewardShaper


@settings(max_examples=15, deadline=None)
@given(
    coeffs=st.tuples(*[st.floats(-2.0, 2.0, width=32)] * 4),
    seed=st.integers(0, 2**16),
    with_probe=st.booleans(),
)
def test_reward_terms_add_up_to_the_coefficients(coeffs, seed, with_probe):
    success, invalid, new_region, potential = coeffs
    shaper = RewardShaper(
        ToyWorld(),
        success=success,
        invalid_move=invalid,
        new_region=new_region,
        potential=potential,
        gamma=0.9,
        region_size=2.0,
        num_regions=(3, 3),
        probe=toy_probe if with_probe else None,
    )
    actions = random_actions(jax.random.key(seed), 40)
    _, (_, _, reward, done, info) = rollout(shaper, jax.random.key(seed + 1), actions)
    terms = ["reward_success", "reward_invalid_move", "reward_exploration", "reward_potential", "reward_env"]
    extras = info.extras
    np.testing.assert_allclose(reward, sum(extras[t] for t in terms), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(extras["reward_success"], success * info.success, rtol=1e-6)
    np.testing.assert_allclose(extras["reward_invalid_move"], invalid * info.invalid_move, rtol=1e-6)
    assert set(np.unique(extras["reward_exploration"])) <= {0.0, np.float32(new_region)}
    np.testing.assert_array_equal(extras["reward_env"], 0.0)

    # Potential term: gamma * phi(s') - phi(s), phi = -potential * distance, phi = 0 at terminal states.
    distance = np.asarray(info.distance_to_goal)
    phi_next = np.where(info.success, 0.0, -potential * distance)
    for t in range(1, len(distance)):
        if done[t - 1]:
            continue  # first step of an episode: needs the start state's distance, checked below
        expected = 0.9 * phi_next[t] + potential * distance[t - 1]
        np.testing.assert_allclose(extras["reward_potential"][t], expected, rtol=1e-5, atol=1e-5)


def test_potential_term_on_first_step_uses_probe():
    shaper = RewardShaper(ToyWorld(), potential=1.0, gamma=1.0, probe=toy_probe)
    obs, state = shaper.reset(jax.random.key(0), PARAMS)
    _, start_distance = toy_probe(shaper.base_state(state), PARAMS)
    action = ToyWorld().expert_action(shaper.base_state(state), PARAMS)
    _, _, _, done, info = shaper.step(jax.random.key(1), state, action, PARAMS)
    expected = 0.0 if bool(info.success) else start_distance - info.distance_to_goal
    np.testing.assert_allclose(info.extras["reward_potential"], expected, atol=1e-6)
    assert bool(info.success) or float(info.extras["reward_potential"]) == pytest.approx(1.0)


def _episode_region_bonuses(info, done, start_regions, region_size):
    """Per episode, list of regions for which the exploration bonus was paid, recomputed in Python."""
    episodes, paid, seen = [], [], {start_regions[0]}
    for t in range(len(done)):
        region = tuple(int(c) for c in np.floor(np.asarray(info.agent_pos[t]) / region_size))
        if info.extras["reward_exploration"][t] > 0:
            paid.append(region)
            assert region not in seen, f"bonus paid for an already visited region {region} at step {t}"
        else:
            assert region in seen, f"no bonus for the first visit of region {region} at step {t}"
        seen.add(region)
        if done[t]:
            episodes.append(paid)
            paid, seen = [], {start_regions[t + 1]}
    return episodes


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_each_region_bonus_is_paid_once_per_episode(seed):
    region_size = 2.0
    shaper = RewardShaper(ToyWorld(), region_size=region_size, num_regions=(3, 3), probe=toy_probe)
    actions = random_actions(jax.random.key(seed), 60)
    (_, first_state), (_, states, _, done, info) = rollout(shaper, jax.random.key(seed), actions)
    positions = np.concatenate([first_state.inner.pos[None], states.inner.pos])  # state at start of each step
    start_regions = [tuple(int(c) for c in np.floor((p + 0.5) / region_size)) for p in positions]
    episodes = _episode_region_bonuses(info, np.asarray(done), start_regions, region_size)
    for paid in episodes:
        assert len(paid) == len(set(paid))


def test_without_probe_first_step_only_seeds_visit_grid():
    shaper = RewardShaper(ToyWorld(), num_regions=(3, 3))
    _, state = shaper.reset(jax.random.key(3), PARAMS)
    assert not bool(state.seeded)
    _, state, _, _, info = shaper.step(jax.random.key(4), state, jnp.array([RIGHT, 0, 0]), PARAMS)
    assert float(info.extras["reward_exploration"]) == 0.0 and float(info.extras["reward_potential"]) == 0.0
    assert bool(state.seeded) and int(state.visited.sum()) == 1


def test_env_reward_scale_keeps_world_reward():
    shaper = RewardShaper(ToyWorld(), success=0.0, invalid_move=0.0, new_region=0.0, env_reward=2.0)
    obs, state = shaper.reset(jax.random.key(0), PARAMS)
    total = 0.0
    for i in range(SIZE * 2):
        action = shaper.expert_action(state, PARAMS)
        obs, state, reward, done, info = shaper.step(jax.random.key(i), state, action, PARAMS)
        total += float(reward)
        if bool(done):
            break
    assert bool(info.success) and total == pytest.approx(2.0)


def test_bad_region_config_is_rejected():
    with pytest.raises(ValueError, match="region_size"):
        RewardShaper(ToyWorld(), region_size=0.0)
    with pytest.raises(ValueError, match="num_regions"):
        RewardShaper(ToyWorld(), num_regions=(0, 3))


def test_vmap_over_coefficient_settings_equals_loop():
    coefficients = jnp.array([0.5, 1.0, 2.0])
    actions = random_actions(jax.random.key(5), 20)

    def total(new_region):
        shaper = RewardShaper(ToyWorld(), new_region=new_region, probe=toy_probe, num_regions=(3, 3))
        _, (_, _, reward, _, _) = rollout(shaper, jax.random.key(6), actions)
        return reward

    batched = jax.vmap(total)(coefficients)
    looped = jnp.stack([total(c) for c in coefficients])
    np.testing.assert_allclose(batched, looped, rtol=1e-6)


# ------------------------------------------------------------------------------------------- RollbackWrapper


def _tree_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_rollback_restores_exact_snapshot_and_applies_penalty():
    env = RollbackWrapper(ToyWorld(), timeout_s=1.0, penalty=0.7, seconds_per_step=0.25, fallback_steps=0)
    params = ToyParams(max_steps=jnp.asarray(100, jnp.int32))
    obs, state = env.reset(jax.random.key(11), params)
    # One expert step makes progress: that state becomes the snapshot.
    obs, state, _, done, info = env.step(jax.random.key(0), state, env.expert_action(state, params), params)
    assert not bool(done) and not bool(info.world_rollback)
    good_obs, good_inner = obs, state.inner
    assert _tree_equal(state.snapshot, good_inner)
    # Stand still (and bump around): no progress for 4 * 0.25 s = timeout -> rollback on the 4th step.
    for i, key in enumerate([NOOP, INTERACT, NOOP, NOOP]):
        obs, state, reward, done, info = env.step(
            jax.random.key(i + 1), state, jnp.array([key, 0, 0]), params
        )
        assert bool(info.world_rollback) == (i == 3)
    assert _tree_equal(state.inner, good_inner) and _tree_equal(obs, good_obs)
    assert float(reward) == pytest.approx(-0.7)  # the world's reward was 0, minus the penalty
    assert int(state.rollback_count) == 1 and float(state.stalled_seconds) == 0.0


def test_rollback_hands_control_to_expert_for_fallback_steps():
    env = RollbackWrapper(ToyWorld(), timeout_s=0.5, seconds_per_step=0.25, fallback_steps=2)
    params = ToyParams(max_steps=jnp.asarray(100, jnp.int32))
    obs, state = env.reset(jax.random.key(2), params)
    noop = jnp.array([NOOP, 0, 0])
    _, state, _, _, info = env.step(jax.random.key(0), state, noop, params)  # first step: progress (inf -> d)
    _, state, _, _, info = env.step(jax.random.key(1), state, noop, params)
    _, state, _, _, info = env.step(jax.random.key(2), state, noop, params)
    assert bool(info.world_rollback)
    distances = []
    for i in range(2):
        _, state, _, done, info = env.step(jax.random.key(3 + i), state, noop, params)
        assert bool(info.fallback_step) and not bool(info.agent_acted)
        distances.append(float(info.distance_to_goal))
        if bool(done):
            break
    if not bool(done):
        assert distances[1] < distances[0]  # the expert moves toward the goal despite the no-op actions
        _, state, _, _, info = env.step(jax.random.key(9), state, noop, params)
        assert not bool(info.fallback_step) and bool(info.agent_acted)
        assert int(state.fallback_step_count) == 2


def test_rollback_reads_elapsed_ticks_when_no_seconds_per_step():
    env = RollbackWrapper(ToyWorld(), timeout_s=1.0, fallback_steps=0)
    params = ToyParams(max_steps=jnp.asarray(100, jnp.int32))
    _, state = env.reset(jax.random.key(0), params)
    _, state, *_ = env.step(
        jax.random.key(1), state, jnp.array([NOOP, 0, 1]), params
    )  # progress (first step)
    _, state, _, _, info = env.step(jax.random.key(2), state, jnp.array([NOOP, 0, 1]), params)
    assert int(info.elapsed_ticks) == 2 * TICKS_PER_DURATION
    assert float(state.stalled_seconds) == pytest.approx(2 * TICKS_PER_DURATION / 60.0)


def test_rollback_times_a_world_without_ticks_by_one_tick_per_step():
    """A world that does not report elapsed_ticks has the StepInfo default of 1 tick: the no-progress timer
    advances by 1 / tick_rate_hz per step, and the rollback fires when that reaches timeout_s."""
    env = RollbackWrapper(ToyWorld(report_ticks=False), timeout_s=1.0, tick_rate_hz=4.0, fallback_steps=0)
    params = ToyParams(max_steps=jnp.asarray(100, jnp.int32))
    _, state = env.reset(jax.random.key(0), params)
    _, state, _, _, info = env.step(jax.random.key(1), state, jnp.array([NOOP, 0, 2]), params)  # progress
    assert int(info.elapsed_ticks) == 1 and float(state.stalled_seconds) == 0.0
    for i in range(4):
        _, state, _, _, info = env.step(jax.random.key(2 + i), state, jnp.array([NOOP, 0, 2]), params)
        assert bool(info.world_rollback) == (i == 3)
        assert float(state.stalled_seconds) == pytest.approx(0.0 if i == 3 else (i + 1) * 0.25)


def test_rollback_on_invalid_state_and_reset_mode():
    def off_grid(state, params):
        return state.pos[0] >= SIZE - 1  # pretend the right column is an invalid state

    env = RollbackWrapper(
        ToyWorld(), seconds_per_step=0.1, is_invalid=off_grid, fallback_steps=0, rollback_to="reset"
    )
    params = ToyParams(max_steps=jnp.asarray(100, jnp.int32))
    _, state = env.reset(jax.random.key(0), params)
    for i in range(SIZE):
        _, state, reward, done, info = env.step(jax.random.key(i), state, jnp.array([RIGHT, 0, 0]), params)
        if bool(info.world_rollback):
            break
    assert bool(info.world_rollback) and bool(done) and bool(info.truncated) and not bool(info.terminated)
    assert float(reward) == pytest.approx(-1.0)
    assert int(state.rollback_count) == 0  # a new episode starts after a reset-mode rollback


def test_rollback_rejects_bad_config():
    with pytest.raises(ValueError, match="rollback_to"):
        RollbackWrapper(ToyWorld(), rollback_to="undo")
    with pytest.raises(ValueError, match="fallback_steps"):
        RollbackWrapper(ToyWorld(), fallback_steps=-1)


# ---------------------------------------------------------------------------------------------- SafetyFilter


class TableParams(ToyParams):
    blocked: Bool[Array, "2 6 2 2"]


def table_predicate(state: ToyState, action: Int[Array, "3"], params: TableParams) -> Bool[Array, ""]:
    """Destructive iff params.blocked[x % 2, action]: state-dependent blocking, read from params so that
    every hypothesis example reuses one compilation."""
    return params.blocked[state.pos[0] % 2, action[0], action[1], action[2]]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), density=st.floats(0.0, 0.9))
def test_filter_never_lets_a_blocked_action_through(seed, density):
    rng = np.random.default_rng(seed)
    table = rng.random((2, 6, 2, 2)) < density
    env = SafetyFilter(ToyWorld(), is_destructive=table_predicate)
    params = TableParams(max_steps=PARAMS.max_steps, blocked=jnp.asarray(table))
    actions = random_actions(jax.random.key(seed), 30)
    (first_obs, first_state), (obs, states, _, _, info) = rollout(
        env, jax.random.key(seed + 1), actions, params
    )
    before = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b[:-1]]), first_state, states)
    masks = jnp.concatenate([first_obs["action_mask"][None], obs["action_mask"][:-1]])
    # What filter_action says for the state before each step (vs. what reached the world, below).
    filter_all = eqx.filter_jit(jax.vmap(lambda s, a, p: env.filter_action(s, a, p), in_axes=(0, 0, None)))
    filtered, blocked, none_safe = map(np.asarray, filter_all(before, actions, params))
    for t in range(actions.shape[0]):
        parity = int(before.inner.pos[t, 0]) % 2
        proposed, executed = tuple(np.asarray(actions[t])), tuple(executed_action(info)[t])
        assert bool(info.action_blocked[t]) == bool(table[(parity, *proposed)])
        assert bool(info.agent_acted[t]) == (not bool(info.action_blocked[t]))
        assert tuple(filtered[t]) == executed and bool(blocked[t]) == bool(info.action_blocked[t])
        assert float(info.extras["safety_no_safe_action"][t]) == float(none_safe[t]) == float(table[parity].all())
        if not table[parity].all():
            assert not table[(parity, *executed)], f"blocked action {executed} executed at step {t}"
        if not bool(info.action_blocked[t]):
            assert executed == proposed
        # Mask: a factor value is allowed iff some unblocked joint action uses it.
        allowed = ~table[parity]
        expected = np.concatenate(
            [allowed.any(axis=(1, 2)), allowed.any(axis=(0, 2)), allowed.any(axis=(0, 1))]
        )
        np.testing.assert_array_equal(masks[t], expected)


def test_filter_uses_safe_action_and_combines_inner_mask():
    no_interact = lambda state, action, params: action[0] == INTERACT
    no_left = lambda state, action, params: action[0] == LEFT
    safe = jnp.array([NOOP, 1, 0], jnp.int32)
    env = SafetyFilter(
        SafetyFilter(ToyWorld(), is_destructive=no_interact), is_destructive=no_left, safe_action=safe
    )
    obs, state = env.reset(jax.random.key(0), PARAMS)
    key_mask = np.asarray(obs["action_mask"][:6])
    assert not key_mask[INTERACT] and not key_mask[LEFT] and key_mask[[NOOP, RIGHT, UP, DOWN]].all()
    for blocked_key in (INTERACT, LEFT):
        _, _, _, _, info = env.step(jax.random.key(1), state, jnp.array([blocked_key, 0, 1]), PARAMS)
        assert bool(info.action_blocked) and not bool(info.agent_acted)
        np.testing.assert_array_equal(executed_action(info), safe)


def test_filter_rejects_bad_input():
    with pytest.raises(TypeError, match="is_destructive"):
        SafetyFilter(ToyWorld(), is_destructive=3)
    with pytest.raises(ValueError, match="safe_action"):
        SafetyFilter(ToyWorld(), is_destructive=lambda s, a, p: False, safe_action=jnp.array([0, 0]))
    with pytest.raises(ValueError, match="max_joint_actions"):
        SafetyFilter(ToyWorld(), is_destructive=lambda s, a, p: False, max_joint_actions=10)


# ----------------------------------------------------------------------------------------------- composition


def _no_interact(state, action, params) -> Bool[Array, ""]:
    return action[0] == INTERACT


BUILDERS = {
    "shaper": lambda env: RewardShaper(env, probe=toy_probe, num_regions=(3, 3)),
    "rollback": lambda env: RollbackWrapper(env, timeout_s=1.0, fallback_steps=2),
    "filter": lambda env: SafetyFilter(env, is_destructive=_no_interact),
}


@pytest.mark.parametrize("order", list(itertools.permutations(BUILDERS)))
def test_wrappers_compose_in_any_order_under_vmap(order):
    env = ToyWorld()
    for name in order:
        env = BUILDERS[name](env)
    num_worlds, num_steps = 3, 25
    actions = jax.vmap(lambda k: random_actions(k, num_steps))(
        jax.random.split(jax.random.key(0), num_worlds)
    )
    keys = jax.random.split(jax.random.key(1), num_worlds)
    batched = jax.vmap(lambda k, a: rollout(env, k, a))(keys, actions)
    if order in (("shaper", "rollback", "filter"), ("filter", "rollback", "shaper")):
        for i in range(num_worlds):  # vmapped worlds equal a loop over single worlds
            single = rollout(env, keys[i], actions[i])
            jax.tree.map(lambda b, s, i=i: np.testing.assert_allclose(b[i], s, rtol=1e-6), batched, single)

    _, (obs, _, reward, _, info) = batched
    assert obs["action_mask"].shape == (num_worlds, num_steps, sum(ToyWorld().action_nvec))
    assert not (executed_action(info)[..., 0] == INTERACT).any()
    # Every layer's report survives the others: the shaper's terms, the rollback's and the filter's flags.
    assert "reward_exploration" in info.extras and "safety_no_safe_action" in info.extras
    for flag in (info.world_rollback, info.fallback_step, info.action_blocked, info.agent_acted):
        assert flag.shape == (num_worlds, num_steps) and flag.dtype == jnp.bool_
    assert bool(jnp.any(info.action_blocked))  # random actions include INTERACT, which the filter blocks
    # The spec and state peeling reach the world through every layer.
    assert env.spec.action.nvec == ToyWorld().spec.action.nvec
    assert env.spec.observation.action_mask.shape == (sum(ToyWorld().action_nvec),)
    _, state = env.reset(jax.random.key(2), PARAMS)
    assert isinstance(unwrap_state(env, state), ToyState)
    rollback_state = state
    while not hasattr(rollback_state, "rollback_count"):
        rollback_state = rollback_state.inner
    assert int(rollback_state.rollback_count) == 0


def test_expert_action_delegates_through_wrappers():
    env = SafetyFilter(RollbackWrapper(RewardShaper(ToyWorld())), is_destructive=_no_interact)
    _, state = env.reset(jax.random.key(4), PARAMS)
    np.testing.assert_array_equal(
        env.expert_action(state, PARAMS), ToyWorld().expert_action(env.base_state(state), PARAMS)
    )
    assert isinstance(env.unwrapped, ToyWorld)

"""The env contract (`sima2.contract.Env`), checked the same way for every env: the built-in world, each
wrapper around it, all three composed, and the `LineWorld` test stand-in (bare and under the shaper).

For each env: the spec is an `EnvSpec` and every observation passes `spec.observation.check`; a step
returns a float32 scalar reward, a bool scalar done and a `StepInfo` of the documented dtypes and shapes;
`jit(vmap(step))` over a batch of worlds equals unbatched steps of the same states, keys and actions (so
the auto-reset and its batching rule are covered); after a done step the state is `env.init(key, params)`
of that step's key (the state `reset` makes from it); `ObservationSpec.check` names the field that is
missing or has the wrong shape.

Batched and unbatched steps agree bit for bit, except the built-in world's float physics (velocities,
positions): XLA's vectorised float code may round the last bit differently (a few 1e-8), so its float
leaves are compared to 1e-6 and everything else (images, instructions, rewards, flags, integer state)
bit for bit. Each unbatched step starts from the batched state, so these roundings cannot compound.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _training_standins import LineWorld

import sima2.envs as envs
from sima2.contract import EnvSpec, StepInfo
from sima2.envs.wrappers import RewardShaper, RollbackWrapper, SafetyFilter
from sima2.training.pipeline import is_destructive

SIZE = 16  # tiny images keep the tests fast
NUM_WORLDS, NUM_STEPS = 8, 40


def _world(env_id: str = "sima2/GoTo-v0"):
    env, params = envs.make(env_id, image_size=SIZE)
    # Short, staggered episodes (4 to 7 steps, one per world): many done steps, done and running worlds mixed.
    per_world = [envs.EnvParams(max_steps=jnp.int32(4 + i % 4), split=params.split) for i in range(NUM_WORLDS)]
    return env, per_world


def _wrapped(wrap):
    def build():
        env, per_world = _world()
        return wrap(env), per_world

    return build


def _line(wrap=lambda env: env):
    def build():
        env = LineWorld()
        return wrap(env), [env.default_params()] * NUM_WORLDS

    return build


def _composed(env):
    shaper = RewardShaper(env, num_regions=(8, 8))
    rollback = RollbackWrapper(shaper, timeout_s=2.0, fallback_steps=2)
    return SafetyFilter(rollback, is_destructive=is_destructive)


CASES = {
    "world": _world,
    "world-multiroom": lambda: _world("sima2/GoToMultiRoom-v0"),
    "shaper": _wrapped(lambda env: RewardShaper(env, num_regions=(8, 8), potential=0.1)),
    # (no fallback here: it is the expert's, also compiled in "composed")
    "rollback": _wrapped(lambda env: RollbackWrapper(env, timeout_s=2.0, fallback_steps=0)),
    "safety": _wrapped(lambda env: SafetyFilter(env, is_destructive=is_destructive)),
    "composed": _wrapped(_composed),
    "lineworld": _line(),
    "lineworld-shaper": _line(lambda env: RewardShaper(env, num_regions=(8, 8), potential=0.1)),
}

BOOL_FIELDS = ("terminated", "truncated", "success", "invalid_move", "agent_acted", "world_rollback",
               "fallback_step", "action_blocked")
FLOAT_FIELDS = ("contact", "distance_to_goal", "path_length", "optimal_path_length")
INT_FIELDS = ("elapsed_ticks", "subgoal_index")


class Case:
    """One env of the table, with its programs compiled once for all the tests of the module."""

    def __init__(self, name):
        self.name = name
        self.env, self.per_world = CASES[name]()
        # Only the built-in world has float physics whose vectorised rounding differs (see the docstring).
        self.exact_floats = name.startswith("lineworld")

    # The programs take the env as an argument (its coefficients are arrays), so each compiles once per case.
    def reset(self, key, params):
        return _reset(self.env, key, params)

    def step(self, key, state, action, params):
        return _step(self.env, key, state, action, params)

    def batched_step(self, keys, states, actions, params):
        return _batched_step(self.env, keys, states, actions, params)


@eqx.filter_jit
def _reset(env, key, params):
    return env.reset(key, params)


@eqx.filter_jit
def _step(env, key, state, action, params):
    return env.step(key, state, action, params)


@eqx.filter_jit
def _batched_step(env, keys, states, actions, params):
    return jax.vmap(env.step)(keys, states, actions, params)


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    return Case(request.param)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _pick(tree, i):
    """World `i` of a batched tree of NumPy arrays (indexing on the host: no gather dispatched per leaf)."""
    return jax.tree.map(lambda x: x[i], tree)


def _host(tree):
    return jax.tree.map(np.asarray, tree)


def _assert_trees_equal(got, want, what, exact_floats=True):
    got_leaves, got_def = jax.tree.flatten(got)
    want_leaves, want_def = jax.tree.flatten(want)
    assert got_def == want_def, f"{what}: tree structures differ"
    for x, y in zip(got_leaves, want_leaves, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        if exact_floats or not np.issubdtype(x.dtype, np.floating):
            np.testing.assert_array_equal(x, y, err_msg=what)  # NaN equals NaN, everything else bit for bit
        else:
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6, equal_nan=True, err_msg=what)


def _check_step_info(info, batch=()):
    assert isinstance(info, StepInfo)
    for name in BOOL_FIELDS:
        value = getattr(info, name)
        assert value.dtype == jnp.bool_ and value.shape == batch, name
    for name in FLOAT_FIELDS:
        value = getattr(info, name)
        assert value.dtype == jnp.float32 and value.shape == batch, name
    for name in INT_FIELDS:
        value = getattr(info, name)
        assert value.dtype == jnp.int32 and value.shape == batch, name
    assert info.agent_pos.dtype == jnp.float32 and info.agent_pos.shape == (*batch, 2)
    assert isinstance(info.extras, dict)
    for name, value in info.extras.items():
        assert value.dtype == jnp.float32 and value.shape == batch, f"extras[{name!r}]"


def test_spec_observation_and_one_step(case):
    env, params = case.env, case.per_world[0]
    spec = env.spec
    assert isinstance(spec, EnvSpec)
    nvec = spec.action.nvec
    if isinstance(env, SafetyFilter):
        assert spec.observation.action_mask.shape == (sum(nvec),) and spec.observation.action_mask.dtype == "bool"
    obs, state = case.reset(jax.random.key(0), params)
    spec.observation.check(obs)
    assert set(obs) == set(spec.observation.fields())
    if isinstance(env, SafetyFilter):
        assert obs["action_mask"].shape == (sum(nvec),) and obs["action_mask"].dtype == jnp.bool_
    action = jnp.asarray([n - 1 for n in nvec], jnp.int32)
    obs, _, reward, done, info = case.step(jax.random.key(1), state, action, params)
    spec.observation.check(obs)
    assert reward.dtype == jnp.float32 and reward.shape == ()
    assert done.dtype == jnp.bool_ and done.shape == ()
    _check_step_info(info)
    assert bool(done) == bool(info.done) == bool(info.terminated | info.truncated)


def test_vmapped_steps_equal_unbatched_steps_and_done_steps_reset_to_init(case):
    env, per_world, name = case.env, case.per_world, case.name
    nvec = env.spec.action.nvec
    batch_params = _stack(per_world)
    reset_keys = jax.random.split(jax.random.key(10), NUM_WORLDS)
    step_keys = jax.random.split(jax.random.key(11), NUM_STEPS * NUM_WORLDS).reshape(NUM_STEPS, NUM_WORLDS)
    action_keys = jax.random.split(jax.random.key(12), len(nvec))
    actions = jnp.stack(
        [jax.random.randint(k, (NUM_STEPS, NUM_WORLDS), 0, n) for k, n in zip(action_keys, nvec, strict=True)], -1
    ).astype(jnp.int32)

    state_b = _stack([case.reset(reset_keys[i], per_world[i])[1] for i in range(NUM_WORLDS)])

    dones, mixed = 0, False
    for t in range(NUM_STEPS):
        out_b = case.batched_step(step_keys[t], state_b, actions[t], batch_params)
        _check_step_info(out_b[4], (NUM_WORLDS,))
        state_host, out_b = _host(state_b), _host(out_b)
        done_b, keys, actions_t = out_b[3], jnp.unstack(step_keys[t]), np.asarray(actions[t])
        mixed |= bool(done_b.any() and not done_b.all())
        for i in range(NUM_WORLDS):
            out = case.step(keys[i], _pick(state_host, i), actions_t[i], per_world[i])
            _assert_trees_equal(_pick(out_b, i), out, f"{name}: step {t}, world {i}", case.exact_floats)
            _, state, _, done, info = out
            assert bool(done) == bool(info.terminated | info.truncated)
            if bool(done):  # the auto-reset, defined once: the fresh episode of this step's key, env.init's
                dones += 1
                fresh = case.reset(keys[i], per_world[i])[1]
                _assert_trees_equal(state, fresh, f"{name}: reset at {t}, {i}")
        state_b = out_b[1]
    # Enough episodes end, and not all at once, for the batched auto-reset to be exercised.
    assert dones >= NUM_WORLDS and mixed


def test_observation_check_names_the_wrong_or_missing_field(case):
    spec = case.env.spec.observation
    obs = {field: np.asarray(value) for field, value in spec.zeros().items()}
    spec.check(obs)
    for field in spec.fields():
        wrong = {**obs, field: obs[field][..., None]}
        with pytest.raises(ValueError, match=f"'{field}'"):
            spec.check(wrong)
        missing = {k: v for k, v in obs.items() if k != field}
        with pytest.raises(ValueError, match=f"'{field}'"):
            spec.check(missing)

"""Tests of the built-in world: determinism, vmap, physics, rendering, tasks, splits, language, gymnasium."""

from __future__ import annotations

import equinox as eqx
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import sima2.envs as envs
from sima2.contract import StepInfo, reset_where_done
from sima2.envs import vocabulary as voc
from sima2.envs.render import FIELD_OF_VIEW, _cast_rays
from sima2.envs.world import (
    AGENT_RADIUS,
    GAME_NAMES,
    HELDOUT_GAME,
    HELDOUT_PAIR_MASK,
    door_state_grid,
    heading_vectors,
)

SIZE = 16  # tiny images keep the tests fast


@pytest.fixture(scope="module")
def goto():
    return envs.make("sima2/GoTo-v0", image_size=SIZE)


def _leaf_equal(x, y) -> bool:
    x, y = np.asarray(x), np.asarray(y)
    if np.issubdtype(x.dtype, np.floating):  # vmapped code may round the last bit differently
        return x.shape == y.shape and np.allclose(x, y, rtol=1e-5, atol=1e-5)
    return np.array_equal(x, y)


def _trees_equal(a, b) -> bool:
    return all(_leaf_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_reset_is_deterministic_per_key(goto):
    env, params = goto
    reset = jax.jit(env.reset)
    obs_a, state_a = reset(jax.random.key(7), params)
    obs_b, state_b = reset(jax.random.key(7), params)
    obs_c, state_c = reset(jax.random.key(8), params)
    assert _trees_equal((obs_a, state_a), (obs_b, state_b))
    assert not _trees_equal(state_a, state_c)
    assert obs_a["image"].dtype == jnp.uint8 and obs_a["image"].shape == (SIZE, SIZE, 3)
    assert obs_a["instruction"].dtype == jnp.int32 and obs_a["instruction"].shape == (env.instruction_length,)
    assert obs_a["proprio"].shape == (env.proprio_size,)


def test_vmap_over_256_worlds_equals_a_loop(goto):
    env, params = goto
    n = 256
    keys = jax.random.split(jax.random.key(0), n)
    step_keys = jax.random.split(jax.random.key(1), n)
    actions = jax.random.randint(jax.random.key(2), (n, 3), 0, jnp.array(env.action_nvec))
    batched_reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
    batched_step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    obs, state = batched_reset(keys, params)
    out = batched_step(step_keys, state, actions, params)

    reset, step = jax.jit(env.reset), jax.jit(env.step)
    for i in range(n):
        obs_i, state_i = reset(keys[i], params)
        out_i = step(step_keys[i], state_i, actions[i], params)
        assert _trees_equal(jax.tree.map(lambda x, i=i: x[i], (obs, out)), (obs_i, out_i)), (
            f"world {i} differs"
        )


_MULTI_ROOM = envs.make("sima2/GoToMultiRoom-v0", image_size=8)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**30),
    actions=st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 2)), min_size=5, max_size=15
    ),
)
def test_agent_never_passes_through_walls(seed, actions):
    env, params = _MULTI_ROOM
    step = _jitted_step_no_reset(env)
    _, state = _jitted_reset(env)(jax.random.key(seed), params)
    offsets = AGENT_RADIUS * 0.999 * np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]])
    for action in actions:
        _, state, *_ = step(jax.random.key(0), state, np.array(action, np.int32), params)
        # Walls and closed doors (objects may be dropped next to the agent, so they are left out).
        door_id = np.asarray(state.door_id)
        door_closed = np.where(door_id >= 0, np.asarray(state.door_state)[np.maximum(door_id, 0)] > 0, False)
        solid = np.asarray(state.wall) | door_closed
        corners = np.floor(np.asarray(state.agent_pos)[None, :] + offsets).astype(int)
        assert not solid[corners[:, 1], corners[:, 0]].any(), f"agent overlaps a wall at {state.agent_pos}"


_RESET_CACHE: dict = {}


def _jitted_reset(env):
    if env not in _RESET_CACHE:
        _RESET_CACHE[env] = jax.jit(env.reset)
    return _RESET_CACHE[env]


_STEP_CACHE: dict = {}


def _jitted_step_no_reset(env):
    if env not in _STEP_CACHE:
        _STEP_CACHE[env] = jax.jit(env.step_no_reset)
    return _STEP_CACHE[env]


def _column_profile(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32).mean(axis=(0, 2))


def _best_shift(before: np.ndarray, after: np.ndarray, max_shift: int = 20) -> int:
    """Horizontal shift (pixels) that best maps `before` onto `after` (negative: content moved left)."""
    a, b = _column_profile(before), _column_profile(after)
    errors = {}
    for shift in range(-max_shift, max_shift + 1):
        lo, hi = max(0, shift), min(a.shape[0], a.shape[0] + shift)
        errors[shift] = np.mean((a[lo - shift : hi - shift] - b[lo:hi]) ** 2)
    return min(errors, key=errors.get)


@pytest.mark.parametrize("look_bin, direction", [(4, -1), (2, 1)])  # +15 deg = right, -15 deg = left
def test_turning_moves_the_image_the_right_way(look_bin, direction):
    env, _ = envs.make("sima2/GoToLoc-v0", image_size=64)
    params = env.default_params(game="classic")  # its 66 degree field of view
    step = _jitted_step_no_reset(env)
    reset = jax.jit(env.reset)
    moved = []
    for seed in range(12):
        obs, state = reset(jax.random.key(seed), params)
        if _column_profile(np.asarray(obs["image"])).std() < 8.0:
            continue  # a featureless view (facing a plain wall) carries no horizontal motion
        obs2, *_ = step(jax.random.key(0), state, jnp.array([0, look_bin, 0], jnp.int32), params)
        moved.append(_best_shift(np.asarray(obs["image"]), np.asarray(obs2["image"])))
    # Turning right by 15 degrees moves the view's content left by ~13 pixels (66 degree field of view).
    assert len(moved) >= 4
    assert all(np.sign(m) == direction and 5 <= abs(m) <= 20 for m in moved), moved


def test_bumping_a_wall_is_an_invalid_move_with_contact(goto):
    env, params = goto
    step = _jitted_step_no_reset(env)
    _, state = jax.jit(env.reset)(jax.random.key(3), params)
    info = None
    for _ in range(8):  # walking forward for 4 s reaches a wall in a 5x5 room
        obs, state, _, _, info = step(jax.random.key(0), state, jnp.array([1, 3, 2], jnp.int32), params)
    assert bool(info.invalid_move) and float(info.contact) > 0
    assert np.allclose(obs["proprio"][:2], 0.0, atol=1e-5)  # pushing against the wall: no velocity
    # Touch: full contact, straight ahead (body frame forward, right), against what fills the cell ahead
    # (wall, door or object, one-hot), nothing held.
    touch = np.asarray(obs["touch"])
    assert touch.shape == (env.touch_size,) and env.spec.observation.touch.shape == (env.touch_size,)
    assert touch[0] == pytest.approx(1.0) and float(state.contact) == pytest.approx(1.0)
    np.testing.assert_allclose(touch[1:3], [1.0, 0.0], atol=0.3)
    forward, _ = heading_vectors(state.agent_dir)
    col, row = np.floor(np.asarray(state.agent_pos) + np.asarray(forward) * (AGENT_RADIUS + 0.1)).astype(int)
    objects = {tuple(p) for p in np.asarray(state.obj_pos).tolist()}
    ahead = [bool(state.wall[row, col]) and int(state.door_id[row, col]) < 0, int(state.door_id[row, col]) >= 0,
             (row, col) in objects]
    assert touch[3:6].tolist() == [float(kind) for kind in ahead] and sum(ahead) == 1
    assert touch[6] == 0.0  # empty-handed
    # Stepping back frees it: no contact, no direction, nothing touched.
    obs, state, *_ = step(jax.random.key(0), state, jnp.array([2, 3, 0], jnp.int32), params)
    assert np.asarray(obs["touch"])[:6].tolist() == [0.0] * 6
    # Turned to have it on the right, strafing right pushes against it from the side.
    obs, state, *_ = step(jax.random.key(0), state, jnp.array([0, 0, 2], jnp.int32), params)  # 90 deg left
    for _ in range(4):
        obs, state, *_ = step(jax.random.key(0), state, jnp.array([4, 3, 2], jnp.int32), params)
    touch = np.asarray(obs["touch"])
    assert touch[0] > 0 and touch[3:6].sum() == 1.0
    np.testing.assert_allclose(touch[1:3], [0.0, 1.0], atol=0.3)


def test_touch_reports_holding_and_objects_within_reach():
    env, params = envs.make("sima2/Pickup-v0", image_size=SIZE)
    step, expert, reset = _jitted_step_no_reset(env), jax.jit(env.expert_action), jax.jit(env.reset)
    picked = 0
    for seed in range(4):
        obs, state = reset(jax.random.key(seed), params)
        for _ in range(32):
            action = expert(state, params)
            touch_before = np.asarray(obs["touch"])
            was_holding = int(state.carrying) >= 0
            obs, state, _, done, _ = step(jax.random.key(0), state, action, params)
            holding = int(state.carrying) >= 0
            assert np.asarray(obs["touch"])[6] == float(holding)
            if holding and not was_holding:  # interact picked the object up: it was within reach
                assert touch_before[7] == 1.0
                picked += 1
            if bool(done):
                break
    assert picked >= 3


def test_step_info_fields_and_auto_reset(goto):
    env, params = goto
    params = envs.EnvParams(max_steps=jnp.int32(2), split=params.split)
    obs, state = jax.jit(env.reset)(jax.random.key(0), params)
    step = jax.jit(env.step)
    for t in range(2):  # the episode ends by success or by the step limit of 2
        obs, state, reward, done, info = step(jax.random.key(t), state, jnp.array([0, 3, 0]), params)
        if bool(done):
            break
    assert isinstance(info, StepInfo)
    for name in ("terminated", "truncated", "success", "invalid_move"):
        assert getattr(info, name).shape == () and getattr(info, name).dtype == jnp.bool_
    assert info.agent_pos.shape == (2,) and info.distance_to_goal.dtype == jnp.float32
    assert np.isfinite(np.asarray(info.agent_pos)).all() and np.isfinite(float(info.distance_to_goal))
    assert info.elapsed_ticks.dtype == jnp.int32 and int(info.elapsed_ticks) == envs.DURATION_TICKS[0]
    assert info.path_length.dtype == jnp.float32 and info.optimal_path_length.dtype == jnp.float32
    assert bool(done) and bool(info.truncated) != bool(info.success)
    assert bool(info.done) == bool(done) and bool(info.terminated) == bool(info.success)
    assert int(state.time) == 0  # auto-reset


def test_expert_plan_text_and_subgoals():
    env, params = envs.make("sima2/Unlock-v0", image_size=SIZE)
    _, state = jax.jit(env.reset)(jax.random.key(0), params)
    plan = env.plan_text(state)
    colour = plan[0].split()[-2]
    assert plan == [
        f"go to the {colour} key",
        f"pick up the {colour} key",
        f"go to the {colour} door",
        f"open the {colour} door",
    ]
    assert int(env.subgoal_index(state)) in (0, 1)
    assert float(env.optimal_path_length(state)) >= 0


@pytest.mark.parametrize("level", ["GoTo", "Open", "PutNext", "Sequence", "GoToLoc"])
def test_max_instruction_words_is_the_longest_instruction(level):
    """The grammar's bound is never exceeded, and is reached, over every split (ids after it are padding)."""
    env, _ = envs.make(f"sima2/{level}-v0", image_size=8)
    bound = env.max_instruction_words
    longest = 0
    reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))  # built once: one program for every split
    for split in env.splits:
        keys = jax.random.split(jax.random.key(7), 2048)
        obs, _ = reset(keys, env.default_params(split))
        ids = np.asarray(obs["instruction"])
        lengths = (ids != 0).sum(axis=1)
        assert (ids[:, bound:] == 0).all() and (ids[np.arange(len(ids)), np.maximum(lengths - 1, 0)] != 0).all()
        longest = max(longest, int(lengths.max()))
    assert longest == bound <= env.instruction_length


def test_instruction_ids_match_the_hf_tokenizer():
    tokenizer = envs.get_tokenizer()
    assert tokenizer.pad_token_id == 0 and len(tokenizer) == len(voc.vocabulary())
    for level in ("sima2/Sequence-v0", "sima2/GoToLoc-v0"):
        env, params = envs.make(level, image_size=SIZE)
        reset = jax.jit(env.reset)  # built once: a jit of a new bound method each time would compile again
        for seed in range(5):
            _, state = reset(jax.random.key(seed), params)
            ids = np.asarray(state.instruction)
            text = env.instruction_text(state)
            n = int((ids != 0).sum())
            assert n > 2 and (ids[n:] == 0).all()  # left-aligned, padded
            assert tokenizer(text)["input_ids"] == ids[:n].tolist()
            assert tokenizer.decode(ids[:n]).replace(" ,", ",") == text


def _batch_reset(env, params, n=64, seed=0):
    return jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(jax.random.split(jax.random.key(seed), n), params)[
        1
    ]


def test_splits_are_disjoint_by_construction():
    env, _ = envs.make("sima2/PutNext-v0", image_size=SIZE)
    pair = lambda s: np.asarray(s.obj_type) * len(voc.COLOURS) + np.asarray(s.obj_colour)
    train = _batch_reset(env, env.default_params("train"))
    assert not HELDOUT_PAIR_MASK[pair(train)].any()
    assert (np.asarray(train.layout_seed) % 5 != 0).all()
    pairs = _batch_reset(env, env.default_params("heldout_pairs"))
    assert HELDOUT_PAIR_MASK[pair(pairs)[:, :2]].all()  # both targets use held-out colour-object pairs
    layouts = _batch_reset(env, env.default_params("heldout_layouts"))
    assert (np.asarray(layouts.layout_seed) % 5 == 0).all()

    heldout_words = {"set", "drop"}
    train_texts = [voc.decode_ids(row) for row in np.asarray(train.instruction)]
    para = _batch_reset(env, env.default_params("heldout_paraphrases"))
    para_texts = [voc.decode_ids(row) for row in np.asarray(para.instruction)]
    assert not any(text.split()[0] in heldout_words for text in train_texts)
    assert all(text.split()[0] in heldout_words for text in para_texts)
    # The held-out game: no other split draws it; its worlds are otherwise drawn as training worlds are.
    assert not (np.asarray(train.game) == HELDOUT_GAME).any() and len(set(np.asarray(train.game))) >= 3
    game = _batch_reset(env, env.default_params("heldout_game"))
    assert (np.asarray(game.game) == HELDOUT_GAME).all()
    assert (np.asarray(game.layout_seed) % 5 != 0).all() and not HELDOUT_PAIR_MASK[pair(game)].any()
    with pytest.raises(ValueError, match="unknown split"):
        env.default_params("test")


@pytest.mark.parametrize("game", GAME_NAMES)
def test_every_game_looks_different_and_the_expert_plays_it(game):
    """A game changes the look (palette, camera, sprites) and the speed, never the task: the same key gives
    the same layout and instruction in every game, a different image, and the expert still succeeds."""
    env, _ = envs.make("sima2/Pickup-v0", image_size=SIZE)
    params, classic = env.default_params(game=game), env.default_params(game="classic")
    reset = jax.jit(env.reset)  # one program (op by op, a reset compiles each operation on its own)
    obs, state = reset(jax.random.key(4), params)
    obs0, state0 = reset(jax.random.key(4), classic)
    assert env.instruction_text(state) == env.instruction_text(state0)
    np.testing.assert_array_equal(state.obj_pos, state0.obj_pos)
    assert (game == "classic") == bool(np.array_equal(obs["image"], obs0["image"]))

    def expert_step(state, _):
        action = env.expert_action(state, params)
        _, state, _, _, info = env.step_no_reset(jax.random.key(0), state, action, params)
        return state, info.success

    _, success = jax.lax.scan(expert_step, state, None, length=int(env.level.max_steps))
    assert bool(success.any()), f"the expert fails in the {game} game"
    with pytest.raises(ValueError, match="unknown game"):
        env.default_params(game="nope")


def test_registry_and_bad_ids():
    ids = list(envs.registry())
    for required in ("GoTo", "Pickup", "Open", "PutNext", "Sequence"):
        assert f"sima2/{required}-v0" in ids
        assert f"sima2/{required}-v0" in gymnasium.registry
    with pytest.raises(ValueError, match="unknown level"):
        envs.make("sima2/Nope-v0")
    with pytest.raises(ValueError, match="image size"):
        envs.make("sima2/GoTo-v0", image_size=1024)


def test_gymnasium_env_passes_the_checker():
    env = gymnasium.make("sima2/GoTo-v0", image_size=SIZE, render_mode="rgb_array")
    check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    assert isinstance(info["instruction_text"], str)
    obs, reward, terminated, truncated, info = env.step(env.unwrapped.expert_action())
    assert env.render().shape == (SIZE, SIZE, 3)


def test_vector_env_steps_all_worlds_in_one_call():
    vec = gymnasium.make_vec(
        "sima2/Pickup-v0", num_envs=8, vectorization_mode="vector_entry_point", image_size=SIZE
    )
    obs, _ = vec.reset(seed=1)
    assert obs["image"].shape == (8, SIZE, SIZE, 3)
    for _ in range(3):
        obs, reward, terminated, truncated, info = vec.step(vec.action_space.sample())
    assert reward.shape == (8,) and terminated.dtype == bool and info["distance_to_goal"].shape == (8,)
    assert vec.observation_space.contains(obs)
    assert len(vec.unwrapped.instruction_texts()) == 8
    vec.close()


def test_topdown_render_and_gif(tmp_path, goto):
    env, params = goto
    obs, state = jax.jit(env.reset)(jax.random.key(0), params)
    top = np.asarray(env.render_topdown(state, 4))
    assert top.shape == (7 * 4, 7 * 4, 3) and top.dtype == np.uint8
    frames = [envs.side_by_side(np.asarray(obs["image"]), top)] * 3
    path = envs.write_episode(frames, tmp_path / "episode.gif", env.instruction_text(state), scale=2)
    assert path.exists() and path.stat().st_size > 0
    with pytest.raises(ValueError, match="unsupported video format"):
        envs.write_episode(frames, tmp_path / "episode.avi")


@pytest.mark.parametrize(("num_done", "params_batched"), [(0, False), (5, True), (40, False)])
def test_batched_auto_reset_regenerates_exactly_the_done_worlds(goto, num_done, params_batched):
    env, params = goto
    n = 40  # the batched reset works in chunks of ceil(n / 16) = 3 worlds: many done worlds take several
    _, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(jax.random.split(jax.random.key(0), n), params)
    keys = jax.random.split(jax.random.key(1), n)
    done = jnp.zeros((n,), bool).at[jax.random.permutation(jax.random.key(2), n)[:num_done]].set(True)
    batch_params = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,)), params) if params_batched else params
    in_axes = (None, 0, 0, 0 if params_batched else None, 0)
    out = eqx.filter_jit(jax.vmap(reset_where_done, in_axes=in_axes))(env, done, keys, batch_params, state)
    fresh = jax.jit(jax.vmap(env.init, in_axes=(0, None)))(keys, params)
    single = eqx.filter_jit(reset_where_done)
    for i in range(n):
        pick = lambda tree, i=i: jax.tree.map(lambda x: x[i], tree)  # noqa: E731
        expected = pick(fresh) if done[i] else pick(state)
        assert _trees_equal(pick(out), expected), f"world {i} (done={bool(done[i])}) differs"
        if i % 8 == 0:  # the unbatched path (a lax.cond) agrees too
            assert _trees_equal(single(env, done[i], keys[i], params, pick(state)), expected)


@pytest.mark.parametrize("level", ["sima2/Sequence-v0", "sima2/GoToMultiRoom-v0"])
def test_ray_casting_matches_a_fine_ray_march(level):
    env, params = envs.make(level, image_size=SIZE)
    width = 32
    cam_x = (2.0 * (np.arange(width) + 0.5) / width - 1.0) * np.tan(FIELD_OF_VIEW / 2)
    march_t = np.arange(1, 40_001, dtype=np.float64) * 1e-3  # distances along the ray, up to 40 cells
    checked = agree = 0
    reset, cast_rays = jax.jit(env.reset), jax.jit(_cast_rays)
    for seed in range(8):
        _, state = reset(jax.random.key(seed), params)
        # A random continuous pose on free floor: rays start anywhere inside a cell, at any angle.
        rng = np.random.default_rng(seed)
        opaque = np.asarray(state.wall | (door_state_grid(state) > 0))
        row, col = rng.choice(np.argwhere(~opaque))
        pos = np.array([col, row]) + rng.uniform(0.05, 0.95, 2)
        angle = rng.uniform(-np.pi, np.pi)
        state = eqx.tree_at(
            lambda s: (s.agent_pos, s.agent_dir), state, (jnp.asarray(pos, jnp.float32), jnp.float32(angle))
        )
        forward, right = (np.asarray(v, np.float64) for v in heading_vectors(jnp.float32(angle)))
        rays = np.stack([forward[0] + cam_x * right[0], forward[1] + cam_x * right[1]], 1)  # [W, 2]
        dist, hit_row, hit_col, _ = map(
            np.asarray, cast_rays(state, (jnp.asarray(rays[:, 0], jnp.float32), jnp.asarray(rays[:, 1], jnp.float32)))
        )
        for w in range(width):  # march in 0.001 steps until the first opaque (or outside) cell
            cells = np.floor(pos[None, :] + march_t[:, None] * rays[w][None, :]).astype(int)
            c, r = cells[:, 0], cells[:, 1]
            outside = (r < 0) | (r >= opaque.shape[0]) | (c < 0) | (c >= opaque.shape[1])
            blocked = outside | opaque[np.clip(r, 0, opaque.shape[0] - 1), np.clip(c, 0, opaque.shape[1] - 1)]
            first = int(np.argmax(blocked))
            checked += 1
            agree += abs(dist[w] - march_t[first]) < 2e-3 and (hit_row[w], hit_col[w]) == (r[first], c[first])
    assert agree >= 0.99 * checked, f"{checked - agree} of {checked} rays disagree with the fine march"


def test_generation_draws_are_uniform_and_independent_of_the_batch():
    from sima2.envs.world.streams import _Draws

    def draw(seed):
        draws = _Draws(seed)
        allowed = jnp.arange(12) % 3 != 0  # 8 of 12 allowed
        return draws.integers(0, 7), draws.choice(allowed), draws.permutation(4), draws.uniform()

    seeds = jnp.arange(20_000, dtype=jnp.uint32) * jnp.uint32(7919)
    ints, picks, perms, unit = map(np.asarray, jax.jit(jax.vmap(draw))(seeds))
    expected = len(seeds) / 7
    assert np.abs(np.bincount(ints, minlength=7) - expected).max() < 5 * np.sqrt(expected)
    counts = np.bincount(picks, minlength=12)
    assert counts[::3].sum() == 0 and np.abs(counts[counts > 0] - len(seeds) / 8).max() < 5 * np.sqrt(len(seeds) / 8)
    assert (np.sort(perms, axis=1) == np.arange(4)).all() and len({tuple(p) for p in perms}) == 24
    assert 0.0 <= unit.min() and unit.max() < 1.0 and abs(unit.mean() - 0.5) < 0.01
    # Consecutive streams of one seed are uncorrelated.
    assert abs(np.corrcoef(ints, picks)[0, 1]) < 0.03
    single = draw(seeds[123])
    assert int(single[0]) == ints[123] and int(single[1]) == picks[123]


def test_auto_reset_under_nested_vmap(goto):
    # Several seeds x several worlds (as PPO trains several seeds at once): the batching rule nests.
    env, params = goto
    seeds, n = 2, 12
    keys = jax.random.split(jax.random.key(4), seeds * n).reshape(seeds, n)
    _, state = jax.jit(jax.vmap(jax.vmap(env.reset, in_axes=(0, None)), in_axes=(0, None)))(keys, params)
    done = jax.random.bernoulli(jax.random.key(5), 0.4, (seeds, n))
    fresh_keys = jax.random.split(jax.random.key(6), seeds * n).reshape(seeds, n)
    inner = jax.vmap(reset_where_done, in_axes=(None, 0, 0, None, 0))
    out = eqx.filter_jit(jax.vmap(inner, in_axes=(None, 0, 0, None, 0)))(env, done, fresh_keys, params, state)
    fresh = jax.jit(jax.vmap(jax.vmap(env.init, in_axes=(0, None)), in_axes=(0, None)))(fresh_keys, params)
    for s in range(seeds):
        for i in range(n):
            pick = lambda tree, s=s, i=i: jax.tree.map(lambda x: x[s, i], tree)  # noqa: E731
            expected = pick(fresh) if done[s, i] else pick(state)
            assert _trees_equal(pick(out), expected), f"seed {s} world {i} differs"


def test_levels_larger_than_the_bit_masks_are_refused():
    from sima2.envs.levels import LevelConfig

    with pytest.raises(ValueError, match="larger than 31 cells"):
        LevelConfig("Huge", "goto", rooms=(1, 3), room_size=10)
    with pytest.raises(ValueError, match="at most 6 doors"):
        LevelConfig("Many", "goto", rooms=(3, 3), room_size=3)
    env = envs.Sima2Env(levels=(LevelConfig("Wide", "goto", rooms=(1, 3), room_size=9),), image_height=8, image_width=8)
    obs, state = jax.jit(env.reset)(jax.random.key(0), env.default_params())  # 11 x 31 cells: fine
    assert obs["image"].shape == (8, 8, 3) and state.wall.shape == (11, 31)

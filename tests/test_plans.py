"""Plans at run time: the written plan's layout, the subgoal labels of demonstrations, the follower's cursor,
and a tiny planner that learns to write the world's plans exactly inside the compiled rollout."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sima2.envs as envs
from sima2.policy import Agent
from sima2.policy.plans import PlanCursor, PlanTokens, _prompt, plan_tokens, split_plan_ids
from sima2.training.bc import plan_supervision
from sima2.training.data import record_demonstrations
from sima2.training.evaluate import plan_accuracy
from sima2.training.rollout import PlanEpisode, PlanningActor
from sima2.training.subgoals import has_subgoal_labels, subgoal_supervision

TOKENS = PlanTokens(eos=3, separator=9, pad=0)


def test_generated_ids_are_cut_into_subgoals_at_separators_and_the_end():
    generated = jnp.asarray([5, 6, 9, 7, 8, 4, 9, 10, 3, 11, 12, 0], jnp.int32)
    plan = split_plan_ids(generated, TOKENS, max_subgoals=4, subgoal_length=3)
    assert int(plan.count) == 3
    np.testing.assert_array_equal(plan.subgoals, [[5, 6, 0], [7, 8, 4], [10, 0, 0], [0, 0, 0]])
    # Bounds: words past `subgoal_length` and subgoals past `max_subgoals` are dropped.
    short = split_plan_ids(generated, TOKENS, max_subgoals=2, subgoal_length=2)
    assert int(short.count) == 2
    np.testing.assert_array_equal(short.subgoals, [[5, 6], [7, 8]])
    # A planner that writes nothing but the end: no subgoals (the follower then acts on the instruction).
    assert int(split_plan_ids(jnp.asarray([3, 5, 9], jnp.int32), TOKENS, 4, 3).count) == 0


def test_the_prompt_is_the_instruction_and_its_end_left_padded():
    ids, mask = _prompt(jnp.asarray([5, 6, 7, 0, 0], jnp.int32), TOKENS)
    np.testing.assert_array_equal(ids, [0, 0, 5, 6, 7, 3])
    np.testing.assert_array_equal(mask, [False, False, True, True, True, True])


def test_the_cursor_advances_when_done_and_stays_on_the_last_subgoal():
    plan = split_plan_ids(jnp.asarray([5, 9, 6, 3], jnp.int32), TOKENS, 4, 2)
    cursor = PlanCursor(jnp.asarray(0, jnp.int32))
    cursor = cursor.advance(jnp.asarray(False), plan)
    assert int(cursor.index) == 0
    cursor = cursor.advance(jnp.asarray(True), plan).advance(jnp.asarray(True), plan)
    assert int(cursor.index) == 1  # two subgoals: index 1 is the last


@pytest.fixture(scope="module")
def sequence_demos():
    env, params = envs.make("sima2/Sequence-v0")
    return env, record_demonstrations(env, params, jax.random.key(0), num_envs=8, num_steps=64)


def test_demonstrations_label_each_expert_subgoal_boundary(sequence_demos):
    env, demos = sequence_demos
    assert has_subgoal_labels(demos)
    episodes = np.asarray(demos["episode_id"])
    index, done = np.asarray(demos["subgoal_index"]), np.asarray(demos["subgoal_done"])
    plans = demos["plan"]
    for episode in np.unique(episodes):
        rows = np.flatnonzero(episodes == episode)
        plan = plans[rows[0]]
        assert (index[rows] < len(plan)).all() and index[rows[0]] == 0
        # A row is labelled done exactly where the next row's subgoal is a later one, and a finished episode's
        # last row (every kept episode ended: the world's success or its time limit).
        later = index[rows[1:]] > index[rows[:-1]]
        np.testing.assert_array_equal(done[rows[:-1]], later)
    # Successful episodes end on their plan's last subgoal, with the last step completing it.
    last = [np.flatnonzero(episodes == e)[-1] for e in np.unique(episodes)]
    finished = [r for r in last if done[r]]
    assert finished and all(index[r] == len(plans[r]) - 1 for r in finished)


def test_subgoal_supervision_gives_the_current_subgoal_and_drops_it_for_every_fourth_episode(sequence_demos):
    env, demos = sequence_demos
    transform = subgoal_supervision(demos, tokenizer=envs.get_tokenizer())
    rows = demos[:40]
    batch = transform(rows, {"obs": {"instruction": np.zeros((40, 12), np.int32)}})
    tokenizer = envs.get_tokenizer()
    for row in range(40):
        words = tokenizer.decode([i for i in batch["obs"]["subgoal"][row] if i], skip_special_tokens=True)
        expected = "" if rows["episode_id"][row] % 4 == 0 else rows["plan"][row][rows["subgoal_index"][row]]
        assert words == expected
    np.testing.assert_array_equal(batch["subgoal_done"], rows["subgoal_done"])
    with pytest.raises(ValueError, match="subgoal labels"):
        subgoal_supervision(demos.remove_columns("subgoal_done"), tokenizer=envs.get_tokenizer())


def _agent(env, seed=0):
    return Agent.from_preset("tiny", env.spec, key=jax.random.key(seed))


def test_the_planning_actor_feeds_the_current_subgoal_and_moves_on_when_the_head_fires():
    env, params = envs.make("sima2/Sequence-v0")
    agent = _agent(env)
    obs, _ = jax.jit(env.reset)(jax.random.key(1), params)  # one program, not one per operation
    tokens = plan_tokens(agent)
    written = [*agent.tokenize("go to the red key")[:5], tokens.separator, *agent.tokenize("open the door")[:3],
               tokens.eos]
    plan = split_plan_ids(jnp.asarray(written, jnp.int32), tokens, 8, obs["instruction"].shape[0])
    assert int(plan.count) == 2
    episode = PlanEpisode(
        instruction=agent.instruction_features(obs["instruction"]),
        plan=plan,
        subgoals=jax.vmap(agent.subgoal_features)(plan.subgoals),
    )
    for bias, expected in ((20.0, [1, 1, 1]), (-20.0, [0, 0, 0])):
        head = agent.policy.subgoal_done_out
        head = eqx.tree_at(lambda h: (h.weight, h.bias), head, (jnp.zeros_like(head.weight), jnp.full((1,), bias)))
        fixed = eqx.tree_at(lambda a: a.policy.subgoal_done_out, agent, head)
        actor = PlanningActor.of(fixed, deterministic=True)
        carry, seen = actor.initial_carry(), []
        for step in range(3):
            subgoal = jax.tree.map(lambda x, c=carry: x[c[1].index], episode.subgoals)
            expected_action, _, _ = fixed.act(jax.random.key(step), obs, carry[0], deterministic=True,
                                              instruction=episode.instruction, subgoal=subgoal)
            action, carry, _ = actor(jax.random.key(step), obs, None, None, carry, episode)
            np.testing.assert_array_equal(action, expected_action)
            seen.append(int(carry[1].index))
        assert seen == expected


def test_only_an_agent_with_a_causal_lm_over_the_instruction_ids_writes_plans():
    env, _ = envs.make("sima2/GoTo-v0")
    agent = _agent(env)
    encoder = eqx.tree_at(lambda a: a.planner.backbone, agent, object())  # not a causal LM
    with pytest.raises(ValueError, match="cannot write plans"):
        plan_tokens(encoder)


def test_a_tiny_planner_learns_to_write_the_worlds_plans_inside_the_compiled_rollout():
    """The tiny preset's planner, trained on the plans of 64 expert episodes (GoTo and Pickup worlds), writes
    through `write_plan` (the run-time path) the expert's exact subgoal sequence for fresh worlds of those
    families; untrained it writes none right (measured: 0.00 before, 1.00 after)."""
    env, params = envs.make("sima2/GoTo-v0")
    agent = _agent(env)
    demos = record_demonstrations(env, params, jax.random.key(3), num_envs=32, num_steps=48)
    before = plan_accuracy(agent, env, params, jax.random.key(4), num_worlds=64)
    transform, loss_fn = plan_supervision(envs.get_tokenizer(), demos)
    starts = np.flatnonzero(np.asarray(demos["step_id"]) == 0).tolist()  # one row per episode
    batch = transform(demos.select_columns(["instruction_ids", "plan"])[starts], {})
    batch = {"plan": jax.tree.map(jnp.asarray, batch["plan"])}
    params_, static = eqx.partition(agent, agent.trainable_filter())
    optimiser = optax.adam(3e-3)

    @jax.jit
    def train(params_):
        def step(carry, _):
            p, state = carry
            loss, grads = jax.value_and_grad(lambda p: loss_fn(eqx.combine(p, static), batch))(p)
            updates, state = optimiser.update(grads, state, p)
            return (optax.apply_updates(p, updates), state), loss

        (p, _), losses = jax.lax.scan(step, (params_, optimiser.init(params_)), None, length=300)
        return p, losses

    trained, losses = train(params_)
    assert losses[-1] < 0.1 * losses[0]
    after = plan_accuracy(eqx.combine(trained, static), env, params, jax.random.key(4), num_worlds=64)
    assert before <= 0.1 and after >= 0.9, (before, after)


def test_recorded_episodes_carry_the_written_plan_and_the_subgoal_of_each_step(tmp_path):
    from PIL import Image

    from sima2.training.episodes import record_episodes, write_episode_gif

    env, params = envs.make("sima2/Sequence-v0")
    agent = _agent(env)
    head = agent.policy.subgoal_done_out
    always = eqx.tree_at(lambda h: (h.weight, h.bias), head, (jnp.zeros_like(head.weight), jnp.full((1,), 20.0)))
    agent = eqx.tree_at(lambda a: a.policy.subgoal_done_out, agent, always)
    (episode,) = record_episodes(agent, env, params, jax.random.key(0), 1, 6, use_plan=True)
    assert len(episode.subgoal_per_step) == episode.length
    # The untrained planner's plan, whatever it is, is what the steps index into.
    assert all(0 <= k < max(1, len(episode.plan)) for k in episode.subgoal_per_step)
    (plain,) = record_episodes(agent, env, params, jax.random.key(0), 1, 6)
    assert plain.plan == () and plain.subgoal_per_step == ()
    path = write_episode_gif(episode, tmp_path / "plan.gif")
    with Image.open(path) as image:
        assert image.n_frames > episode.length

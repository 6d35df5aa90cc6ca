"""Bringing your own environment, through the public API only: a BabyAI env with its scripted expert is recorded,
cloned, fine-tuned, evaluated on disjoint seeds and improved with DAgger (smoke sizes)."""

import dataclasses
import json

import gymnasium as gym
import jax
import numpy as np
import pytest

from sima2.cli import main
from sima2.envs.adapter import GymnasiumAdapter
from sima2.policy import Agent
from sima2.training import (
    FEATURES,
    DaggerConfig,
    dagger,
    evaluate_gym,
    gym_run_config,
    record_demonstrations,
    run_episodes,
)

pytest.importorskip("minigrid")
from sima2.envs.minigrid import babyai_expert, rgb_pixels  # noqa: E402

ENV_ID = "minigrid:BabyAI-GoToRedBallNoDists-v0"


def make_env() -> gym.Env:
    return rgb_pixels(gym.make(ENV_ID))


def adapter(num_envs: int = 2) -> GymnasiumAdapter:
    return GymnasiumAdapter(make_env, num_envs=num_envs, image_size=(32, 32), instruction_length=8)


def test_each_episode_gets_its_own_seed_and_the_same_seed_gives_the_same_episode():
    env = adapter(2)
    try:
        first = env.reset(episode_seeds=[11, 12, 13])
        np.testing.assert_array_equal(env.episode_seed, [11, 12])
        again = env.reset(episode_seeds=[11, 12])
        np.testing.assert_array_equal(first["image"], again["image"])
        swapped = env.reset(episode_seeds=[12, 11])  # the same frames, swapped
        np.testing.assert_array_equal(swapped["image"][0], first["image"][1])
        # Ending env 0's episode early starts the next seed of the list there, then none are left.
        env.reset(episode_seeds=[11, 12, 13])
        restarted = env.restart(np.array([True, False]))
        np.testing.assert_array_equal(env.episode_seed, [13, 12])
        env.restart(np.array([True, False]))
        np.testing.assert_array_equal(env.episode_seed, [-1, 12])
        assert restarted["image"].shape == (2, 32, 32, 3)
        with pytest.raises(ValueError, match="not both"):
            env.reset(seed=0, episode_seeds=[1])
    finally:
        env.close()


def test_one_recorder_writes_the_expert_in_any_gymnasium_env_as_the_same_rows():
    rows = record_demonstrations(make_env, seeds=range(6), expert=babyai_expert, num_envs=3, only_successful=True)
    assert rows.features == FEATURES
    ids = np.asarray(rows["episode_id"])
    assert sorted(set(ids.tolist())) == list(range(6))  # the bot finishes every episode of this level
    assert all(text == "go to the red ball" for text in rows["instruction"])
    # The expert's native MiniGrid actions became sima2 factors through the action map's inverse.
    actions = np.asarray(rows["action"])
    assert actions.shape[1] == 3 and set(actions[:, 0].tolist()) <= {0, 1, 2} and (actions[:, 1:] == 0).all()
    again = record_demonstrations(make_env, seeds=range(6), expert=babyai_expert, num_envs=2)
    np.testing.assert_array_equal(np.asarray(again["action"]), actions)  # per-episode seeds: same episodes
    with pytest.raises(ValueError, match="expert=make_expert and seeds="):
        record_demonstrations(make_env, expert=babyai_expert)


def test_the_agent_drives_and_the_expert_labels_every_visited_state():
    env = adapter(2)
    agent = Agent.from_preset("tiny", env.spec, key=jax.random.key(0))
    try:
        episodes = run_episodes(env, seeds=[3, 4], agent=agent, expert=babyai_expert, max_episode_steps=12)
        expert_only = run_episodes(env, seeds=[3, 4], expert=babyai_expert)
    finally:
        env.close()
    assert [e.seed for e in episodes] == [3, 4]
    for e in episodes:
        assert e.labels is not None and e.labels.shape == e.actions.shape and e.length <= 12
    # The expert alone executes its own labels; with the untrained agent driving, visits differ.
    for e in expert_only:
        np.testing.assert_array_equal(e.actions, e.labels)
        assert e.success


def test_bad_expert_actions_and_seeds_are_refused_with_what_and_where():
    env = adapter(1)
    try:
        with pytest.raises(ValueError, match="seed 5, step 0: the expert returned None"):
            run_episodes(env, seeds=[5], expert=lambda e: lambda obs, executed: None)
        with pytest.raises(ValueError, match="seed 5, step 0: .*native action 9 is not in the action table"):
            run_episodes(env, seeds=[5], expert=lambda e: lambda obs, executed: 9)
        with pytest.raises(ValueError, match="seed 5, step 0: expected 3 integer factors"):
            run_episodes(env, seeds=[5], expert=lambda e: lambda obs, executed: [1, 2], expert_actions="factors")
        with pytest.raises(ValueError, match="seeds must be >= 0"):
            run_episodes(env, seeds=[-1], expert=babyai_expert)
        with pytest.raises(ValueError, match="seeds repeat"):
            run_episodes(env, seeds=[1, 1], expert=babyai_expert)
        with pytest.raises(ValueError, match="needs both agent= and expert="):
            run_episodes(env, seeds=[1], expert=babyai_expert, expert_share=0.5)
    finally:
        env.close()


def test_train_on_a_gymnasium_env_from_the_cli_then_evaluate_on_fresh_seeds(tmp_path):
    out = tmp_path / "run"
    code = main([
        "train", "--env", ENV_ID, "--expert", "sima2.envs.minigrid:babyai_expert",
        "--obs-wrapper", "sima2.envs.minigrid:rgb_pixels", "--preset", "tiny", "--out", str(out),
        "demo_episodes=8", "eval_episodes=4", "num_envs=4", "bc.num_updates=6", "bc.bc.batch_size=4",
        "bc.bc.sequence_length=4", "bc.checkpoint.every=3", "ppo.num_updates=1", "ppo.ppo.rollout_length=8",
        "ppo.ppo.num_minibatches=2", "bc.monitor.progress=False", "ppo.monitor.progress=False",
        "augmentation_check_updates=2",
    ])
    assert code == 0
    summary = json.loads((out / "eval.json").read_text())
    assert summary["episodes"] == 4 and summary["demonstration_episodes"] == 8
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [e["seed"] for e in episodes] == list(range(1_000_000, 1_000_004))  # never a demonstration seed
    assert len(list((out / "gifs").glob("*.gif"))) == 4
    assert {"success_rate", "random_policy_success_rate", "episode_length", "return"} <= set(summary)
    config = json.loads((out / "pipeline.json").read_text())  # the augmentation cloning used, and why
    assert config["bc"]["bc"]["crop_padding"] in (0, gym_run_config("tiny").bc.bc.crop_padding)
    assert "held-out greedy action accuracy" in config["augmentation_check"]
    for stage in ("bc", "ppo"):  # each stage's agent loads back
        Agent.from_pretrained(out / stage / "final")
    # `sima2 eval` scores the run's agent on its env again (its env and wrapper from pipeline.json), in a folder
    # of its own: the run's eval.json stays as training wrote it.
    assert main(["eval", str(out), "--episodes", "2", "--seed", "500"]) == 0
    again = out / "eval-minigrid-BabyAI-GoToRedBallNoDists-v0-500"
    assert [json.loads(line)["seed"] for line in (again / "episodes.jsonl").read_text().splitlines()] == [500, 501]
    assert json.loads((out / "eval.json").read_text()) == summary


def test_dagger_and_plain_cloning_gather_the_same_label_budget(tmp_path):
    env = adapter(2)
    agent = Agent.from_preset("tiny", env.spec, key=jax.random.key(0))
    bc = gym_run_config("tiny", ["bc.num_updates=2", "bc.bc.batch_size=2", "bc.bc.sequence_length=2",
                                 "bc.monitor.progress=False"]).bc
    config = DaggerConfig(rounds=2, labels_per_round=10, eval_episodes=2, bc=bc)
    try:
        _, records = dagger(agent, env, babyai_expert, config, out=tmp_path / "dagger")
        _, plain = dagger(agent, env, babyai_expert, dataclasses.replace(config, expert_share_decay=1.0),
                          out=tmp_path / "plain")
        evaluation = evaluate_gym(agent, env, [7, 8])
    finally:
        env.close()
    assert [r["expert_labels"] for r in records] == [r["expert_labels"] for r in plain] == [10, 20]
    assert [r["beta"] for r in records] == [1.0, 0.5] and [r["beta"] for r in plain] == [1.0, 1.0]
    assert json.loads((tmp_path / "dagger" / "dagger.json").read_text()) == records
    assert [e.seed for e in evaluation.episodes] == [7, 8]


def test_the_built_in_world_goes_through_the_same_recorder_with_its_own_expert():
    from sima2.envs.gym_env import world_expert

    # A MultiDiscrete env's native actions are sima2's factors already.
    rows = record_demonstrations("sima2/GoTo-v0", seeds=range(3), expert=world_expert, num_envs=3,
                                 only_successful=True)
    assert rows.features == FEATURES and sorted(set(rows["episode_id"])) == [0, 1, 2]
    # Instruction ids and proprio pass through; the text decoded from the ids is the world's own.
    _, info = gym.make("sima2/GoTo-v0").reset(seed=0)
    assert rows[0]["instruction"] == info["instruction_text"] and len(rows[0]["proprio"]) > 4
    env = GymnasiumAdapter.of("sima2/GoTo-v0", num_envs=1)
    try:
        assert env.action_nvec == tuple(gym.make("sima2/GoTo-v0").action_space.nvec.tolist())
        with pytest.raises(ValueError, match="out of range"):
            env.action_map.inverse([[99, 0, 0]])
    finally:
        env.close()

"""`sima2 eval/demos/play` on a tiny run folder, and `find_world`, the instruction parser behind `play`.

The run folder is what `sima2 train` leaves (a saved agent in `final/` and `pipeline.json`), built directly
from a tiny untrained agent so that no test runs the whole pipeline.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _specs import world_spec
from PIL import Image

import sima2.envs as envs
from sima2.cli import main
from sima2.envs import vocabulary as voc
from sima2.envs import world
from sima2.envs.instruct import Stage, Target, encode_instruction, find_world, parse_instruction
from sima2.envs.world import entity_colours, entity_types
from sima2.policy import Agent
from sima2.training.config import config_to_dict
from sima2.training.pipeline import pipeline_config

LEVEL = "sima2/GoTo-v0"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    agent = Agent.from_preset("tiny", world_spec(level=LEVEL), key=jax.random.key(0))
    agent.save_pretrained(run / "final")
    config = pipeline_config("tiny", [f"level={LEVEL}", "eval.num_envs=2", "eval.num_episodes=2",
                                      "eval.max_steps=32"])
    (run / "pipeline.json").write_text(json.dumps(config_to_dict(config)))
    return run


def _gif_frames(path) -> int:
    with Image.open(path) as image:
        assert image.format == "GIF"
        return image.n_frames


# --- the commands ----------------------------------------------------------------------------------------
@pytest.mark.slow  # four evaluation compiles (one per split) and the report's rollout
def test_eval_writes_eval_json_and_report(run_dir, capsys):
    assert main(["eval", str(run_dir), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    report = json.loads((run_dir / "eval.json").read_text())
    level = json.loads((run_dir / "pipeline.json").read_text())["level"]
    splits = envs.make(level, image_size=16)[0].splits  # heldout_compositions only with two-step levels
    assert set(report["success_rate"]) == set(splits)
    for split in splits:
        assert 0.0 <= report["success_rate"][split] <= 1.0
        assert report["episodes"][split] <= 2
        assert f"| {split} |" in out
    summary = (run_dir / "summary.md").read_text()
    assert all(split in summary for split in splits)
    assert "evaluation (sima2 eval)" in summary
    with Image.open(run_dir / "plots" / "success.png") as image:
        assert image.format == "PNG"
    gifs = sorted((run_dir / "gifs").glob("*.gif"))
    assert len(gifs) == 2 * len(splits)
    assert all(_gif_frames(path) > 1 for path in gifs)


def test_play_writes_gif_of_the_instruction(run_dir, tmp_path, capsys):
    gif = tmp_path / "play.gif"
    assert main(["play", str(run_dir), "--instruction", "Go to the red ball.", "--out", str(gif),
                 "--max-steps", "5"]) == 0
    out = capsys.readouterr().out
    assert str(gif) in out and "after" in out
    steps = int(out.split(" after ")[1].split()[0])
    assert 1 <= steps <= 5
    assert _gif_frames(gif) > 1


def test_play_reads_free_text_with_the_task_given_apart(run_dir, tmp_path, capsys):
    gif = tmp_path / "free.gif"
    text = "Could you wander over towards that crimson sphere?"
    assert main(["play", str(run_dir), "--instruction", text, "--task", "go to the red ball", "--out", str(gif),
                 "--max-steps", "3"]) == 0
    assert str(gif) in capsys.readouterr().out and _gif_frames(gif) > 1
    # Neither the instruction nor a --task names a task: the error says so and shows how.
    assert main(["play", str(run_dir), "--instruction", "do the thing over there"]) == 2
    err = capsys.readouterr().err
    assert "--task" in err and "go to the red ball" in err and len(err.strip().splitlines()) == 1
    assert main(["play", str(run_dir), "--instruction", "anything", "--task", "dance with the ball"]) == 2
    assert "--task must be an instruction the world understands" in capsys.readouterr().err


def test_demos_writes_a_loadable_dataset(tmp_path, capsys):
    import datasets

    out_dir = tmp_path / "demos"
    assert main(["demos", "--level", LEVEL, "--out", str(out_dir), "--envs", "2", "--steps", "40"]) == 0
    printed = capsys.readouterr().out
    rows, episodes = int(printed.split(" rows, ")[0].split()[-1]), int(printed.split(" rows, ")[1].split()[0])
    dataset = datasets.load_dataset(str(out_dir), split="train")
    assert len(dataset) == rows > 0
    assert len(dataset.unique("episode_id")) == episodes >= 2
    for text in dataset.unique("instruction"):
        parse_instruction(text)  # every recorded instruction is in the language


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "not a sima2 run folder" in err and "final/agent_config.json" in err and "pipeline.json" in err
    assert len(err.strip().splitlines()) == 1

    # `play` checks the instruction before it loads the agent, so a run folder's files suffice here.
    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "final" / "agent_config.json").write_text("{}")
    (run_dir / "pipeline.json").write_text(json.dumps({"level": LEVEL, "image_size": 64}))

    assert main(["play", str(run_dir), "--instruction", "dance with the red ball"]) == 2
    err = capsys.readouterr().err
    assert "cannot parse" in err and "dance" in err and "go to {A}" in err

    assert main(["play", str(run_dir), "--instruction", "open the red door"]) == 2
    err = capsys.readouterr().err
    assert "no world of sima2/GoTo-v0" in err and "sima2/Open-v0" in err

    assert main(["demos", "--level", "sima2/Nowhere-v0", "--out", str(tmp_path / "d")]) == 2
    assert "unknown level" in capsys.readouterr().err


# --- parsing and find_world ------------------------------------------------------------------------------
def _fill(template: str, a: str, b: str = "") -> str:
    return template.replace("{A}", a).replace("{B}", b)


def test_parse_every_template_of_the_language():
    red_ball, blue_door, grey_crate = Target(voc.BALL, 0), Target(voc.DOOR, 2), Target(voc.BOX, 5)
    for kind, templates in voc.CLAUSE_TEMPLATES.items():
        target = blue_door if kind == voc.OPEN else red_ball
        expected = Stage(kind, target, grey_crate if kind == voc.PUTNEXT else None)
        for template in sum(templates, ()):
            text = _fill(template, target.describe(), "a grey crate")
            assert parse_instruction(text) == (expected,), text
    first, then = Stage(voc.GOTO, red_ball), Stage(voc.OPEN, blue_door)
    for template in sum(voc.SEQUENCE_TEMPLATES, ()):
        text = template.replace("{X}", "go to the red sphere").replace("{Y}", "swing open the blue doorway")
        assert parse_instruction(text) == (first, then), text
        assert parse_instruction(text.replace(" ,", "")) == (first, then)  # commas are optional
    assert parse_instruction("Go to the red ball behind you!") == (Stage(voc.GOTO, Target(voc.BALL, 0, 2)),)
    assert parse_instruction("please go to the red ball now") == (Stage(voc.GOTO, red_ball),)
    # The held-out wording's words name the same colours and objects.
    assert parse_instruction("grab hold of the crimson orb") == (Stage(voc.PICKUP, red_ball),)
    for bad in ("dance with the red ball", "go to the red", "go to the pink ball", "", "go to the red ball then"):
        with pytest.raises(ValueError, match="cannot parse|no word of the task language"):
            parse_instruction(bad)


@pytest.mark.slow  # compiles world generation for a level no other test here uses
def test_parser_reads_every_instruction_the_world_writes():
    level = envs.level_from_id("sima2/Sequence-v0")
    generate = jax.jit(jax.vmap(world.generate, in_axes=(0, None, None)), static_argnums=1)
    keys = jax.random.split(jax.random.key(3), 32)
    for split in ("train", "heldout_paraphrases", "heldout_compositions"):
        states = generate(keys, level, jnp.int32(envs.SPLITS.index(split)))
        for i in range(len(keys)):
            state = jax.tree.map(lambda x, i=i: np.asarray(x[i]), states)
            types, colours = np.asarray(entity_types(state)), np.asarray(entity_colours(state))
            stages = parse_instruction(voc.decode_ids(state.instruction))
            assert len(stages) == int(state.num_stages)
            for t, stage in enumerate(stages):
                a = int(state.stage_a[t])
                assert (stage.kind, stage.a.type, stage.a.colour) == (int(state.stage_kind[t]), types[a], colours[a])


def _assert_world_has(obs, state, text: str, stages: tuple[Stage, ...]) -> None:
    types, colours = np.asarray(entity_types(state)), np.asarray(entity_colours(state))
    assert int(state.num_stages) == len(stages)
    for t, stage in enumerate(stages):
        a = int(state.stage_a[t])
        assert (int(state.stage_kind[t]), types[a], colours[a]) == (stage.kind, stage.a.type, stage.a.colour)
    np.testing.assert_array_equal(obs["instruction"], encode_instruction(text))
    np.testing.assert_array_equal(state.instruction, encode_instruction(text))


def test_find_world_poses_the_parsed_task_in_the_users_words():
    env, params = envs.make(LEVEL)
    key = jax.random.key(1)
    for text in ("go to the red ball", "Navigate to the blue crate", "make your way to a yellow key"):
        obs, state = find_world(env, params, text, key)
        _assert_world_has(obs, state, text, parse_instruction(text))
        assert env.instruction_text(state) == text.lower()
    np.testing.assert_array_equal(obs["image"], env.render(state))
    # Words outside the language are skipped by the parser but reach the agent as [UNK].
    obs, state = find_world(env, params, "go to the red ball quickly now", key)
    _assert_world_has(obs, state, "go to the red ball quickly now", parse_instruction("go to the red ball"))
    assert voc.vocabulary()[int(obs["instruction"][5])] == "[UNK]"
    with pytest.raises(ValueError, match="heldout_pairs"):
        find_world(env, params, "go to the green ball", key)
    with pytest.raises(ValueError, match="sima2/Open-v0"):
        find_world(env, params, "open the red door", key)
    with pytest.raises(ValueError, match="cannot parse"):
        find_world(env, params, "go to the red", key)


def test_find_world_for_a_sequence():
    env, params = envs.make("sima2/Sequence-v0")
    text = "pick up the yellow key after you open the red door"  # open, then pick up: a held-out composition
    with pytest.raises(ValueError, match="held-out way, found only in the heldout_compositions split"):
        find_world(env, params, text, jax.random.key(2))
    obs, state = find_world(env, env.default_params("heldout_compositions"), text, jax.random.key(2))
    _assert_world_has(obs, state, text, (Stage(voc.OPEN, Target(voc.DOOR, 0)), Stage(voc.PICKUP, Target(voc.KEY, 4))))
    with pytest.raises(ValueError, match="at most 24"):
        encode_instruction(" ".join(["go to the red ball ,"] * 5))

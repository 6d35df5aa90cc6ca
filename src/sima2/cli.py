"""The `sima2` command line: `sima2 --version`, `sima2 convert SRC DST`, `sima2 train` (the built-in world, a
gymnasium env with `--env`, the team worlds with `--team`), and the commands on a run folder (`sima2 eval
RUN`, `sima2 play RUN --instruction ...`) and on demonstrations (`sima2 demos`).

Over 400 lines because every command's argument parsing and its few lines of dispatch into the library
belong together here; the work itself lives in `sima2.training` and `sima2.envs`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import sima2
from sima2.presets import PRESETS


def _convert(args: argparse.Namespace) -> int:
    from sima2.interop.convert import convert_checkpoint

    out = convert_checkpoint(
        args.src,
        args.dst,
        dtype=args.dtype,
        revision=args.revision,
        allow_pickle=args.allow_pickle,
    )
    print(f"wrote {out}")
    return 0


def _load_callable(spec: str, option: str) -> Any:
    """`module:attribute` (e.g. `minigrid.wrappers:RGBImgPartialObsWrapper`) -> the object, or a clear error."""
    import importlib

    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"{option} {spec!r} must be module:callable, e.g. mypackage.experts:make_expert")
    target = importlib.import_module(module_name)
    for part in name.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{option} {spec!r}: {target.__name__ if hasattr(target, '__name__') else target} "
                             f"has no attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{option} {spec!r} is not callable")
    return target


def _train_gym(args: argparse.Namespace) -> int:
    from sima2.training.gym_pipeline import gym_run_config, train_gym

    if args.expert is None:
        raise ValueError("--env needs --expert module:callable (make_expert(env) -> policy(observation, executed) "
                         "-> action)")
    unused = [flag for flag, value in (("--vision", args.vision), ("--planner", args.planner),
                                       ("--text-encoder", args.text_encoder)) if value is not None]
    if unused:
        raise ValueError(f"{', '.join(unused)} cannot be combined with --env: the agent is the preset's, sized "
                         "from the env")
    expert = _load_callable(args.expert, "--expert")
    wrapper = _load_callable(args.obs_wrapper, "--obs-wrapper") if args.obs_wrapper else None
    out = args.out or f"runs/{args.env.split(':')[-1]}"
    summary = train_gym(args.env, expert, out=out, config=gym_run_config(args.preset, args.overrides),
                        obs_wrapper=wrapper, resume=args.resume)
    print(json.dumps(summary, indent=2))
    print(f"run folder: {out}")
    return 0


def _train_team(args: argparse.Namespace) -> int:
    from sima2.training.team_pipeline import team_run_config, train_team

    if args.env is not None:
        raise ValueError("--team trains in the built-in team worlds: it cannot be combined with --env")
    out = args.out or "runs/team"
    summary = train_team(out, team_run_config(args.preset, args.overrides), resume=args.resume)
    print(json.dumps(summary["families"], indent=2))
    print(f"run folder: {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import os

    from sima2.training.pipeline import train

    if args.team:
        return _train_team(args)
    if args.env is not None:
        return _train_gym(args)

    if "SIMA2_COORDINATOR" in os.environ:  # one process per host: join them before any device is touched
        from sima2.training.parallel import initialize_distributed

        initialize_distributed()

    out = args.out or f"runs/{args.preset}"
    report = train(args.preset, out, resume=args.resume, overrides=args.overrides, vision=args.vision,
                   planner=args.planner, text_encoder=args.text_encoder, report=not args.no_report)
    print(json.dumps(report["success_rate"], indent=2))
    print(f"run folder: {out}")
    return 0


def _run_folder(run: str) -> tuple[Path, dict[str, Any]]:
    """(folder, pipeline config) of a run folder written by `sima2 train`; its agent is in `folder/final`."""
    from sima2.policy.agent import AGENT_CONFIG_NAME

    folder = Path(run)
    needed = [folder / "final" / AGENT_CONFIG_NAME, folder / "pipeline.json"]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a sima2 run folder (what `sima2 train --out {folder}` writes): "
            f"missing {' and '.join(missing)}"
        )
    return folder, json.loads((folder / "pipeline.json").read_text())


def _eval_gym(args: argparse.Namespace, run: dict[str, Any]) -> int:
    """A run folder's agent (or an agent folder) on a gymnasium env, one episode per seed, written to
    `<run>/eval-<env>-<first seed>/` so the run's own files stay as they were."""
    import jax

    from sima2.envs.adapter import GymnasiumAdapter
    from sima2.policy import Agent
    from sima2.training.gym_pipeline import EVAL_SEED_START
    from sima2.training.host_episodes import evaluate_gym

    folder = Path(args.run)
    candidates = [folder / "final", folder / "ppo" / "final", folder / "bc" / "final", folder]
    found = [c for c in candidates if (c / "agent_config.json").is_file()]
    if not found:
        raise FileNotFoundError(f"no agent in {folder}: expected final/, ppo/final/, bc/final/ or an agent folder")
    agent = Agent.from_pretrained(found[0])
    env_id = args.env or run["env"]
    wrapper_name = args.obs_wrapper or (run.get("obs_wrapper") if env_id == run.get("env") else None)
    wrapper = _load_callable(wrapper_name, "--obs-wrapper") if wrapper_name else None
    image = agent.vision.config.image_size
    num = args.episodes or 100
    if num < 1:
        raise ValueError(f"--episodes must be positive, got {num}")
    adapter = GymnasiumAdapter(
        lambda: wrapper(gym_make(env_id)) if wrapper else gym_make(env_id), num_envs=min(8, num),
        image_size=(image, image), instruction_length=int(run.get("instruction_length", 16)),
    )
    start = EVAL_SEED_START if args.seed is None else args.seed
    out = folder / f"eval-{env_id.replace(':', '-').replace('/', '-')}-{start}"
    try:
        result = evaluate_gym(agent, adapter, range(start, start + num), deterministic=not args.sampled,
                              key=jax.random.key(start), gif_dir=out / "gifs", progress=True)
    finally:
        adapter.close()
    result.write(out)
    print(json.dumps(result.summary, indent=2))
    print(f"{found[0]} on {env_id}{f' ({wrapper_name})' if wrapper_name else ''}: wrote {out / 'eval.json'} and "
          f"{out / 'episodes.jsonl'}")
    return 0


def gym_make(env_id: str) -> Any:
    """`gymnasium.make(env_id)` (an id of the form `module:Id` imports the module that registers it)."""
    import gymnasium

    return gymnasium.make(env_id)


def _eval_team(args: argparse.Namespace) -> int:
    """`sima2 eval RUN` on a team run: the team metrics again, into its eval.json."""
    from sima2.training.team_pipeline import evaluate_team_run

    if args.episodes is not None and args.episodes < 1:
        raise ValueError(f"--episodes must be positive, got {args.episodes}")
    summary = evaluate_team_run(args.run, num_worlds=args.episodes, seed=args.seed)
    for name, figures in summary["families"].items():
        print(f"{name}: self-play {figures['self_play']:.3f}, cross-play {figures['cross_play']:.3f}, "
              f"solo {figures['solo']:.3f}")  # fmt: skip
    print(f"wrote {Path(args.run) / 'eval.json'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import jax

    pipeline = Path(args.run) / "pipeline.json"
    run = json.loads(pipeline.read_text()) if pipeline.is_file() else {}
    if args.env is not None or "expert" in run:  # a gymnasium env, or a run trained on one (`train --env`)
        return _eval_gym(args, run)
    from sima2.training.team_pipeline import TEAM_JOB

    if run.get("job") == TEAM_JOB:
        return _eval_team(args)

    import sima2.envs as envs
    from sima2.policy import Agent
    from sima2.training.config import EvalConfig
    from sima2.training.evaluate import evaluate_world
    from sima2.training.report import evaluation_report, stage_timings, success_table, write_report

    folder, config = _run_folder(args.run)
    agent = Agent.from_pretrained(folder / "final")
    eval_config = EvalConfig(**config["eval"])
    if args.episodes is not None:
        if args.episodes < 1:
            raise ValueError(f"--episodes must be positive, got {args.episodes}")
        eval_config = dataclasses.replace(
            eval_config, num_episodes=args.episodes, num_envs=min(eval_config.num_envs, args.episodes)
        )
    seed = config["seed"] if args.seed is None else args.seed
    key_eval, key_report = jax.random.split(jax.random.key(seed))
    env, _ = envs.make(config["level"], image_size=config["image_size"], tokenizer=agent.config.tokenizer)
    timings = {k: v for k, v in stage_timings(folder).items() if k != "evaluation"}  # before eval.json changes
    levels = f" x {len(env.levels)} levels" if len(env.levels) > 1 else ""
    print(f"evaluating {folder / 'final'} on {config['level']}: {len(env.splits)} splits{levels}, "
          f"up to {eval_config.num_episodes} episodes each", flush=True)
    start = time.perf_counter()
    results = evaluate_world(agent, env, key_eval, eval_config)
    timings["evaluation (sima2 eval)"] = time.perf_counter() - start
    report = evaluation_report(results, preset=config["preset"], level=config["level"])
    (folder / "eval.json").write_text(json.dumps(report, indent=2, default=float))
    print(success_table(report))
    print(f"wrote {folder / 'eval.json'}")
    if not args.no_report:
        written = write_report(folder, agent, env, report, key_report, timings=timings)
        print(f"wrote {written['summary']} ({len(written['plots'])} plots, {len(written['gifs'])} GIFs)")
    return 0


def _demos(args: argparse.Namespace) -> int:
    import jax

    import sima2.envs as envs
    from sima2.training.data import record_demonstrations, save_demonstrations

    env, params = envs.make(args.level, split=args.split, image_size=args.image_size)
    print(f"recording the expert in {args.envs} worlds of {args.level} ({args.split}) for {args.steps} steps",
          flush=True)
    dataset = record_demonstrations(env, params, jax.random.key(args.seed), num_envs=args.envs,
                                    num_steps=args.steps)
    if len(dataset) == 0:
        raise ValueError(
            f"no episode finished within --steps {args.steps} (episodes of {args.level} last up to "
            f"{env.max_steps} steps); raise --steps"
        )
    path = save_demonstrations(dataset, args.out, split=args.split)
    episodes = len(dataset.unique("episode_id"))
    print(f"{len(dataset)} rows, {episodes} episodes -> {path}")
    print(f"load with: datasets.load_dataset({str(args.out)!r}, split={args.split!r})")
    return 0


def _play(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import sima2.envs as envs
    from sima2.envs.instruct import find_world, heldout_composition, heldout_pairs, levels_with_task
    from sima2.policy import Agent
    from sima2.training.episodes import play_episode, write_episode_gif
    from sima2.training.pipeline_agent import writes_plans

    folder, config = _run_folder(args.run)
    stages = _play_task(args.instruction, args.task)  # fails here, before any loading or compiling
    task = args.task or args.instruction
    held_out = "heldout_pairs" if heldout_pairs(stages) else "heldout_compositions" if heldout_composition(stages) \
        else "train"
    split = args.split or held_out
    level = args.level or config["level"]
    key_world, key_run = jax.random.split(jax.random.key(args.seed))
    levels = envs.levels_from_id(level)
    if len(levels) > 1:  # an agent of several levels plays the task in the easiest of them that poses it
        posing = set(levels_with_task(stages, key_world))
        candidates = [lv.gym_id for lv in levels if lv.gym_id in posing]
        if not candidates:
            raise ValueError(f"no level of {level} poses '{task}'; see `sima2 play --help` for the grammar")
        level = candidates[0]
    env, params = envs.make(level, split=split, image_size=config["image_size"])
    max_steps = env.max_steps if args.max_steps is None else args.max_steps
    if max_steps < 1:
        raise ValueError(f"--max-steps must be positive, got {max_steps}")
    params = dataclasses.replace(params, max_steps=jnp.int32(max_steps))
    _, state = find_world(env, params, task, key_world)  # before loading the agent: a task no world has fails fast
    agent = Agent.from_pretrained(folder / "final")
    ids = agent.tokenize(args.instruction)  # the user's own text, as the agent reads it
    tokenized = agent.config.tokenizer is not None  # then as many ids as the agent reads (built for all levels)
    env, _ = envs.make(level, split=split, image_size=config["image_size"], tokenizer=agent.config.tokenizer,
                       instruction_length=agent.config.instruction_length if tokenized else None)
    obs = env.observe(state)
    # The agent encodes the instruction once, from the episode's first observation: the user's text.
    padded = np.full(env.spec.observation.instruction.shape, env.spec.observation.instruction_pad_id, np.int32)
    padded[: ids.shape[0]] = ids
    obs = dict(obs, instruction=jnp.asarray(padded))
    # An agent that writes plans writes one for the user's instruction and follows it (drawn in the GIF).
    use_plan = writes_plans(agent) and not args.no_plan
    episode = play_episode(agent, env, params, obs, state, key_run, max_steps, deterministic=not args.sample,
                           use_plan=use_plan)
    episode = dataclasses.replace(episode, instruction=args.instruction)
    out = Path(args.out) if args.out else folder / "play.gif"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_episode_gif(episode, out)
    verdict = {"success": "success", "timeout": "failed (time limit)", "cut": "not finished"}[episode.outcome]
    if episode.plan:
        print("plan: " + " > ".join(episode.plan))
    print(f"{verdict} after {episode.length} steps on {level} ({split}); wrote {out}")
    return 0


def _play_task(instruction: str, task: str | None) -> tuple:
    """The world's task for `sima2 play`: `--task`, else the instruction itself when the grammar parses it."""
    from sima2.envs.instruct import parse_instruction

    if task is not None:
        try:
            return parse_instruction(task)
        except ValueError as err:
            raise ValueError(f"--task must be an instruction the world understands: {err}") from None
    try:
        return parse_instruction(instruction)
    except ValueError as err:
        raise ValueError(
            f"the world cannot tell which task {instruction!r} asks for ({err}). Say it with --task in the "
            f"world's words, e.g. --instruction {instruction!r} --task \"go to the red ball\""
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sima2", description=sima2.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sima2 {sima2.__version__}")
    sub = parser.add_subparsers(dest="command")

    convert = sub.add_parser(
        "convert",
        help="load an HF checkpoint into sima2 and write it back as config.json + model.safetensors",
    )
    convert.add_argument("src", help="local folder, .safetensors/.bin file or Hub repo id")
    convert.add_argument("dst", help="output folder")
    convert.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    convert.add_argument("--revision", default=None)
    convert.add_argument(
        "--allow-pickle", action="store_true", help="allow legacy pickle (.bin/.pt) weights via torch"
    )
    convert.set_defaults(func=_convert)

    train = sub.add_parser(
        "train",
        help="demonstrations -> behaviour cloning -> PPO -> (self-improvement) -> evaluation on the built-in world,"
        " offline",
    )
    train.add_argument("--preset", choices=list(PRESETS), default="cpu-small")
    train.add_argument("--out", default=None, help="run folder (default runs/<preset>)")
    train.add_argument("--resume", action="store_true", help="continue each stage from its last checkpoint")
    train.add_argument("--vision", default=None, help="pretrained vision encoder: HF name or local path")
    train.add_argument("--planner", default=None, help="pretrained causal LM planner: HF name or local path")
    train.add_argument("--text-encoder", default=None, help="pretrained BERT text encoder: HF name or local path")
    train.add_argument("--no-report", action="store_true", help="eval.json only: no plots, GIFs or summary.md")
    train.add_argument("--env", default=None, help="a gymnasium env id instead of the built-in world (module:Id "
                       "imports the module that registers it, e.g. minigrid:BabyAI-GoToRedBallNoDists-v0)")
    train.add_argument("--expert", default=None, help="with --env: module:callable, make_expert(env) -> "
                       "policy(observation, executed) -> native action")
    train.add_argument("--obs-wrapper", default=None, help="with --env: module:callable applied to each env, e.g. "
                       "minigrid.wrappers:RGBImgPartialObsWrapper for pixels")
    train.add_argument("--team", action="store_true", help="the team job: several agents in the built-in team "
                       "worlds (sima2.envs.team), one shared policy cloned from the team expert, then team metrics")
    train.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.bc.batch_size=128")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser(
        "eval", help="evaluate a run folder's final agent on every split; write eval.json and the report"
    )
    evaluate.add_argument("run", help="run folder written by `sima2 train`")
    evaluate.add_argument("--episodes", type=int, default=None, help="episodes per split (default: the run's; a "
                          "team run: worlds per family, split and partner)")
    evaluate.add_argument("--seed", type=int, default=None, help="default: the run's training seed")
    evaluate.add_argument("--no-report", action="store_true", help="only eval.json: no plots, GIFs or summary")
    evaluate.add_argument("--env", default=None, help="evaluate on this gymnasium env id (default for a run of "
                          "`train --env`: its env); one episode per seed from --seed (default 1000000), written to "
                          "<run>/eval-<env>-<seed>/")
    evaluate.add_argument("--obs-wrapper", default=None, help="with --env: module:callable applied to each env")
    evaluate.add_argument("--sampled", action="store_true", help="with --env: sample actions instead of greedy")
    evaluate.set_defaults(func=_eval)

    demos = sub.add_parser("demos", help="record expert demonstrations as a Hugging Face dataset (parquet)")
    demos.add_argument("--level", default="sima2/GoTo-v0")
    demos.add_argument("--out", required=True, help="dataset folder (loadable with datasets.load_dataset)")
    demos.add_argument("--envs", type=int, default=64, help="worlds recorded in parallel")
    demos.add_argument("--steps", type=int, default=128, help="decision steps per world")
    demos.add_argument("--split", default="train", help="train or a held-out split (sima2.envs.SPLITS)")
    demos.add_argument("--image-size", type=int, default=64)
    demos.add_argument("--seed", type=int, default=0)
    demos.set_defaults(func=_demos)

    play = sub.add_parser("play", help="write a GIF of a run's agent following your instruction")
    play.add_argument("run", help="run folder written by `sima2 train`")
    play.add_argument("--instruction", required=True, help='any text the agent reads, e.g. "walk over to the '
                      'crimson sphere"')
    play.add_argument("--task", default=None, help="the task in the world's own words (e.g. \"go to the red "
                      "ball\"); default: the instruction, when the world's grammar parses it")
    play.add_argument("--out", default=None, help="GIF path (default RUN/play.gif)")
    play.add_argument("--seed", type=int, default=0)
    play.add_argument("--level", default=None, help="default: the level the run trained on")
    play.add_argument("--split", default=None, help="default: heldout_pairs if the instruction names a held-out "
                      "colour-object pair, else train")
    play.add_argument("--max-steps", type=int, default=None, help="default: the level's step limit")
    play.add_argument("--sample", action="store_true", help="sample actions instead of taking the most likely")
    play.add_argument("--no-plan", action="store_true",
                      help="act from the instruction alone (by default an agent that writes plans follows its own)")
    play.set_defaults(func=_play)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:  # bad input or an unusable path: one clear line, no traceback
        print(f"sima2 {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

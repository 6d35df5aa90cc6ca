"""The whole job in one call: expert demonstrations -> behaviour cloning -> PPO -> evaluation on every split.

`sima2.training.pipeline.train` is what `sima2 train` runs. This example runs it with the `tiny` preset cut
down further so that it finishes on a CPU in a minute or two, then shows where everything went and reloads
the final agent. Pretrained parts plug in by Hugging Face name or local path, as with the CLI flags.

    python examples/full_pipeline.py [--preset tiny] [--out runs/full_pipeline] [--full]
                                     [--vision NAME_OR_PATH] [--planner NAME_OR_PATH | --text-encoder NAME_OR_PATH]

`--full` runs the preset's own budget (`sima2 train --preset cpu-small` is the real CPU job).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sima2.policy import Agent
from sima2.training.pipeline import train

# Just enough of every stage to see it run (on top of the preset). No self-improvement round: like the
# default `sima2 train`, this runs demonstrations, cloning, PPO and evaluation (examples/self_improvement.py
# shows that stage).
QUICK = ["demo_envs=4", "demo_steps=32", "bc.num_updates=8", "ppo.num_updates=2", "ppo.ppo.num_envs=8",
         "self_improvement.rounds=0", "eval.num_envs=4", "eval.num_episodes=4", "eval.max_steps=32",
         "bc.monitor.progress=False", "bc.monitor.tensorboard=False",
         "ppo.monitor.progress=False", "ppo.monitor.tensorboard=False"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="tiny | cpu-small | base")
    parser.add_argument("--out", default="runs/full_pipeline")
    parser.add_argument("--full", action="store_true", help="the preset's own budget instead of a quick run")
    parser.add_argument("--vision", default=None, help="pretrained vision encoder (HF name or path)")
    parser.add_argument("--planner", default=None, help="pretrained causal LM planner (HF name or path)")
    parser.add_argument("--text-encoder", default=None, help="pretrained BERT text encoder (HF name or path)")
    args = parser.parse_args()

    report = train(args.preset, args.out, overrides=[] if args.full else QUICK, vision=args.vision,
                   planner=args.planner, text_encoder=args.text_encoder)

    out = Path(args.out)
    print("success rate per split:", json.dumps(report["success_rate"]))
    print(f"run folder {out}/:")
    for name, what in [("pipeline.json", "the resolved configuration"),
                       ("demos/", "expert demonstrations (a Hugging Face dataset, parquet)"),
                       ("bc/", "behaviour cloning: config, metrics.jsonl, checkpoints/, final/"),
                       ("ppo/", "PPO: config, metrics.jsonl, checkpoints/, final/"),
                       ("eval.json", "evaluation on the training levels and every held-out split"),
                       ("summary.md", "the report: success table, timings, plots/ and episodes/ GIFs"),
                       ("final/", "the trained agent: agent_config.json + model.safetensors")]:
        print(f"  {name:14s} {what}{'' if (out / name).exists() else '  (not written)'}")
    agent = Agent.from_pretrained(out / "final")
    tokenizer = agent.config.tokenizer or (agent.config.text_bridge and agent.config.text_bridge.tokenizer_name)
    print(f"reloaded the agent: preset {agent.config.preset!r}, vision {agent.vision.config.family} "
          f"{agent.vision.config.hidden_size}d, language {type(agent.planner.backbone).__name__}"
          + (" reading instructions through its tokenizer (saved with it)" if tokenizer else ""))


if __name__ == "__main__":
    main()

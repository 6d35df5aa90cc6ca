"""The run report: learning-curve and success PNGs, GIFs of evaluation episodes, and `summary.md`.

    report = evaluation_report(evaluate_splits(agent, env, splits, key, config), preset=..., level=...)
    write_report(run_dir, agent, env, report, key)      # plots/, gifs/, summary.md in the run folder

Plots are read back from the stages' `metrics.jsonl` files (see `sima2.training.monitor`), so they can be
redrawn for any run folder. Episodes are recorded by the one rollout (`sima2.training.rollout`, without
auto-reset, so each world stops at the end of its first episode) in `sima2.training.episodes`, which draws
the instruction, the agent's plan and the outcome on every frame, with the top-down map beside its view.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from sima2.training.episodes import Episode, play_episode, record_episodes, write_episode_gif, write_episode_gifs

PLOTS_DIR = "plots"
GIFS_DIR = "gifs"
SUMMARY_NAME = "summary.md"
# Stages of a run folder in pipeline order: (name in the summary, file whose time marks the stage's end).
STAGE_MARKS = (
    ("demonstrations", "demos"),
    ("behaviour cloning", "bc/final/model.safetensors"),
    ("ppo", "ppo/final/model.safetensors"),
    ("evaluation", "eval.json"),
)
# The wrappers' interventions per PPO step (see `sima2.training.ppo.rollout_metrics`).
INTERVENTIONS = ("world_rollback_rate", "fallback_step_rate", "action_blocked_rate")
_MEMORY_KEYS = ("host_memory_fraction", "host_rss_gb", "device_memory_fraction")


# --- evaluation results ----------------------------------------------------------------------------------
def evaluation_report(results: Mapping[str, Mapping[str, float]], **fields: Any) -> dict[str, Any]:
    """`eval.json`'s content from `evaluate_splits` results: success rate per split; navigation efficiency
    (optimal / actual path of successful episodes) over all splits' episodes and per split; the full per-split
    metrics under "splits"; for an agent that writes plans, the planner ablation per split (success with its
    own plan and from the instruction alone, and the plans' exact accuracy); plus `fields` (e.g. preset)."""
    by_split = {
        name: float(r["navigation_efficiency"]) for name, r in results.items() if "navigation_efficiency" in r
    }
    weights = {name: max(float(results[name].get("success_rate", 0.0)) * results[name].get("episodes", 1), 1e-9)
               for name in by_split}
    overall = sum(by_split[n] * weights[n] for n in by_split) / sum(weights.values()) if by_split else None
    ablation = {
        name: {"with_plan": float(r["success_rate"]), "instruction_only": float(r["instruction_only_success_rate"]),
               "plan_accuracy": float(r["plan_accuracy"])}
        for name, r in results.items() if "instruction_only_success_rate" in r
    }
    return {
        "success_rate": {name: float(r["success_rate"]) for name, r in results.items()},
        "navigation_efficiency": overall,
        "navigation_efficiency_by_split": by_split,
        "episodes": {name: int(r.get("episodes", 0)) for name, r in results.items()},
        **({"planner_ablation": ablation} if ablation else {}),
        "splits": {name: dict(r) for name, r in results.items()},
        **fields,
    }


def _groups(eval_report: Mapping[str, Any]) -> list[str]:
    """Names of the per-task/per-level groups (`success_rate/<name>` keys) found in any split."""
    prefix = "success_rate/"
    return sorted({key[len(prefix):] for r in eval_report["splits"].values() for key in r if key.startswith(prefix)})


def _cell(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def success_table(eval_report: Mapping[str, Any]) -> str:
    """A Markdown table: one row per split (episodes, success, per-group success, efficiency, length, return)."""
    groups = _groups(eval_report)
    header = ["split", "episodes", "success rate", *(f"success {g}" for g in groups),
              "navigation efficiency", "episode length", "return"]
    rows = []
    for split, result in eval_report["splits"].items():
        rows.append([
            split,
            str(int(result.get("episodes", 0))),
            _cell(result.get("success_rate")),
            *(_cell(result.get(f"success_rate/{g}")) for g in groups),
            _cell(result.get("navigation_efficiency")),
            _cell(result.get("episode_length"), 1),
            _cell(result.get("return")),
        ])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- plots -----------------------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(metric records, event records) of a `metrics.jsonl` written by `MetricsLogger`."""
    records, events = [], []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            (events if "event" in row else records).append(row)
    return records, events


def _new_figure(panels: int, *, columns: int = 3, size: tuple[float, float] = (4.0, 2.8)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(columns, panels)
    rows = math.ceil(panels / cols)
    figure = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    FigureCanvasAgg(figure)  # Agg canvas: no display, no global pyplot state
    axes = [figure.add_subplot(rows, cols, i + 1) for i in range(panels)]
    return figure, axes


def _plot_series(
    records: list[dict[str, Any]], events: list[dict[str, Any]], keys: Sequence[str], title: str, path: Path
) -> Path:
    figure, axes = _new_figure(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None)
        for event in events:
            if event["event"] in ("resume", "halt"):
                ax.axvline(event["step"], color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    figure.suptitle(title)
    figure.savefig(path, dpi=80)
    return path


def plot_learning_curves(run_dir: str | Path) -> list[Path]:
    """PNGs under `run_dir/plots` from `bc/metrics.jsonl` and `ppo/metrics.jsonl` (whichever exist): the BC
    loss terms; PPO return, success rate, episode length, the wrappers' interventions (world rollbacks,
    fallback steps, blocked actions) and the anomaly guard's skipped updates; each PPO `reward_*` term."""
    run_dir = Path(run_dir)
    out = run_dir / PLOTS_DIR
    written = []
    bc_file, ppo_file = run_dir / "bc" / "metrics.jsonl", run_dir / "ppo" / "metrics.jsonl"
    if bc_file.exists():
        records, events = read_metrics(bc_file)
        names = sorted({k for r in records for k in r if "loss" in k}, key=lambda k: (k != "loss", k))
        names += [k for k in ("entropy", "grad_norm", "skipped_updates") if any(k in r for r in records)]
        if records and names:
            out.mkdir(parents=True, exist_ok=True)
            written.append(_plot_series(records, events, names, "behaviour cloning", out / "bc_losses.png"))
    if ppo_file.exists():
        records, events = read_metrics(ppo_file)
        present = {k for r in records for k in r}
        names = [k for k in ("return", "success_rate", "episode_length") if k in present]
        names += [k for k in (*INTERVENTIONS, "skipped_updates") if k in present]
        rewards = sorted(k for k in present if k.startswith("reward_") and k != "reward_per_step")
        if records and names:
            out.mkdir(parents=True, exist_ok=True)
            written.append(_plot_series(records, events, names, "PPO", out / "ppo_training.png"))
        if records and rewards:
            out.mkdir(parents=True, exist_ok=True)
            written.append(_plot_series(records, events, rewards, "PPO reward terms", out / "ppo_rewards.png"))
    return written


def plot_success(eval_report: Mapping[str, Any], path: str | Path) -> Path:
    """Bar chart of the success rate per split, overall and per task/level group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    splits = list(eval_report["splits"])
    groups = ["all", *_groups(eval_report)]
    figure, (ax,) = _new_figure(1, size=(max(6.0, 1.6 * len(groups) + 4.0), 3.5))
    width = 0.8 / max(len(splits), 1)
    for i, split in enumerate(splits):
        result = eval_report["splits"][split]
        values = [result.get("success_rate" if g == "all" else f"success_rate/{g}", np.nan) for g in groups]
        x = np.arange(len(groups)) + (i - (len(splits) - 1) / 2) * width
        bars = ax.bar(x, values, width, label=f"{split} ({int(result.get('episodes', 0))} ep.)")
        ax.bar_label(bars, labels=[_cell(v) for v in values], fontsize=7)
    level = str(eval_report.get("level", "all")).removeprefix("sima2/").removesuffix("-v0")
    ax.set_xticks(np.arange(len(groups)), [level if g == "all" else g for g in groups])
    ax.set_ylim(0.0, 1.1)
    ax.set_ylabel("success rate")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    figure.suptitle("success per level and split" + (" and task" if len(groups) > 1 else ""))
    figure.savefig(path, dpi=80)
    return path


# --- summary ---------------------------------------------------------------------------------------------
def stage_timings(run_dir: str | Path) -> dict[str, float]:
    """Wall seconds per stage of the latest `sima2 train` in `run_dir`, from the times its files were written.

    `pipeline.json` is written when a run starts and each stage writes its output when it ends; a stage
    whose output is older than the start was reused from an earlier run and is left out.
    """
    run_dir = Path(run_dir)
    start_file = run_dir / "pipeline.json"
    if not start_file.exists():
        return {}
    previous = start = start_file.stat().st_mtime
    timings = {}
    for name, relative in STAGE_MARKS:
        mark = run_dir / relative
        if not mark.exists():
            continue
        files = [p for p in mark.rglob("*") if p.is_file()] if mark.is_dir() else [mark]
        end = max((p.stat().st_mtime for p in files), default=0.0)
        if end >= start:
            timings[name] = end - previous
            previous = end
    return timings


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def write_summary(
    run_dir: str | Path,
    eval_report: Mapping[str, Any],
    *,
    timings: Mapping[str, float] | None = None,
    plots: Sequence[Path] = (),
    episodes: Sequence[tuple[Path, Episode, str]] = (),
) -> Path:
    """`run_dir/summary.md`: configuration, timings per stage, the success table per split and task,
    navigation efficiency, and links to the plots and the episode GIFs (path, episode, split)."""
    run_dir = Path(run_dir)
    config_file = run_dir / "pipeline.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    preset = eval_report.get("preset", config.get("preset", "?"))
    level = eval_report.get("level", config.get("level", "?"))
    lines = [
        f"# sima2 run `{run_dir.name}`",
        "",
        f"Preset `{preset}` on `{level}`"
        + (f" at {config['image_size']}x{config['image_size']} pixels" if "image_size" in config else "")
        + f". Report written {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}.",
        "",
        "## Evaluation",
        "",
        success_table(eval_report),
        "",
    ]
    efficiency = eval_report.get("navigation_efficiency_by_split") or {}
    if efficiency:
        lines += ["Navigation efficiency (optimal path / actual path, successful episodes): "
                  + ", ".join(f"{split} {value:.2f}" for split, value in efficiency.items()) + ".", ""]
    else:
        lines += ["Navigation efficiency: not reported (the world's `info` gave no path lengths).", ""]
    if timings:
        lines += ["## Timings", "", "| stage | wall time |", "|---|---|"]
        lines += [f"| {name} | {seconds:.1f} s |" for name, seconds in timings.items()]
        lines += [f"| total | {sum(timings.values()):.1f} s |", ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({_relative(p, run_dir)})" for p in plots]
        lines += [""]
    if episodes:
        lines += ["## Evaluation episodes", "", "| split | instruction | the agent's plan | outcome | steps | GIF |",
                  "|" + "---|" * 6]
        for path, episode, split in episodes:
            link = _relative(path, run_dir)
            plan = " > ".join(episode.plan) if episode.plan else "-"
            lines.append(f"| {split} | {episode.instruction} | {plan} | {episode.outcome} | {episode.length} | "
                         f"[{path.name}]({link}) |")
        lines += [""] + [f"![{path.stem}]({_relative(path, run_dir)})" for path, _, _ in episodes] + [""]
    if config:
        lines += ["## Configuration", "", "```json", json.dumps(config, indent=2), "```", ""]
    path = run_dir / SUMMARY_NAME
    path.write_text("\n".join(lines))
    return path


def write_report(
    run_dir: str | Path,
    agent: Any,
    env: Any,
    eval_report: Mapping[str, Any],
    key: PRNGKeyArray,
    *,
    episodes_per_split: int = 2,
    max_steps: int = 32,
    timings: Mapping[str, float] | None = None,
    progress: bool = True,
    use_plan: bool = False,
) -> dict[str, Any]:
    """Plots, episode GIFs (greedy agent, every split in `eval_report`, and every level of an env of several)
    and `summary.md` in `run_dir`; `env` is a `sima2.envs.Sima2Env`. `use_plan`: the agent writes and follows
    its own plan in the episodes, drawn in the GIFs and listed in the summary.

    `timings` (stage -> seconds) defaults to `stage_timings(run_dir)`. Returns the written paths.
    """
    from tqdm.auto import tqdm

    from sima2.envs.world import SPLITS

    start = time.perf_counter()
    run_dir = Path(run_dir)
    timings = dict(stage_timings(run_dir) if timings is None else timings)
    splits = [s for s in eval_report["splits"] if s in SPLITS] or ["train"]
    with tqdm(total=4, desc="report", disable=not progress) as bar:
        bar.set_postfix_str("plots")
        plots = plot_learning_curves(run_dir)
        plots.append(plot_success(eval_report, run_dir / PLOTS_DIR / "success.png"))
        bar.update()
        bar.set_postfix_str("episodes")
        # Episodes of every split; in an env of several levels, also one of each level on the train split.
        levels = env.level_names
        cells = [(s, None) for s in splits for _ in range(episodes_per_split)]
        if len(levels) > 1:
            cells += [("train", level) for level in levels]
        params = jax.tree.map(lambda *x: jnp.stack(x), *(env.default_params(s, level=lv) for s, lv in cells))
        recorded = record_episodes(agent, env, params, key, len(cells), min(max_steps, env.max_steps),
                                   use_plan=use_plan)
        names = [s if lv is None else f"{s} ({lv})" for s, lv in cells]
        bar.update()
        bar.set_postfix_str("GIFs")
        gif_names = [f"{s}_{i % episodes_per_split}" if lv is None else f"{s}_{lv}" for i, (s, lv) in enumerate(cells)]
        gifs = write_episode_gifs(recorded, run_dir / GIFS_DIR, gif_names)
        episodes = list(zip(gifs, recorded, names, strict=True))
        bar.update()
        timings["report"] = time.perf_counter() - start
        summary = write_summary(run_dir, eval_report, timings=timings, plots=plots, episodes=episodes)
        bar.update()
    return {"plots": plots, "gifs": [path for path, _, _ in episodes], "summary": summary}


__all__ = [
    "Episode",
    "evaluation_report",
    "play_episode",
    "plot_learning_curves",
    "plot_success",
    "read_metrics",
    "record_episodes",
    "stage_timings",
    "success_table",
    "write_episode_gif",
    "write_episode_gifs",
    "write_report",
    "write_summary",
]

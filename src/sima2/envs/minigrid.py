"""MiniGrid / BabyAI for sima2: pixel observations and BabyAI's scripted expert, in the forms the gymnasium
path takes (needs the `minigrid` package, in the test extra).

    sima2 train --env minigrid:BabyAI-GoToRedBallNoDists-v0 --expert sima2.envs.minigrid:babyai_expert \\
        --obs-wrapper sima2.envs.minigrid:rgb_pixels

`rgb_pixels` draws the agent's partial view as RGB pixels (MiniGrid's own "image" is a symbolic grid);
`babyai_expert` is BabyAI's bot (`minigrid.utils.baby_ai_bot.BabyAIBot`), rebuilt for each episode since it
plans from the episode's instruction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym

TILE_SIZE = 8  # pixels per grid cell: a 7x7 view is 56x56, close to the agents' 64x64 input


def rgb_pixels(env: gym.Env) -> gym.Env:
    """`env` observing its partial view as RGB pixels (`RGBImgPartialObsWrapper`, `TILE_SIZE` per cell)."""
    from minigrid.wrappers import RGBImgPartialObsWrapper

    return RGBImgPartialObsWrapper(env, tile_size=TILE_SIZE)


def babyai_expert(env: gym.Env | None) -> Callable[[Any, Any], int]:
    """BabyAI's scripted bot for the episode `env` has just started: policy(observation, executed) -> MiniGrid
    action. The bot is told the action executed at the step before (`replan(action_taken)`), so its plan stays
    right when the agent, not the bot, drives."""
    from minigrid.utils.baby_ai_bot import BabyAIBot

    if env is None:
        raise ValueError("babyai_expert reads the env it acts in: use vectorization='sync'")
    bot = BabyAIBot(env.unwrapped)
    return lambda observation, executed: int(bot.replan(executed))


__all__ = ["TILE_SIZE", "babyai_expert", "rgb_pixels"]

"""sima2.envs: the built-in JAX-native 3D world (first-person pixels, language tasks, expert, gymnasium).

    env, params = sima2.envs.make("sima2/GoTo-v0")
    obs, state = env.reset(key, params)
    obs, state, reward, done, info = env.step(key, state, action, params)
    action = env.expert_action(state, params)

Importing this package registers every level with gymnasium as `sima2/<Level>-v0`.
"""

from sima2.envs.env import Sima2Env
from sima2.envs.expert import current_subgoal, distance_field, distance_to_goal
from sima2.envs.gym_env import Sima2GymEnv, Sima2VectorEnv, register_envs
from sima2.envs.levels import LEVELS, MIXTURES, LevelConfig, level_from_id, level_has_split, levels_from_id
from sima2.envs.make import make, registry
from sima2.envs.render import render_first_person, render_topdown
from sima2.envs.video import annotate_frame, side_by_side, write_episode
from sima2.envs.vocabulary import decode_ids, encode_words, get_tokenizer
from sima2.envs.world import (
    ACTION_NVEC,
    DURATION_TICKS,
    KEY_NAMES,
    LOOK_DEGREES,
    PROPRIO_SIZE,
    SPLITS,
    TICK_HZ,
    EnvParams,
    EnvState,
)

register_envs()

__all__ = [
    "ACTION_NVEC",
    "DURATION_TICKS",
    "KEY_NAMES",
    "LEVELS",
    "MIXTURES",
    "LOOK_DEGREES",
    "PROPRIO_SIZE",
    "SPLITS",
    "TICK_HZ",
    "EnvParams",
    "EnvState",
    "LevelConfig",
    "level_has_split",
    "Sima2Env",
    "Sima2GymEnv",
    "Sima2VectorEnv",
    "annotate_frame",
    "current_subgoal",
    "decode_ids",
    "distance_field",
    "distance_to_goal",
    "encode_words",
    "get_tokenizer",
    "level_from_id",
    "levels_from_id",
    "make",
    "register_envs",
    "registry",
    "render_first_person",
    "render_topdown",
    "side_by_side",
    "write_episode",
]

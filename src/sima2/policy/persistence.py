"""How an `Agent` is described and saved: `AgentConfig` (its static description), the planner's config, and
the files `Agent.save_pretrained` writes and `Agent.from_pretrained` reads.

    folder/agent_config.json   format, format_version, the agent's config, the ViT's and the planner's HF configs
    folder/model.safetensors   every array of the agent under its dotted path (`policy.fusion[0].attn.q.weight`)

Loading rebuilds the skeleton from the config without initialising it (`eqx.filter_eval_shape`) and loads the
weights strictly: every array must match by name and shape.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from sima2.interop.checkpoint import TensorSource
from sima2.interop.mapping import load_state_dict, named_arrays, same
from sima2.interop.pretrained import atomic_write, write_safetensors
from sima2.perception.vit import ViTEncoder
from sima2.planning import LanguagePlanner
from sima2.planning.bridge import TokenBridge
from sima2.policy.actor_critic import ActorCritic, ActorCriticConfig

AGENT_CONFIG_NAME = "agent_config.json"
AGENT_WEIGHTS_NAME = "model.safetensors"
AGENT_FORMAT = "sima2-agent"
# 2: `agent.text_bridge`; 3: `agent.instruction_length`, `policy.conditional_actions`; 4: `agent.tokenizer`,
# `agent.instruction_pad_id` and the tokenizer's files beside the weights; 5: `policy.touch_dim` and the
# policy's touch encoder; 6: `policy.subgoal_done_head` and its weights; 7: the optional `plan_writer`.
FORMAT_VERSION = 7

AgentT = TypeVar("AgentT", bound=eqx.Module)


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Static description of an agent besides its components' own configs."""

    preset: str
    policy: ActorCriticConfig
    image_pool: int = 1  # average-pool the patch grid by this factor before fusion (fewer fusion tokens)
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    freeze_vision: bool = False  # defaults of `trainable_filter`
    freeze_planner: bool = False
    # World word ids -> the planner's tokenizer ids; None when the planner reads world ids directly.
    text_bridge: TokenBridge | None = None
    # Read only this many leading instruction ids (None: all). Instructions are left-aligned, so a bound
    # such as the world's `env.max_instruction_words` drops nothing but padding, and the language model
    # and the fusion run on a third of the tokens for short task languages.
    instruction_length: int | None = None
    # The Hugging Face tokenizer (Hub id or path) whose ids the agent reads; None: the world's own words.
    # `save_pretrained` writes its files beside the weights, so a saved agent tokenizes offline.
    tokenizer: str | None = None
    instruction_pad_id: int = 0  # the id that pads instructions (never attended)
    # The instruction ids a `plan_writer` reads and writes, sorted (its token i is `plan_vocabulary[i]`): the
    # world's words in a large tokenizer's ids, so the writer's softmax spans hundreds of ids, not tens of
    # thousands. None: the writer's ids are the instruction ids.
    plan_vocabulary: tuple[int, ...] | None = None
    # Ids of one subgoal, as plans are written and the policy reads them (None: `instruction_length`): one
    # clause, so shorter than instructions, and each padded slot would cost the fusion a token.
    subgoal_length: int | None = None

    def __post_init__(self) -> None:
        for name in ("instruction_length", "subgoal_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive number of ids, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AgentConfig:
        raw = dict(raw)
        # Saved before conditional heads: independent factors; before the subgoal-done head: none.
        policy = {"conditional_actions": False, "subgoal_done_head": False, **raw["policy"]}
        raw["policy"] = ActorCriticConfig(**{**policy, "action_nvec": tuple(policy["action_nvec"])})
        for name in ("image_mean", "image_std"):
            raw[name] = tuple(raw[name])
        if raw.get("plan_vocabulary") is not None:
            raw["plan_vocabulary"] = tuple(int(i) for i in raw["plan_vocabulary"])
        if raw.get("text_bridge") is not None:
            raw["text_bridge"] = TokenBridge.from_dict(raw["text_bridge"])
        return cls(**raw)


def planner_config(planner: LanguagePlanner) -> dict[str, Any]:
    """What rebuilds `planner` with `planner_from_config`: its backbone's HF config and its LoRA set-up."""
    rank, alpha = 0, None
    if planner.lora:
        first = next(iter(planner.lora[0].values()))
        rank = int(first.a.shape[0])
        alpha = float(first.scale * rank)
    return {
        "backbone": planner.backbone.hf_config(),
        "lora_rank": rank,
        "lora_alpha": alpha,
        "separator": planner.separator,
    }


def planner_from_config(config: Mapping[str, Any], *, key: PRNGKeyArray) -> LanguagePlanner:
    return LanguagePlanner.from_config(
        config["backbone"],
        key=key,
        lora_rank=int(config.get("lora_rank", 0)),
        lora_alpha=config.get("lora_alpha"),
        **({"separator": config["separator"]} if "separator" in config else {}),
    )


def save_agent(agent: Any, save_directory: str | os.PathLike) -> Path:
    """Write `agent_config.json` + `model.safetensors` (all arrays under their dotted paths)."""
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": AGENT_FORMAT,
        "format_version": FORMAT_VERSION,
        "agent": agent.config.to_dict(),
        "vision": agent.vision.hf_config(),
        "planner": planner_config(agent.planner),
        "plan_writer": None if agent.plan_writer is None else planner_config(agent.plan_writer),
    }
    write_safetensors(named_arrays(agent), folder / AGENT_WEIGHTS_NAME, {"format": AGENT_FORMAT})
    if agent.config.tokenizer is not None and os.fspath(folder.resolve()) != agent.config.tokenizer:
        from sima2.planning.tokenizer import load_tokenizer

        load_tokenizer(agent.config.tokenizer).save_pretrained(folder)
    text = json.dumps(config, indent=2, sort_keys=True)
    atomic_write(folder / AGENT_CONFIG_NAME, lambda p: Path(p).write_text(text))
    return folder


def load_agent(cls: type[AgentT], directory: str | os.PathLike) -> AgentT:
    """Rebuild an agent of class `cls` (fields vision, planner, policy, config, plan_writer) saved by
    `save_agent`."""
    folder = Path(directory)
    config_path = folder / AGENT_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no {AGENT_CONFIG_NAME}; was it written by Agent.save_pretrained?")
    raw = json.loads(config_path.read_text())
    if raw.get("format") != AGENT_FORMAT:
        raise ValueError(f"{config_path} is not a sima2 agent config (format={raw.get('format')!r})")
    if raw.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{config_path} has format_version {raw['format_version']}; this sima2 reads up to {FORMAT_VERSION}"
        )
    agent_config = AgentConfig.from_dict(raw["agent"])
    if agent_config.tokenizer is not None and (folder / "tokenizer_config.json").is_file():
        # The tokenizer saved with the weights: no download, and the same ids as in training.
        agent_config = dataclasses.replace(agent_config, tokenizer=os.fspath(folder.resolve()))

    def build(key: PRNGKeyArray) -> AgentT:
        k_vision, k_planner, k_policy = jax.random.split(key, 3)
        vision = ViTEncoder.from_config(raw["vision"], key=k_vision)
        planner = planner_from_config(raw["planner"], key=k_planner)
        writer = raw.get("plan_writer")
        return cls(
            vision=vision,
            planner=planner,
            policy=ActorCritic(agent_config.policy, key=k_policy),
            config=agent_config,
            plan_writer=None if writer is None else planner_from_config(writer, key=jax.random.fold_in(key, 3)),
        )

    skeleton = eqx.filter_eval_shape(build, jax.random.key(0))
    identity = {name: same(name) for name in named_arrays(skeleton)}
    source = TensorSource.from_safetensors([folder / AGENT_WEIGHTS_NAME])
    agent, _ = load_state_dict(skeleton, identity, source, what=f"Agent ({folder})")
    return agent


__all__ = [
    "AGENT_CONFIG_NAME",
    "AGENT_FORMAT",
    "AGENT_WEIGHTS_NAME",
    "FORMAT_VERSION",
    "AgentConfig",
    "load_agent",
    "planner_config",
    "planner_from_config",
    "save_agent",
]

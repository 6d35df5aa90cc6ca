"""Plans at run time: the agent's language planner writes an episode's plan from its instruction, and the
policy follows it one subgoal at a time.

`write_plan(agent, instruction_ids, tokens)` runs greedy KV-cache generation (`sima2.planning.generate`)
inside `jit` on ONE instruction and cuts the generated text at the separator into a fixed-shape `Plan`:
subgoal ids in the same id space as instructions, so the policy reads a subgoal exactly as it reads an
instruction. `PlanCursor` is the follower's state: which subgoal is current; it advances when the policy's
subgoal-done head fires (`ActorCritic.subgoal_done_logit`). Nothing here reads the world's state: the agent
acts from pixels, its instruction and its own plan (`sima2.training.rollout.PlanningActor`).

Plans are written by a planner whose backbone is a causal LM reading the instruction ids directly (the
world's words, or an env made with the planner's tokenizer); `plan_tokens(agent)` says why another agent
cannot write them.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from sima2.planning import CausalLM
from sima2.planning.generate import generate

# Subgoals a written plan holds (the built-in world's expert plans have at most 8).
MAX_SUBGOALS = 8


@dataclasses.dataclass(frozen=True)
class PlanTokens:
    """The token ids that frame a plan in the agent's instruction id space (static, from its tokenizer)."""

    eos: int  # ends the instruction in the prompt, and the plan
    separator: int  # between subgoals
    pad: int  # pads instructions and subgoals


class Plan(eqx.Module):
    """One written plan: `subgoals[k]` holds subgoal k's ids left-aligned (padding after), `count` of them."""

    subgoals: Int[Array, "K S"]
    count: Int[Array, ""]


class PlanCursor(eqx.Module):
    """The subgoal being pursued (an index into the plan)."""

    index: Int[Array, ""]

    def advance(self, done: Bool[Array, ""], plan: Plan) -> PlanCursor:
        """The next subgoal where `done`, staying on the plan's last one."""
        last = jnp.maximum(plan.count - 1, 0)
        return PlanCursor(jnp.minimum(self.index + done.astype(jnp.int32), last).astype(jnp.int32))


def plan_tokens(agent: object) -> PlanTokens:
    """The plan's framing ids for `agent`; a ValueError naming the reason when it cannot write plans."""
    from sima2.envs.vocabulary import get_tokenizer
    from sima2.planning.tokenizer import eos_id, pad_id, separator_id
    from sima2.policy.instructions import load_cached_tokenizer

    backbone = agent.planner.backbone
    if not isinstance(backbone, CausalLM):
        raise ValueError(
            f"this agent's language model is a {type(backbone).__name__}, which cannot write plans: build the "
            "agent with a causal LM planner (e.g. the preset's own, or planner=<GPT-2 / Llama / Qwen2>)"
        )
    if agent.config.text_bridge is not None:
        raise ValueError(
            "this agent's planner reads the world's words through a token bridge, so a plan it writes would be "
            "in other ids than the instructions: make the env with the planner's tokenizer "
            "(sima2.envs.make(id, tokenizer=...)) to write plans at run time"
        )
    tokenizer = get_tokenizer() if agent.config.tokenizer is None else load_cached_tokenizer(agent.config.tokenizer)
    return PlanTokens(
        eos=eos_id(tokenizer), separator=separator_id(tokenizer, agent.planner.separator), pad=pad_id(tokenizer)
    )


def _prompt(
    instruction: Int[Array, " L"], tokens: PlanTokens
) -> tuple[Int[Array, " P"], Bool[Array, " P"]]:
    """`instruction <eos>`, left-padded (the layout generation expects), from left-aligned instruction ids."""
    length = instruction.shape[0]
    words = jnp.sum(instruction != tokens.pad)
    slots = jnp.arange(length + 1)
    ids = jnp.concatenate([instruction.astype(jnp.int32), jnp.asarray([tokens.pad], jnp.int32)])
    ids = jnp.where(slots < words, ids, jnp.where(slots == words, tokens.eos, tokens.pad))
    shift = length - words
    return jnp.roll(ids, shift), jnp.roll(slots <= words, shift)


def split_plan_ids(
    generated: Int[Array, " T"], tokens: PlanTokens, max_subgoals: int, subgoal_length: int
) -> Plan:
    """Generated ids `subgoal <sep> subgoal ... <eos>` -> a `Plan` (words past either bound are dropped)."""
    is_sep, is_eos = generated == tokens.separator, generated == tokens.eos
    ended = jnp.cumsum(is_eos) > 0  # the end and everything after it
    steps = jnp.arange(generated.shape[0])
    subgoal = jnp.cumsum(is_sep) - is_sep  # separators seen before each token
    start = jax.lax.cummax(jnp.where(is_sep, steps + 1, 0))  # where each token's subgoal began
    position = steps - start
    word = ~is_sep & ~ended & (generated != tokens.pad) & (subgoal < max_subgoals) & (position < subgoal_length)
    rows = jnp.where(word, subgoal, max_subgoals)  # out of range: dropped
    subgoals = jnp.full((max_subgoals, subgoal_length), tokens.pad, jnp.int32)
    subgoals = subgoals.at[rows, position].set(generated.astype(jnp.int32), mode="drop")
    count = jnp.max(jnp.where(word, subgoal + 1, 0))
    return Plan(subgoals=subgoals, count=count.astype(jnp.int32))


def write_plan(
    agent: object,
    instruction: Int[Array, " L"],
    tokens: PlanTokens,
    *,
    max_subgoals: int = MAX_SUBGOALS,
    subgoal_length: int | None = None,
) -> Plan:
    """The plan `agent.planner` writes (greedily) for ONE instruction (left-aligned ids, padded with
    `tokens.pad`); subgoals are cut to `subgoal_length` ids (default: the instruction's length). Traceable:
    a rollout writes each episode's plan inside its compiled step."""
    instruction = instruction[: agent.config.instruction_length]
    subgoal_length = instruction.shape[0] if subgoal_length is None else subgoal_length
    prompt, mask = _prompt(instruction, tokens)
    out = generate(
        agent.planner.merged_backbone(),
        prompt[None],
        attention_mask=mask[None],
        max_new_tokens=max_subgoals * (subgoal_length + 1),
        eos_token_id=tokens.eos,
        pad_token_id=tokens.pad,
    )
    return split_plan_ids(out[0, prompt.shape[0] :], tokens, max_subgoals, subgoal_length)


__all__ = ["MAX_SUBGOALS", "Plan", "PlanCursor", "PlanTokens", "plan_tokens", "split_plan_ids", "write_plan"]

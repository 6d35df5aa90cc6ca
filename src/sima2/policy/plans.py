"""Plans at run time: the agent's language planner writes an episode's plan from its instruction, and the
policy follows it one subgoal at a time.

`write_plan(agent, instruction_ids, tokens)` runs greedy KV-cache generation (`sima2.planning.generate`)
inside `jit` on ONE instruction and cuts the generated text at the separator into a fixed-shape `Plan`:
subgoal ids in the same id space as instructions, so the policy reads a subgoal exactly as it reads an
instruction. `PlanCursor` is the follower's state: which subgoal is current; it advances when the policy's
subgoal-done head fires (`ActorCritic.subgoal_done_logit`). Nothing here reads the world's state: the agent
acts from pixels, its instruction and its own plan (`sima2.training.rollout.PlanningActor`).

Plans are written by the agent's `plan_writer` (a small causal LM over the instruction ids, for an agent whose
language model is a sentence encoder or reads through a token bridge) or else by its planner, when that is a
causal LM reading the instruction ids directly; `plan_tokens(agent)` says why another agent cannot write them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from sima2.planning import CausalLM, LanguagePlanner
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


def plan_writer(agent: object) -> LanguagePlanner:
    """The language model that writes `agent`'s plans: its `plan_writer` when it has one, else its planner."""
    return agent.planner if agent.plan_writer is None else agent.plan_writer


def instruction_tokenizer(agent: object) -> Any:
    """The HF tokenizer of the ids `agent` reads instructions (and subgoals) in: its own, or the world's words."""
    from sima2.envs.vocabulary import get_tokenizer
    from sima2.policy.instructions import load_cached_tokenizer

    return get_tokenizer() if agent.config.tokenizer is None else load_cached_tokenizer(agent.config.tokenizer)


def plan_tokens(agent: object) -> PlanTokens:
    """The plan's framing ids for `agent`; a ValueError naming the reason when it cannot write plans."""
    from sima2.planning.tokenizer import eos_id, pad_id, separator_id

    writer = plan_writer(agent)
    if agent.plan_writer is None and not isinstance(writer.backbone, CausalLM):
        raise ValueError(
            f"this agent's language model is a {type(writer.backbone).__name__}, which cannot write plans, and it "
            "has no plan_writer: build it with Agent.from_preset (which adds one) or a causal LM planner"
        )
    if agent.plan_writer is None and agent.config.text_bridge is not None:
        raise ValueError(
            "this agent's planner reads the world's words through a token bridge, so a plan it writes would be "
            "in other ids than the instructions, and it has no plan_writer: build it with Agent.from_preset"
        )
    tokenizer = instruction_tokenizer(agent)
    return PlanTokens(eos=eos_id(tokenizer), separator=separator_id(tokenizer, writer.separator), pad=pad_id(tokenizer))


def writer_ids(agent: object, ids: Int[Array, "*n"]) -> Int[Array, "*n"]:
    """Instruction ids -> the plan writer's own ids (the same where it has no `plan_vocabulary`; an id the
    writer does not know reads as the tokenizer's unknown token)."""
    vocabulary = agent.config.plan_vocabulary
    if vocabulary is None:
        return ids.astype(jnp.int32)
    table = jnp.asarray(vocabulary, jnp.int32)
    unknown_id = instruction_tokenizer(agent).unk_token_id
    unknown = vocabulary.index(unknown_id) if unknown_id in vocabulary else 0
    position = jnp.clip(jnp.searchsorted(table, ids), 0, len(vocabulary) - 1)
    return jnp.where(table[position] == ids, position, unknown).astype(jnp.int32)


def instruction_ids(agent: object, ids: Int[Array, "*n"]) -> Int[Array, "*n"]:
    """The plan writer's ids -> instruction ids (`writer_ids`' inverse on the writer's vocabulary)."""
    vocabulary = agent.config.plan_vocabulary
    if vocabulary is None:
        return ids.astype(jnp.int32)
    return jnp.asarray(vocabulary, jnp.int32)[jnp.clip(ids, 0, len(vocabulary) - 1)]


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
    """The plan `plan_writer(agent)` writes greedily for ONE instruction (left-aligned ids, padded with
    `tokens.pad`); subgoals are cut to `subgoal_length` ids (default: `agent.config.subgoal_length`, else the
    instruction's length). Traceable:
    a rollout writes each episode's plan inside its compiled step."""
    instruction = instruction[: agent.config.instruction_length]
    if subgoal_length is None:
        subgoal_length = agent.config.subgoal_length or instruction.shape[0]
    prompt, mask = _prompt(instruction, tokens)
    vocabulary = agent.config.plan_vocabulary  # the framing tokens in the writer's own ids (static)
    own = (lambda i: i) if vocabulary is None else vocabulary.index
    out = generate(
        plan_writer(agent).merged_backbone(),
        writer_ids(agent, prompt)[None],
        attention_mask=mask[None],
        max_new_tokens=max_subgoals * (subgoal_length + 1),
        eos_token_id=own(tokens.eos),
        pad_token_id=own(tokens.pad),
    )
    written = instruction_ids(agent, out[0, prompt.shape[0] :])
    return split_plan_ids(written, tokens, max_subgoals, subgoal_length)


__all__ = [
    "MAX_SUBGOALS", "Plan", "PlanCursor", "PlanTokens", "instruction_ids", "instruction_tokenizer", "plan_tokens",
    "plan_writer", "split_plan_ids", "write_plan", "writer_ids",
]

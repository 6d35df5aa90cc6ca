"""Worlds for a user's own instruction: parse it with the task language, then find a world with that task.

    obs, state = find_world(env, params, "pick up the blue key after you open the green door", key)

`parse_instruction` reads any phrasing the world itself can produce (training and held-out clause
templates, sequence connectors, colours, nouns and their synonyms, location phrases; commas optional;
words outside the task vocabulary skipped).
`find_world` generates `tries` worlds of the env's level in one jitted, vmapped call (repeating with fresh
keys up to `rounds` times), keeps the first whose task is the parsed one, and writes the user's own words
as its instruction tokens, so that an agent reads the user's phrasing.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int32, PRNGKeyArray

from sima2.envs import vocabulary as voc
from sima2.envs.levels import LEVELS, LevelConfig
from sima2.envs.world import (
    HELDOUT_COMPOSITION_KINDS,
    HELDOUT_PAIR_MASK,
    NUM_STAGES,
    SPLITS,
    EnvParams,
    EnvState,
    entity_colours,
    entity_positions,
    entity_types,
    generate,
    location_phrases_holding,
)

_DETERMINERS = ("the", "a")
_POLITENESS = ("please", "kindly")
_SLOTS = ("{A}", "{B}", "{X}", "{Y}")


@dataclasses.dataclass(frozen=True)
class Target:
    """An entity named in an instruction: type (index into OBJECT_TYPES), colour, optional location phrase."""

    type: int
    colour: int
    location: int = 0  # index into vocabulary.LOCATIONS; 0 = none given

    def describe(self) -> str:
        return voc.noun_phrase(self.type, self.colour, self.location)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One clause: a stage kind (vocabulary.GOTO/PICKUP/OPEN/PUTNEXT), its target and, for PUTNEXT, `b`."""

    kind: int
    a: Target
    b: Target | None = None

    def describe(self) -> str:
        text = voc.SUBGOAL_TEMPLATES[self.kind].replace("{A}", self.a.describe())
        return text.replace("{B}", self.b.describe()) if self.b is not None else text


# --- parsing (host side) ---------------------------------------------------------------------------------
def normalise_words(text: str) -> list[str]:
    """Lower-case words with commas as their own token and other punctuation dropped (the world's spelling)."""
    text = re.sub(r"[.!?;:\"]", " ", text.lower().replace(",", " , "))
    return text.split()


def _pattern(template: str) -> list[str]:
    return [word for word in template.split() if word != ","]  # commas are optional when parsing


def _match(pattern: list[str], words: list[str]) -> Iterator[dict[str, list[str]]]:
    """Every way `words` fills `pattern` (literal words and non-empty slots)."""
    if not pattern:
        if not words:
            yield {}
        return
    head, rest = pattern[0], pattern[1:]
    if head in _SLOTS:
        for end in range(1, len(words) + 1):
            for binding in _match(rest, words[end:]):
                yield {head: words[:end], **binding}
    elif words and words[0] == head:
        yield from _match(rest, words[1:])


def _parse_noun_phrase(words: list[str]) -> Target | None:
    if words and words[0] in _DETERMINERS:
        words = words[1:]
    colours = {word: i for words in (voc.COLOURS, voc.HELDOUT_COLOUR_WORDS) for i, word in enumerate(words)}
    if len(words) < 2 or words[0] not in colours:
        return None
    obj_type = next(
        (t for t, names in enumerate(voc.NOUN_SYNONYMS) if words[1] in names or words[1] == voc.HELDOUT_NOUN_WORDS[t]),
        None,
    )
    if obj_type is None:
        return None
    rest = " ".join(words[2:])
    if rest and rest not in voc.LOCATIONS:
        return None
    return Target(obj_type, colours[words[0]], voc.LOCATIONS.index(rest))


def _parse_clause(words: list[str]) -> Stage | None:
    for kind, templates in voc.CLAUSE_TEMPLATES.items():
        for template in sum(templates, ()):
            for binding in _match(_pattern(template), words):
                a = _parse_noun_phrase(binding["{A}"])
                b = _parse_noun_phrase(binding["{B}"]) if "{B}" in binding else None
                if a is not None and ("{B}" not in binding or b is not None):
                    return Stage(kind, a, b)
    return None


def grammar_help() -> str:
    """A one-paragraph description of the phrasings `parse_instruction` accepts."""
    clauses = sorted({t for templates in voc.CLAUSE_TEMPLATES.values() for t in sum(templates, ())})
    connectors = sum(voc.SEQUENCE_TEMPLATES, ())
    nouns = sorted({n for names in voc.NOUN_SYNONYMS for n in names} | set(voc.HELDOUT_NOUN_WORDS))
    locations = [loc for loc in voc.LOCATIONS if loc]
    return (
        f"an instruction is one clause ({'; '.join(clauses)}) or two joined as "
        f"{'; '.join(c.replace(' ,', ',') for c in connectors)}, where {{A}}/{{B}} is "
        f"'the <colour> <object>' with colour one of {', '.join(voc.COLOURS + voc.HELDOUT_COLOUR_WORDS)}, object "
        "one of "
        f"{', '.join(nouns)}, optionally followed by {', '.join(repr(loc) for loc in locations)}"
    )


def parse_instruction(text: str) -> tuple[Stage, ...]:
    """The stages of an instruction in the order they must be done; ValueError if it is not in the language.

    Words outside the task vocabulary ("please", "quickly") are skipped; the agent still sees them as [UNK].
    """
    words = normalise_words(text)
    known = set(voc.vocabulary())
    unknown = sorted({w for w in words if w not in known})
    words = [w for w in words if w in known and w != ","]  # words outside the language are skipped
    if not words:
        raise ValueError(f"the instruction {text!r} has no word of the task language; {grammar_help()}")
    # Politeness words belong to some templates; anywhere else they are skipped like unknown words.
    for candidate in (words, [w for w in words if w not in _POLITENESS]):
        single = _parse_clause(candidate)
        if single is not None:
            return (single,)
        for template in sum(voc.SEQUENCE_TEMPLATES, ()):
            for binding in _match(_pattern(template), candidate):
                first, then = _parse_clause(binding["{X}"]), _parse_clause(binding["{Y}"])
                if first is not None and then is not None:
                    return (first, then)
    hint = f" (unknown words: {', '.join(unknown)})" if unknown else ""
    raise ValueError(f"cannot parse instruction {text!r}{hint}; {grammar_help()}")


def encode_instruction(text: str) -> Int32[np.ndarray, " L"]:
    """The user's words as instruction token ids (unknown words -> [UNK]), padded to MAX_INSTRUCTION_LENGTH."""
    ids = voc.encode_words(" ".join(normalise_words(text)))
    if len(ids) > voc.MAX_INSTRUCTION_LENGTH:
        raise ValueError(
            f"the instruction has {len(ids)} words; the agent reads at most {voc.MAX_INSTRUCTION_LENGTH}"
        )
    out = np.full((voc.MAX_INSTRUCTION_LENGTH,), voc.PAD_ID, np.int32)
    out[: len(ids)] = ids
    return out


def heldout_pairs(stages: tuple[Stage, ...]) -> list[str]:
    """Objects named in `stages` whose colour-object pair only occurs in the `heldout_pairs` split."""
    named = [t for s in stages for t in (s.a, s.b) if t is not None and t.type != voc.DOOR]
    return [
        voc.noun_phrase(t.type, t.colour)
        for t in named
        if HELDOUT_PAIR_MASK[t.type * len(voc.COLOURS) + t.colour]
    ]


def heldout_composition(stages: tuple[Stage, ...]) -> bool:
    """Whether `stages` combine clause kinds that only the `heldout_compositions` split poses."""
    return tuple(stage.kind for stage in stages) in HELDOUT_COMPOSITION_KINDS


def _heldout_pair_names() -> list[str]:
    n = len(voc.COLOURS)
    return [f"{voc.COLOURS[p % n]} {voc.OBJECT_TYPES[p // n]}" for p in np.flatnonzero(HELDOUT_PAIR_MASK)]


# --- the world search (JAX) ------------------------------------------------------------------------------
def _stage_spec(stages: tuple[Stage, ...]) -> dict[str, np.ndarray]:
    """Stages as fixed-size arrays (NUM_STAGES rows; -1 = unused), so every instruction shares one compile."""
    if len(stages) > NUM_STAGES:
        raise ValueError(f"an instruction has at most {NUM_STAGES} clauses, got {len(stages)}")
    spec = {name: np.full((NUM_STAGES,), -1, np.int32) for name in
            ("kind", "a_type", "a_colour", "a_location", "b_type", "b_colour", "b_location")}
    for t, stage in enumerate(stages):
        spec["kind"][t] = stage.kind
        for slot, target in (("a", stage.a), ("b", stage.b)):
            if target is not None:
                spec[f"{slot}_type"][t], spec[f"{slot}_colour"][t] = target.type, target.colour
                spec[f"{slot}_location"][t] = target.location
    return spec


def _location_holds(state: EnvState, entity: Int32[Array, ""], location: Int32[Array, ""]) -> Bool[Array, ""]:
    """Whether the location phrase holds for the entity, seen from the agent's start pose (as the world says it)."""
    phrases = location_phrases_holding(entity_positions(state)[entity], state.start_pos, state.start_dir)
    holds = jnp.concatenate([jnp.ones((1,), bool), phrases])  # code 0: no location phrase
    return holds[jnp.maximum(location, 0)]


def _task_matches(state: EnvState, spec: dict[str, Array]) -> tuple[Bool[Array, ""], Bool[Array, ""]]:
    """(the task is exactly `spec`, the task has `spec`'s kinds and entity types whatever the colours)."""
    types, colours = entity_types(state), entity_colours(state)
    num = jnp.sum(spec["kind"] >= 0)
    exact = structural = state.num_stages == num
    for t in range(NUM_STAGES):
        used = t < num
        a, b = state.stage_a[t], state.stage_b[t]
        is_putnext = spec["kind"][t] == voc.PUTNEXT
        same_kind = (state.stage_kind[t] == spec["kind"][t]) & (types[a] == spec["a_type"][t])
        same_kind = same_kind & (~is_putnext | (types[b] == spec["b_type"][t]))
        same_task = same_kind & (colours[a] == spec["a_colour"][t]) & _location_holds(state, a, spec["a_location"][t])
        same_b = (colours[b] == spec["b_colour"][t]) & _location_holds(state, b, spec["b_location"][t])
        same_task = same_task & (~is_putnext | same_b)
        structural = structural & (~used | same_kind)
        exact = exact & (~used | same_task)
    return exact, structural


@functools.partial(jax.jit, static_argnames=("level", "tries"))
def _search(
    key: PRNGKeyArray, split: Int32[Array, ""], spec: dict[str, Array], *, level: LevelConfig, tries: int
) -> tuple[EnvState, Bool[Array, ""], Bool[Array, ""]]:
    """Generate `tries` worlds; return the first whose task matches, whether one did, and whether any had
    the right kinds of stages and targets."""
    states = jax.vmap(generate, in_axes=(0, None, None))(jax.random.split(key, tries), level, split)
    exact, structural = jax.vmap(_task_matches, in_axes=(0, None))(states, spec)
    index = jnp.argmax(exact)
    return jax.tree.map(lambda x: x[index], states), exact.any(), structural.any()


# The clauses each task family poses (see `world.generate`): per clause, the (stage kind, target is a door)
# choices. Families missing here (new ones) are probed by generating worlds, which costs a compile per level.
_FAMILY_CLAUSES: dict[str, tuple[tuple[tuple[int, bool], ...], ...]] = {
    "goto": (((voc.GOTO, False),),),
    "pickup": (((voc.PICKUP, False),),),
    "open": (((voc.OPEN, True),),),
    "unlock": (((voc.OPEN, True),),),
    "putnext": (((voc.PUTNEXT, False),),),
    "sequence": (((voc.GOTO, False), (voc.OPEN, True)), ((voc.GOTO, False), (voc.PICKUP, False), (voc.OPEN, True))),
}


def _family_poses(family: str, stages: tuple[Stage, ...]) -> bool | None:
    """Whether a task family can pose these stages (None: family unknown here)."""
    clauses = _FAMILY_CLAUSES.get(family)
    if clauses is None:
        return None
    return len(clauses) == len(stages) and all(
        (stage.kind, stage.a.type == voc.DOOR) in choices
        and (stage.b is None or stage.b.type != voc.DOOR)
        for stage, choices in zip(stages, clauses, strict=True)
    )


def levels_with_task(stages: tuple[Stage, ...], key: PRNGKeyArray, *, tries: int = 256) -> list[str]:
    """Gymnasium ids of the levels whose worlds can pose these stages (kinds and target types)."""
    spec = jax.tree.map(jnp.asarray, _stage_spec(stages))
    found = []
    for level in LEVELS.values():
        poses = _family_poses(level.task, stages)
        if poses is None:
            _, _, structural = _search(key, jnp.int32(SPLITS.index("train")), spec, level=level, tries=tries)
            poses = bool(structural)
        if poses:
            found.append(level.gym_id)
    return found


def find_world(
    env, params: EnvParams, instruction: str, key: PRNGKeyArray, *, tries: int = 4096, rounds: int = 8
) -> tuple[dict[str, Array], EnvState]:
    """A world of `env`'s level whose task is `instruction`, with the user's words as its instruction tokens.

    Returns `(obs, state)` like `env.reset`. Raises ValueError when the text is not in the task language,
    or when no world of this level (in `params`' split) poses that task.
    """
    if tries < 1 or rounds < 1:
        raise ValueError(f"tries and rounds must be positive, got {tries} and {rounds}")
    stages = parse_instruction(instruction)
    tokens = jnp.asarray(encode_instruction(instruction))
    spec = jax.tree.map(jnp.asarray, _stage_spec(stages))
    task = ", then ".join(stage.describe() for stage in stages)
    level, split = env.level.gym_id, SPLITS[int(params.split)]

    def no_such_level() -> ValueError:
        others = [name for name in levels_with_task(stages, key) if name != level]
        suggestion = f"; levels that have it: {', '.join(others)}" if others else "; no level poses such a task"
        return ValueError(f"no world of {level} has the task '{task}'{suggestion}")

    # Answered without generating worlds: a known task family that cannot pose the task, and colour-object
    # pairs of the wrong split (targets are held-out pairs in heldout_pairs, and never elsewhere).
    if _family_poses(env.level.task, stages) is False:
        raise no_such_level()
    held = heldout_pairs(stages)
    named = [t for stage in stages for t in (stage.a, stage.b) if t is not None and t.type != voc.DOOR]
    if held and split != "heldout_pairs":
        raise ValueError(
            f"{' and '.join(held)} {'is a held-out colour-object pair' if len(held) == 1 else 'are held-out pairs'}"
            f", found only in the heldout_pairs split (this search used the {split} split)"
        )
    if split == "heldout_pairs" and len(held) < len(named):
        raise ValueError(
            f"in the heldout_pairs split every target object is a held-out colour-object pair "
            f"({', '.join(_heldout_pair_names())}); '{task}' names others"
        )
    composed = heldout_composition(stages)
    if composed != (split == "heldout_compositions") and len(stages) == NUM_STAGES:
        where = "found only in the heldout_compositions split" if composed else \
            "a combination the heldout_compositions split never poses (it poses only held-out ones)"
        raise ValueError(f"'{task}' combines its clauses in {'a held-out' if composed else 'a training'} "
                         f"way, {where} (this search used the {split} split)")
    any_structural = False
    for attempt in range(rounds):
        state, found, structural = _search(
            jax.random.fold_in(key, attempt), params.split, spec, level=env.level, tries=tries
        )
        any_structural |= bool(structural)
        if bool(found):
            state = eqx.tree_at(lambda s: s.instruction, state, tokens)
            return env.observe(state), state
        if not any_structural:
            raise no_such_level()  # a family not listed above that never poses such a task
    raise ValueError(
        f"none of {tries * rounds} worlds of {level} ({split} split) had the task '{task}'; "
        "try another seed or more tries"
    )


__all__ = [
    "Stage",
    "Target",
    "encode_instruction",
    "find_world",
    "grammar_help",
    "heldout_composition",
    "heldout_pairs",
    "levels_with_task",
    "normalise_words",
    "parse_instruction",
]

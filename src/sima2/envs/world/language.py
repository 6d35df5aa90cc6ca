"""The instruction language: noun phrases, clause and sequence templates filled with token ids, and the
longest instruction a level's grammar can produce.

Uses the vocabulary's token tables; generation calls `_instruction`, and the plans reuse `_concat_pieces`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int32

from sima2.envs import vocabulary as voc
from sima2.envs.levels import LevelConfig
from sima2.envs.world.geometry import entity_colours, entity_types
from sima2.envs.world.state import HELDOUT_PARAPHRASES, HELDOUT_WORDING, NUM_STAGES, EnvState
from sima2.envs.world.streams import _Draws, _mix32

_WORDING_STREAM = 0x57D1  # salt of the held-out wording's word draws


def _concat_pieces(
    tokens: Int32[Array, "P W"], lengths: Int32[Array, " P"], out_len: int
) -> tuple[Int32[Array, " {out_len}"], Int32[Array, ""]]:
    """Concatenate variable-length token pieces into a padded sequence (no Python control flow)."""
    width = tokens.shape[1]
    offsets = jnp.cumsum(lengths) - lengths
    cols = jnp.arange(width)
    index = offsets[:, None] + cols[None, :]
    index = jnp.where(cols[None, :] < lengths[:, None], index, out_len)  # padding lands out of range
    out = jnp.zeros((out_len,), jnp.int32).at[index.reshape(-1)].set(tokens.reshape(-1), mode="drop")
    return out, jnp.minimum(jnp.sum(lengths), out_len)


def _noun_phrase(
    obj_type: Int32[Array, ""],
    colour: Int32[Array, ""],
    synonym: Int32[Array, ""],
    location: Int32[Array, ""],
    heldout_colour: Bool[Array, ""],
    heldout_noun: Bool[Array, ""],
) -> tuple[Int32[Array, " W"], Int32[Array, ""]]:
    tables = voc.token_tables()
    colour_id = jnp.where(
        heldout_colour, jnp.asarray(tables.heldout_colour_ids)[colour], jnp.asarray(tables.colour_ids)[colour]
    )
    noun_id = jnp.where(
        heldout_noun, jnp.asarray(tables.heldout_noun_ids)[obj_type], jnp.asarray(tables.noun_ids)[obj_type, synonym]
    )
    head = jnp.stack([jnp.int32(tables.the_id), colour_id, noun_id])
    pieces = jnp.zeros((2, voc.PIECE_WIDTH), jnp.int32)
    pieces = pieces.at[0, :3].set(head).at[1, :4].set(jnp.asarray(tables.location_tokens)[location])
    lengths = jnp.stack([jnp.int32(3), jnp.asarray(tables.location_length)[location]])
    return _concat_pieces(pieces, lengths, voc.PIECE_WIDTH)


def _fill_template(
    kinds: Int32[Array, " K"],
    seg_tokens: Int32[Array, "K W"],
    seg_lengths: Int32[Array, " K"],
    slot_a: tuple[Int32[Array, " W"], Int32[Array, ""]],
    slot_b: tuple[Int32[Array, " W"], Int32[Array, ""]],
    out_len: int,
) -> tuple[Int32[Array, " {out_len}"], Int32[Array, ""]]:
    a_tok = (
        jnp.zeros((voc.PIECE_WIDTH,), jnp.int32).at[: slot_a[0].shape[0]].set(slot_a[0][: voc.PIECE_WIDTH])
    )
    b_tok = (
        jnp.zeros((voc.PIECE_WIDTH,), jnp.int32).at[: slot_b[0].shape[0]].set(slot_b[0][: voc.PIECE_WIDTH])
    )
    tokens = jnp.where(
        (kinds == 1)[:, None], a_tok[None], jnp.where((kinds == 2)[:, None], b_tok[None], seg_tokens)
    )
    lengths = jnp.where(kinds == 1, slot_a[1], jnp.where(kinds == 2, slot_b[1], seg_lengths))
    return _concat_pieces(tokens, lengths, out_len)

def _instruction(state: EnvState, split: Int32[Array, ""], draws: _Draws) -> Int32[Array, " L"]:
    """Assemble the instruction token ids from templates (training, held-out paraphrases or held-out wording)."""
    tables = voc.token_tables()
    heldout = split == HELDOUT_PARAPHRASES
    wording = split == HELDOUT_WORDING
    types, colours = entity_types(state), entity_colours(state)
    # Held-out colour and object words, each for half of the entities, from a stream of their own (the
    # other splits' instructions keep their draws).
    words = _Draws(_mix32(draws.seed ^ jnp.uint32(_WORDING_STREAM)))
    num_entities = types.shape[0]
    heldout_colour = wording & (words.uniform((num_entities,)) < 0.5)
    heldout_noun = wording & (words.uniform((num_entities,)) < 0.5)

    def phrase(e: Int32[Array, ""]) -> tuple[Int32[Array, " W"], Int32[Array, ""]]:
        return _noun_phrase(types[e], colours[e], state.entity_synonym[e], state.entity_location[e],
                            heldout_colour[e], heldout_noun[e])

    clauses = []
    for t in range(NUM_STAGES):
        kind = state.stage_kind[t]
        n_train = jnp.asarray(tables.clause_num_train)[kind]
        n_held = jnp.asarray(tables.clause_num_heldout)[kind]
        n_wording = jnp.asarray(tables.clause_num_wording)[kind]
        skip = jnp.where(heldout, n_train, jnp.where(wording, n_train + n_held, 0))
        start = jnp.asarray(tables.clause_offset)[kind] + skip
        row = draws.integers(start, start + jnp.where(heldout, n_held, jnp.where(wording, n_wording, n_train)))
        a, b = state.stage_a[t], state.stage_b[t]
        np_a, np_b = phrase(a), phrase(b)
        clauses.append(
            _fill_template(
                jnp.asarray(tables.clause_segment_kind)[row],
                jnp.asarray(tables.clause_segment_tokens)[row],
                jnp.asarray(tables.clause_segment_length)[row],
                np_a,
                np_b,
                voc.PIECE_WIDTH,
            )
        )
    single, _ = _concat_pieces(clauses[0][0][None], clauses[0][1][None], voc.MAX_INSTRUCTION_LENGTH)
    n_train, n_held = tables.sequence_num_train, tables.sequence_num_heldout
    start = jnp.where(heldout, n_train, jnp.where(wording, n_train + n_held, 0))
    count = jnp.where(heldout, n_held, jnp.where(wording, tables.sequence_num_wording, n_train))
    row = draws.integers(jnp.int32(start), jnp.int32(start) + count)
    sequence, _ = _fill_template(
        jnp.asarray(tables.sequence_segment_kind)[row],
        jnp.asarray(tables.sequence_segment_tokens)[row],
        jnp.asarray(tables.sequence_segment_length)[row],
        clauses[0],
        clauses[1],
        voc.MAX_INSTRUCTION_LENGTH,
    )
    return jnp.where(state.num_stages > 1, sequence, single)


# Clause kinds each task family's instructions are built from: one tuple per clause (see `generate`).
TASK_CLAUSE_KINDS: dict[str, tuple[tuple[int, ...], ...]] = {
    "goto": ((voc.GOTO,),),
    "pickup": ((voc.PICKUP,),),
    "open": ((voc.OPEN,),),
    "unlock": ((voc.OPEN,),),
    "putnext": ((voc.PUTNEXT,),),
    "sequence": ((voc.OPEN, voc.GOTO), (voc.GOTO, voc.PICKUP, voc.OPEN)),
}


def max_instruction_words(level: LevelConfig) -> int:
    """The longest instruction (in word ids) the level's grammar can produce, over every split.

    Exact, from the template tables: an agent that only reads this many leading ids of
    `obs["instruction"]` (instructions are left-aligned, padded with 0) never loses a word.
    """
    tables = voc.token_tables()
    noun = 3 + (int(tables.location_length.max()) if level.location_phrases else 0)  # "the red ball" [+ location]

    def longest(kinds: Int32[np.ndarray, "R K"], lengths: Int32[np.ndarray, "R K"], slot: tuple[int, int]) -> int:
        words = np.where(kinds == 1, slot[0], np.where(kinds == 2, slot[1], lengths)).sum(axis=1)
        return int(words.max())

    def clause(kind: int) -> int:
        num = tables.clause_num_train[kind] + tables.clause_num_heldout[kind] + tables.clause_num_wording[kind]
        rows = slice(int(tables.clause_offset[kind]), int(tables.clause_offset[kind] + num))
        return longest(tables.clause_segment_kind[rows], tables.clause_segment_length[rows], (noun, noun))

    clauses = [max(clause(kind) for kind in kinds) for kinds in TASK_CLAUSE_KINDS[level.task]]
    if len(clauses) == 1:
        words = clauses[0]
    else:
        words = longest(tables.sequence_segment_kind, tables.sequence_segment_length, (clauses[0], clauses[1]))
    return min(words, voc.MAX_INSTRUCTION_LENGTH)

"""The task language: colours, object names, instruction templates and the word-level vocabulary.

Instructions follow the BabyAI grammar ("go to the red ball", "pick up the blue key after you open the
green door", ...) plus paraphrase templates and noun synonyms of our own. Templates are split into a
training set and a held-out set so that generalisation to unseen phrasings can be measured.

Everything here is static Python data; `token_tables()` turns it into integer arrays that the JAX
environment indexes to assemble instruction token ids inside `jax.jit`. `get_tokenizer()` builds the
same vocabulary as a Hugging Face `PreTrainedTokenizerFast` (word level, [PAD] = 0) for language models.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

COLOURS: tuple[str, ...] = ("red", "green", "blue", "purple", "yellow", "grey")
# Object types; index 3 ("door") only occurs as a grid cell, never as a free object.
OBJECT_TYPES: tuple[str, ...] = ("ball", "box", "key", "door")
BALL, BOX, KEY, DOOR = 0, 1, 2, 3
# Synonyms per object type: index 0 is the BabyAI word.
NOUN_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("ball", "sphere"),
    ("box", "crate"),
    ("key",),
    ("door", "doorway"),
)
# BabyAI location phrases, relative to the agent's pose at the start of the episode.
LOCATIONS: tuple[str, ...] = ("", "in front of you", "behind you", "on your left", "on your right")

# Task stage kinds (one clause of an instruction).
GOTO, PICKUP, OPEN, PUTNEXT = 0, 1, 2, 3
STAGE_KINDS: tuple[str, ...] = ("goto", "pickup", "open", "putnext")

# Clause templates per stage kind: (training templates, held-out paraphrases, held-out wording). "{A}"/"{B}"
# are noun phrases. The held-out wording (the heldout_wording split only) uses words and word orders that no
# training instruction has: politeness, particles moved ("pick {A} up"), the object first, new verbs.
CLAUSE_TEMPLATES: dict[int, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    GOTO: (
        ("go to {A}", "walk to {A}", "move to {A}", "head to {A}", "approach {A}", "find {A}"),
        ("navigate to {A}", "make your way to {A}"),
        ("please walk over by {A}", "could you travel toward {A}", "{A} is where you should be"),
    ),
    PICKUP: (
        ("pick up {A}", "grab {A}", "take {A}", "get {A}", "collect {A}"),
        ("fetch {A}", "lift {A}"),
        ("grab hold of {A}", "please pick {A} up", "{A} needs picking up"),
    ),
    OPEN: (
        ("open {A}", "pull open {A}", "go open {A}"),
        ("swing open {A}", "get {A} open"),
        ("please unlatch {A}", "could you open up {A}", "{A} should be opened"),
    ),
    PUTNEXT: (
        ("put {A} next to {B}", "place {A} next to {B}", "put {A} beside {B}", "move {A} next to {B}"),
        ("set {A} down next to {B}", "drop {A} beside {B}"),
        ("bring {A} over by {B}", "please leave {A} alongside {B}", "{A} goes near {B}"),
    ),
}
# Connectors joining two clauses: {X} is done first, then {Y} (BabyAI: ", then" and "after you"); training,
# held-out paraphrases, held-out wording.
SEQUENCE_TEMPLATES: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = (
    ("{X} , then {Y}", "{Y} after you {X}", "first {X} , then {Y}", "{X} and then {Y}"),
    ("{X} , afterwards {Y}", "before you {Y} , {X}"),
    ("{X} , next {Y}", "once you {X} , {Y}", "kindly {X} , and after that {Y}"),
)
# Held-out wording's words for the colours and object types (same order as COLOURS and OBJECT_TYPES).
HELDOUT_COLOUR_WORDS: tuple[str, ...] = ("crimson", "emerald", "azure", "violet", "golden", "silver")
HELDOUT_NOUN_WORDS: tuple[str, ...] = ("orb", "chest", "latchkey", "gate")
# Subgoal phrases of the expert plan, per subgoal kind (see `expert.py`).
SUBGOAL_TEMPLATES: tuple[str, ...] = ("go to {A}", "pick up {A}", "open {A}", "put {A} next to {B}")

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
PAD_ID = 0
MAX_INSTRUCTION_LENGTH = 24
# Width of one assembled piece (noun phrase, clause) before concatenation.
PIECE_WIDTH = 16
MAX_SEGMENTS = 5


def _template_words(template: str) -> list[str]:
    return [w for w in template.split() if w not in ("{A}", "{B}", "{X}", "{Y}")]


@functools.cache
def vocabulary() -> tuple[str, ...]:
    """All words of the task language, special tokens first ([PAD] has id 0), then sorted words."""
    words: set[str] = {"the", "a"}
    words.update(COLOURS + HELDOUT_COLOUR_WORDS + HELDOUT_NOUN_WORDS)
    for synonyms in NOUN_SYNONYMS:
        words.update(synonyms)
    for loc in LOCATIONS:
        words.update(loc.split())
    for templates in CLAUSE_TEMPLATES.values():
        for template in sum(templates, ()):
            words.update(_template_words(template))
    for template in sum(SEQUENCE_TEMPLATES, ()) + SUBGOAL_TEMPLATES:
        words.update(_template_words(template))
    return SPECIAL_TOKENS + tuple(sorted(words))


@functools.cache
def word_to_id() -> dict[str, int]:
    """Word -> token id map of `vocabulary()`."""
    return {word: index for index, word in enumerate(vocabulary())}


def encode_words(text: str) -> list[int]:
    """Host-side encoding of whitespace-separated words (punctuation must be space-separated)."""
    table = word_to_id()
    return [table.get(word, table["[UNK]"]) for word in text.split()]


def decode_ids(ids: np.ndarray | list[int]) -> str:
    """Host-side decoding of token ids to text, dropping padding and special tokens."""
    words = vocabulary()
    text = " ".join(words[int(i)] for i in np.asarray(ids).reshape(-1) if int(i) >= len(SPECIAL_TOKENS))
    return text.replace(" ,", ",")


@dataclass(frozen=True)
class TokenTables:
    """Integer tables the JAX environment uses to assemble instructions.

    Clause templates of all stage kinds are stacked; kind k owns rows from `clause_offset[k]`: its
    `clause_num_train[k]` training rows, then `clause_num_heldout[k]` held-out paraphrases, then
    `clause_num_wording[k]` held-out wording rows (sequence templates likewise).
    A template is up to MAX_SEGMENTS segments; a segment is a literal word span (kind 0) or a slot
    (kind 1 = {A}/{X}, kind 2 = {B}/{Y}).
    """

    clause_segment_kind: np.ndarray  # int32 [T, MAX_SEGMENTS]
    clause_segment_tokens: np.ndarray  # int32 [T, MAX_SEGMENTS, PIECE_WIDTH]
    clause_segment_length: np.ndarray  # int32 [T, MAX_SEGMENTS]
    clause_offset: np.ndarray  # int32 [4]
    clause_num_train: np.ndarray  # int32 [4]
    clause_num_heldout: np.ndarray  # int32 [4]
    clause_num_wording: np.ndarray  # int32 [4]
    sequence_segment_kind: np.ndarray  # int32 [S, MAX_SEGMENTS]
    sequence_segment_tokens: np.ndarray  # int32 [S, MAX_SEGMENTS, PIECE_WIDTH]
    sequence_segment_length: np.ndarray  # int32 [S, MAX_SEGMENTS]
    sequence_num_train: int
    sequence_num_heldout: int
    sequence_num_wording: int
    colour_ids: np.ndarray  # int32 [6]
    noun_ids: np.ndarray  # int32 [4, 2] (synonym 1 repeats the canonical word where none exists)
    heldout_colour_ids: np.ndarray  # int32 [6]
    heldout_noun_ids: np.ndarray  # int32 [4]
    the_id: int
    location_tokens: np.ndarray  # int32 [5, 4]
    location_length: np.ndarray  # int32 [5]


def _segments(template: str) -> tuple[list[int], list[list[int]]]:
    """Split a template into segment kinds and literal token lists."""
    kinds: list[int] = []
    tokens: list[list[int]] = []
    table = word_to_id()
    for word in template.split():
        slot = {"{A}": 1, "{X}": 1, "{B}": 2, "{Y}": 2}.get(word)
        if slot is not None:
            kinds.append(slot)
            tokens.append([])
        elif kinds and kinds[-1] == 0:
            tokens[-1].append(table[word])
        else:
            kinds.append(0)
            tokens.append([table[word]])
    if len(kinds) > MAX_SEGMENTS:
        raise ValueError(f"template {template!r} has more than {MAX_SEGMENTS} segments")
    return kinds, tokens


def _stack_templates(templates: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    kind = np.zeros((len(templates), MAX_SEGMENTS), np.int32)
    toks = np.zeros((len(templates), MAX_SEGMENTS, PIECE_WIDTH), np.int32)
    length = np.zeros((len(templates), MAX_SEGMENTS), np.int32)
    for row, template in enumerate(templates):
        kinds, tokens = _segments(template)
        for seg, (k, t) in enumerate(zip(kinds, tokens, strict=True)):
            kind[row, seg] = k
            toks[row, seg, : len(t)] = t
            length[row, seg] = len(t)
    return kind, toks, length


@functools.cache
def token_tables() -> TokenTables:
    """Build (once) the integer template tables from the static task language."""
    table = word_to_id()
    clause_templates: list[str] = []
    offsets, num_train, num_heldout, num_wording = [], [], [], []
    for kind in range(len(STAGE_KINDS)):
        train, heldout, wording = CLAUSE_TEMPLATES[kind]
        offsets.append(len(clause_templates))
        num_train.append(len(train))
        num_heldout.append(len(heldout))
        num_wording.append(len(wording))
        clause_templates.extend(train + heldout + wording)
    c_kind, c_tok, c_len = _stack_templates(clause_templates)
    s_kind, s_tok, s_len = _stack_templates(list(sum(SEQUENCE_TEMPLATES, ())))
    nouns = np.array([[table[s[0]], table[s[-1]]] for s in NOUN_SYNONYMS], np.int32)
    loc_tok = np.zeros((len(LOCATIONS), 4), np.int32)
    loc_len = np.zeros((len(LOCATIONS),), np.int32)
    for i, loc in enumerate(LOCATIONS):
        ids = [table[w] for w in loc.split()]
        loc_tok[i, : len(ids)] = ids
        loc_len[i] = len(ids)
    return TokenTables(
        clause_segment_kind=c_kind,
        clause_segment_tokens=c_tok,
        clause_segment_length=c_len,
        clause_offset=np.array(offsets, np.int32),
        clause_num_train=np.array(num_train, np.int32),
        clause_num_heldout=np.array(num_heldout, np.int32),
        clause_num_wording=np.array(num_wording, np.int32),
        sequence_segment_kind=s_kind,
        sequence_segment_tokens=s_tok,
        sequence_segment_length=s_len,
        sequence_num_train=len(SEQUENCE_TEMPLATES[0]),
        sequence_num_heldout=len(SEQUENCE_TEMPLATES[1]),
        sequence_num_wording=len(SEQUENCE_TEMPLATES[2]),
        colour_ids=np.array([table[c] for c in COLOURS], np.int32),
        noun_ids=nouns,
        heldout_colour_ids=np.array([table[c] for c in HELDOUT_COLOUR_WORDS], np.int32),
        heldout_noun_ids=np.array([table[n] for n in HELDOUT_NOUN_WORDS], np.int32),
        the_id=table["the"],
        location_tokens=loc_tok,
        location_length=loc_len,
    )


def noun_phrase(obj_type: int, colour: int, location: int = 0, synonym: int = 0) -> str:
    """Host-side noun phrase, e.g. "the red ball in front of you"."""
    synonyms = NOUN_SYNONYMS[obj_type]
    words = ["the", COLOURS[colour], synonyms[min(synonym, len(synonyms) - 1)]]
    if LOCATIONS[location]:
        words.append(LOCATIONS[location])
    return " ".join(words)


@functools.cache
def get_tokenizer():
    """The task vocabulary as a Hugging Face `PreTrainedTokenizerFast` (word level, [PAD] = 0).

    Save it with `tokenizer.save_pretrained(path)`; ids agree with the JAX environment's instruction ids.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=word_to_id(), unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=MAX_INSTRUCTION_LENGTH,
    )

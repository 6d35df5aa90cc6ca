"""`TokenBridge`: turns the built-in world's word ids into a pretrained tokenizer's ids, inside `jit`.

The world writes instructions in its own word-level vocabulary (`sima2.envs.vocabulary`, pad id 0). A
pretrained planner or text encoder reads its own tokenizer's ids (BERT wordpiece, GPT-2 / Llama BPE), so
the agent maps one to the other on device. The bridge holds, for every world word, that word's ids in the
pretrained tokenizer, padded to width K (`[V, K]` tables + lengths), in two forms: at the start of the text
and inside it (BPE marks a leading space: "go" vs "Ġgo"). Its output equals `tokenizer(text)` of the
decoded instruction, special tokens included ([CLS] ... [SEP] for BERT, BOS where the tokenizer adds one):

    bridge = TokenBridge.from_tokenizer(AutoTokenizer.from_pretrained(path))
    ids, mask = bridge(world_ids)            # Int[N], Bool[N]; jit / vmap freely

Everything in a bridge is static Python data (tuples), so it lives in an agent's static config, is saved
in `agent_config.json` and costs nothing to trace.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

# Words the decoded text joins to the previous word without a space (`decode_ids` writes "ball, then").
DEFAULT_ATTACHED = (",",)
# A plain word placed before a word to see how the tokenizer writes it mid-sentence.
_ANCHOR = "a"


def _encode(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def _pad_rows(rows: Sequence[Sequence[int]], width: int, pad: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(row) + (pad,) * (width - len(row)) for row in rows)


def _special_tokens(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ids the tokenizer adds around a text by default: ([CLS],) / (BOS,) before, ([SEP],) after."""
    plain = _encode(tokenizer, _ANCHOR)
    full = [int(i) for i in tokenizer(_ANCHOR)["input_ids"]]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start]), tuple(full[start + len(plain) :])
    raise ValueError(f"cannot find the text's own ids {plain} inside the tokenizer's output {full}")


@dataclasses.dataclass(frozen=True)
class TokenBridge:
    """World word ids -> a pretrained tokenizer's ids + attention mask (see the module docstring).

    `table[v]` / `lengths[v]`: the ids of word `v` inside a text; `first_table` / `first_lengths`: at its
    start. Words with length 0 (padding, special tokens) produce nothing, as `decode_ids` drops them.
    `prefix` / `suffix` are the special tokens around the text, `pad_id` fills the tail, and `max_length`
    (optional) truncates the words so that the output, special tokens included, has that length.
    """

    table: tuple[tuple[int, ...], ...]
    lengths: tuple[int, ...]
    first_table: tuple[tuple[int, ...], ...]
    first_lengths: tuple[int, ...]
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()
    pad_id: int = 0
    max_length: int | None = None
    tokenizer_name: str = ""
    tokenizer_vocab_size: int | None = None  # ids it emits lie in [0, tokenizer_vocab_size)

    def __post_init__(self) -> None:
        vocab = len(self.lengths)
        if not (len(self.table) == len(self.first_table) == len(self.first_lengths) == vocab) or vocab == 0:
            raise ValueError("a TokenBridge needs one table row and one length per source word")
        for name in ("table", "first_table", "prefix", "suffix"):  # plain ints, hashable
            value = getattr(self, name)
            rows = tuple(tuple(int(i) for i in row) for row in value) if "table" in name else tuple(map(int, value))
            object.__setattr__(self, name, rows)
        for name in ("lengths", "first_lengths"):
            object.__setattr__(self, name, tuple(int(n) for n in getattr(self, name)))
        if any((a == 0) != (b == 0) for a, b in zip(self.lengths, self.first_lengths, strict=True)):
            raise ValueError("a word must produce tokens in both forms or in neither")
        if self.max_length is not None and self.max_length < len(self.prefix) + len(self.suffix):
            raise ValueError(
                f"max_length={self.max_length} leaves no room between the {len(self.prefix)} + {len(self.suffix)} "
                "special tokens"
            )

    # --- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        words: Sequence[str | None] | None = None,
        *,
        attached: Sequence[str] = DEFAULT_ATTACHED,
        max_length: int | None = None,
    ) -> TokenBridge:
        """Build the tables from a Hugging Face tokenizer.

        `words[i]` is the text of source id `i` (`None`: produces no tokens); the default is the built-in
        world's vocabulary, whose special tokens ([PAD], [UNK], [BOS], [EOS]) produce none. Words in
        `attached` follow the previous word without a space. The result is checked on a text holding every
        word: a tokenizer whose ids do not compose word by word raises a ValueError naming it.
        """
        if words is None:
            from sima2.envs.vocabulary import SPECIAL_TOKENS, vocabulary

            words = [None if w in SPECIAL_TOKENS else w for w in vocabulary()]
        words = list(words)
        name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
        anchor = _encode(tokenizer, _ANCHOR)
        first_rows: list[list[int]] = []
        rows: list[list[int]] = []
        for word in words:
            if word is None:
                first_rows.append([])
                rows.append([])
                continue
            if not word.strip() or word != word.strip():
                raise ValueError(f"source word {word!r} must be non-empty and without surrounding spaces")
            first = _encode(tokenizer, word)
            joined = _encode(tokenizer, _ANCHOR + ("" if word in attached else " ") + word)
            if not first or joined[: len(anchor)] != anchor or len(joined) == len(anchor):
                raise ValueError(
                    f"tokenizer {name!r} does not write {word!r} as separate tokens after another word "
                    f"({_ANCHOR!r} -> {anchor}, {_ANCHOR!r} + {word!r} -> {joined})"
                )
            first_rows.append(first)
            rows.append(joined[len(anchor) :])
        width = max(1, *map(len, rows), *map(len, first_rows))
        prefix, suffix = _special_tokens(tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        bridge = cls(
            table=_pad_rows(rows, width, 0),
            lengths=tuple(map(len, rows)),
            first_table=_pad_rows(first_rows, width, 0),
            first_lengths=tuple(map(len, first_rows)),
            prefix=prefix,
            suffix=suffix,
            pad_id=int(pad_id) if pad_id is not None else 0,
            max_length=max_length,
            tokenizer_name=name,
            tokenizer_vocab_size=len(tokenizer),
        )
        bridge._check(tokenizer, words, attached)
        return bridge

    def _check(self, tokenizer: Any, words: Sequence[str | None], attached: Sequence[str]) -> None:
        """The tables, word after word, must give the tokenizer's own encoding of a text holding every word,
        and of every word followed by each attached word (SentencePiece-style tokenizers may merge "ball,")."""
        ids = [i for i, w in enumerate(words) if w is not None]
        text = "".join(("" if words[i] in attached or n == 0 else " ") + words[i] for n, i in enumerate(ids))
        cases = [(text, [ids[0]], ids[1:])]
        attached_ids = [i for i in ids if words[i] in attached]
        for a in attached_ids:
            cases += [(f"{_ANCHOR} {words[i]}{words[a]}", [], [i, a]) for i in ids if i not in attached_ids]
        for text, first, inside in cases:
            expected = [int(i) for i in tokenizer(text)["input_ids"]]
            got = list(self.prefix) + (list(_encode(tokenizer, _ANCHOR)) if not first else [])
            got += [t for i in first for t in self.first_table[i][: self.first_lengths[i]]]
            got += [t for i in inside for t in self.table[i][: self.lengths[i]]] + list(self.suffix)
            if got != expected:
                where = next((k for k, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), len(got))
                raise ValueError(
                    f"tokenizer {self.tokenizer_name!r} does not encode {text[:60]!r} word by word (first "
                    f"difference at token {where}: tables give {got[where:][:6]}, the tokenizer "
                    f"{expected[where:][:6]}); the world's word ids cannot be bridged to it"
                )

    # --- persistence -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TokenBridge:
        """Inverse of `to_dict` (JSON lists become the tuples the bridge stores)."""
        raw = dict(raw)
        for name in ("table", "first_table"):
            raw[name] = tuple(tuple(row) for row in raw[name])
        for name in ("lengths", "first_lengths", "prefix", "suffix"):
            raw[name] = tuple(raw[name])
        return cls(**raw)

    # --- the mapping -----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of source (world) word ids the tables cover."""
        return len(self.lengths)

    @property
    def max_token_id(self) -> int:
        """The largest id the bridge can emit (must be below the pretrained model's vocabulary size)."""
        return max(max(map(max, self.table)), max(map(max, self.first_table)), *self.prefix, *self.suffix,
                   self.pad_id)

    def longest_output(self, num_words: int) -> int:
        """An upper bound on the output length, special tokens included, for texts of at most `num_words`
        source words: the `num_words` longest words' tokens (a tight padded length for an env)."""
        per_word = sorted((max(a, b) for a, b in zip(self.lengths, self.first_lengths, strict=True)), reverse=True)
        return len(self.prefix) + sum(per_word[:num_words]) + len(self.suffix)

    def output_length(self, input_length: int) -> int:
        """Length of the bridged sequence for `input_length` source ids: `max_length`, or enough for all."""
        if self.max_length is not None:
            return self.max_length
        return len(self.prefix) + input_length * len(self.table[0]) + len(self.suffix)

    def __call__(self, ids: Int[Array, " L"]) -> tuple[Int[Array, " N"], Bool[Array, " N"]]:
        """One source id sequence (pad 0 anywhere) -> (pretrained ids, attention mask), fixed length N.

        Ids outside the source vocabulary produce no tokens (as padding does).
        """
        ids = jnp.asarray(ids).astype(jnp.int32)
        length = self.output_length(ids.shape[0])
        width = len(self.table[0])
        num_prefix, num_suffix = len(self.prefix), len(self.suffix)
        budget = length - num_prefix - num_suffix  # room for word tokens

        known = (ids >= 0) & (ids < self.vocab_size)
        word = jnp.where(known, ids, 0)
        lengths = jnp.asarray(self.lengths, jnp.int32)[word]
        present = known & (lengths > 0)
        first = present & (jnp.cumsum(present) == 1)  # the text's first word is written without a space
        pieces = jnp.where(
            first[:, None], jnp.asarray(self.first_table, jnp.int32)[word], jnp.asarray(self.table, jnp.int32)[word]
        )
        count = jnp.where(first, jnp.asarray(self.first_lengths, jnp.int32)[word], lengths)
        count = jnp.where(present, count, 0)

        # Word i's pieces go to consecutive slots after the prefix and the words before it.
        start = num_prefix + jnp.cumsum(count) - count
        slot = start[:, None] + jnp.arange(width)[None, :]
        keep = (jnp.arange(width)[None, :] < count[:, None]) & (slot < num_prefix + budget)
        slot = jnp.where(keep, slot, length)  # out of range: dropped by the scatter
        out = jnp.full((length,), self.pad_id, jnp.int32)
        if num_prefix:
            out = out.at[:num_prefix].set(jnp.asarray(self.prefix, jnp.int32))
        out = out.at[slot.reshape(-1)].set(pieces.reshape(-1), mode="drop")
        used = num_prefix + jnp.minimum(count.sum(), budget)
        if num_suffix:
            out = out.at[used + jnp.arange(num_suffix)].set(jnp.asarray(self.suffix, jnp.int32), mode="drop")
        mask = jnp.arange(length) < used + num_suffix
        return out, mask


__all__ = ["DEFAULT_ATTACHED", "TokenBridge"]

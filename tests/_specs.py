"""`EnvSpec`s for tests: the built-in world's and small custom ones."""

from __future__ import annotations

from sima2.contract import ActionSpec, ArraySpec, EnvSpec, ObservationSpec


def make_spec(
    *,
    nvec: tuple[int, ...],
    proprio: int,
    vocab_size: int,
    instruction_length: int,
    image_size: int = 64,
    max_instruction_words: int | None = None,
) -> EnvSpec:
    """An env spec of the given sizes; `max_instruction_words` defaults to the whole instruction."""
    observation = ObservationSpec(
        image=ArraySpec((image_size, image_size, 3), "uint8"),
        instruction=ArraySpec((instruction_length,), "int32"),
        proprio=ArraySpec((proprio,), "float32"),
        vocab_size=vocab_size,
    )
    words = instruction_length if max_instruction_words is None else max_instruction_words
    return EnvSpec(observation=observation, action=ActionSpec(tuple(nvec)), max_instruction_words=words)


def world_spec(image_size: int = 64, level: str = "sima2/GoTo-v0") -> EnvSpec:
    """The spec of the built-in world `level` at `image_size` pixels."""
    from sima2.envs import make

    return make(level, image_size=image_size)[0].spec

"""Held-out validation in behaviour cloning and the augmentation comparison built on it: the last episodes
are held out and scored by greedy action accuracy, and a crop that hides a position cue is caught."""

from __future__ import annotations

import json
import logging

import datasets
import equinox as eqx
import jax
import numpy as np
import pytest
from _specs import world_spec
from _training_standins import NVEC, MLPAgent, append_row

from sima2.policy import Agent
from sima2.training import (
    HeldOutAccuracy,
    TrainConfig,
    apply_overrides,
    compare_augmentations,
    split_validation,
    train_bc,
)
from sima2.training.data import FEATURES, rows_to_batch


def _cue_demos(
    num_episodes: int, length: int = 4, *, cue1_share: float = 0.5, flipped_from: int | None = None, seed: int = 0
) -> datasets.Dataset:
    """Episodes whose expert's first action factor is the cue: the row of the one lit pixel (row 1: 0, row 2:
    1, in `cue1_share` of the steps). Only its absolute position tells them apart, which a random crop
    hides. From episode `flipped_from` on, the expert does the opposite and the rows say so in their
    proprio: only training on them teaches it."""
    rng = np.random.default_rng(seed)
    rows = {name: [] for name in FEATURES}
    for episode in range(num_episodes):
        flipped = flipped_from is not None and episode >= flipped_from
        for step in range(length):
            cue = int(rng.random() < cue1_share)
            image = np.zeros((4, 4, 3), np.uint8)
            image[1 + cue, 1] = 255
            append_row(rows, image=image, instruction="follow the cue", instruction_ids=[0],
                       proprio=[float(flipped), 0.0], action=[1 - cue if flipped else cue, 0, 0], episode=episode,
                       step=step)
    return datasets.Dataset.from_dict(rows, features=FEATURES)


def _config(out, *overrides: str) -> TrainConfig:
    return apply_overrides(TrainConfig(), [
        f"out={out}", "bc.batch_size=8", "bc.sequence_length=2", "optim.lr=1e-2", "optim.warmup_steps=5",
        "optim.decay_steps=100", "monitor.log_every=50", "monitor.progress=False", "monitor.tensorboard=False",
        "checkpoint.async_save=False", "data.prefetch=0", *overrides,
    ])


def test_the_last_episodes_are_held_out_and_scored_in_the_metrics(tmp_path):
    """Held-out episodes whose expert acts against the training rule: never trained on, so the cloned agent
    gets their cue factor wrong while the constant factors are right; the scores go to metrics.jsonl at
    checkpoint steps and the end, and to validation.json."""
    demos = _cue_demos(16, flipped_from=12)
    train, held = split_validation(demos, 4)
    assert sorted(set(held["episode_id"])) == [12, 13, 14, 15] and len(held) == 16
    assert set(train["episode_id"]).isdisjoint(held["episode_id"]) and len(train) + len(held) == len(demos)
    with pytest.raises(ValueError, match="would hold out all 16 episodes"):
        split_validation(demos, 16)

    config = _config(tmp_path, "num_updates=60", "checkpoint.every=25", "data.validation_episodes=4",
                     "bc.crop_padding=0", "bc.noise_std=0.0")
    state = train_bc(config, MLPAgent(jax.random.key(1)), demos, image_shape=(4, 4, 3), action_nvec=NVEC)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scored = [record for record in records if "val_action_accuracy" in record]
    assert [record["step"] for record in scored] == [25, 50, 60]
    final = json.loads((tmp_path / "validation.json").read_text())
    assert final == {"step": 60, "episodes": 4, "steps": 16, **{k: scored[-1][k] for k in final if "val_" in k}}
    assert final["val_action_accuracy"] <= 0.25 and final["val_action_accuracy/factor0"] <= 0.25
    assert final["val_action_accuracy/factor1"] == final["val_action_accuracy/factor2"] == 1.0
    # The same agent scores the training rule perfectly on episodes it never saw that follow it.
    assert HeldOutAccuracy(_cue_demos(4, seed=1), NVEC)(state.model)["val_action_accuracy"] == 1.0


def test_compare_augmentations_finds_the_crop_that_hides_the_cue(tmp_path, caplog):
    """The same agent cloned with the default augmentation (4-pixel crops, noise) and without: the crops
    leave only the more frequent cue's prior to go on, so it scores lower on the held-out episodes, and the
    comparison says so and warns."""
    demos = _cue_demos(40, cue1_share=0.7)
    agent = MLPAgent(jax.random.key(1))
    config = _config(tmp_path / "unused")
    with caplog.at_level(logging.WARNING, logger="sima2.training"):
        comparison = compare_augmentations(agent, demos, config, num_updates=80, validation_episodes=16,
                                           image_shape=(4, 4, 3), action_nvec=NVEC, out=tmp_path)
    cropped, plain = comparison.results
    assert cropped.bc == config.bc and not plain.augmented and cropped.augmented
    assert comparison.held_out_episodes == 16 and comparison.held_out_steps == 64
    assert plain.accuracy == 1.0 and cropped.accuracy < plain.accuracy - comparison.margin
    assert comparison.best is plain and len(plain.factor_accuracy) == len(NVEC)
    assert "bc.crop_padding=4 bc.noise_std=0.02 lowers it by" in comparison.summary()
    assert any("augmentation lowers held-out accuracy" in record.message for record in caplog.records)
    # Scored on the held-out rows: before training the agent is far from what either run reached.
    _, held = split_validation(demos, 16)
    assert HeldOutAccuracy(held, NVEC)(agent)["val_action_accuracy"] < cropped.accuracy
    # Both runs' stage configs record the augmentation they trained with.
    for i, result in enumerate(comparison.results):
        recorded = json.loads((tmp_path / f"candidate{i}" / "config.json").read_text())["bc"]
        assert recorded["crop_padding"] == result.bc.crop_padding and recorded["noise_std"] == result.bc.noise_std


def _random_demos(spec, lengths: list[int]) -> datasets.Dataset:
    """Rows shaped by `spec` with random content and random expert actions, one episode per length."""
    rng = np.random.default_rng(3)
    obs, nvec = spec.observation, spec.action.nvec
    rows = {name: [] for name in FEATURES}
    for episode, length in enumerate(lengths):
        instruction = rng.integers(1, obs.vocab_size, 6).tolist()
        for step in range(length):
            append_row(rows, image=rng.integers(0, 256, obs.image.shape, np.uint8), instruction="",
                       instruction_ids=instruction, proprio=rng.normal(size=obs.proprio.shape).tolist(),
                       touch=rng.random(obs.touch.shape).tolist(), action=[int(rng.integers(n)) for n in nvec],
                       episode=episode, step=step)
    return datasets.Dataset.from_dict(rows, features=FEATURES)


def test_held_out_accuracy_of_a_tiny_agent_is_that_of_its_greedy_actions():
    """For the tiny preset's agent (conditional action factors, a memory), the held-out score equals
    stepping each held-out episode with `agent.act(deterministic=True)`, memory carried from the episode's
    start: the same greedy actions, episodes of unequal length padded without effect."""
    spec = world_spec(32)
    _, held = split_validation(_random_demos(spec, [3, 5, 2, 6]), 3)
    agent = Agent.from_preset("tiny", spec, key=jax.random.key(0))
    scores = HeldOutAccuracy(held, spec.action.nvec)(agent)

    batch = rows_to_batch(held[:], 6)
    act = eqx.filter_jit(lambda obs, carry: agent.act(jax.random.key(0), obs, carry, deterministic=True))
    right, carry = [], agent.initial_carry()
    for row in range(len(held)):
        if batch["step_id"][row] == 0:
            carry = agent.initial_carry()
        action, carry, _ = act(jax.tree.map(lambda x, r=row: x[r], batch["obs"]), carry)
        right.append(np.asarray(action) == batch["action"][row])
    right = np.array(right)
    assert len(right) == 13 and 0 < right.mean() < 1  # some factors right, some wrong: a real comparison
    assert scores["val_action_accuracy"] == pytest.approx(right.all(-1).mean())
    for factor in range(len(spec.action.nvec)):
        assert scores[f"val_action_accuracy/factor{factor}"] == pytest.approx(right[:, factor].mean())

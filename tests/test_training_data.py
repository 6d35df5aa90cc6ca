"""Tests of the demonstration data pipeline: recording, parquet round trip through `datasets.load_dataset`,
bad-row reports, the resumable shuffled iterator, augmentations and behaviour cloning end to end."""

import json

import datasets
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _training_standins import NVEC, GRUAgent, LineParams, LineWorld, MemorylessMLPAgent, append_row

from sima2.perception import augment_images
from sima2.training import (
    BCConfig,
    DemonstrationBatches,
    TrainConfig,
    apply_overrides,
    check_dataset,
    load_demonstrations,
    make_bc,
    record_demonstrations,
    save_demonstrations,
    train_bc,
    validate_rows,
)
from sima2.training.data import FEATURES


def _describe(obs):
    side = int(obs["instruction"][0])
    return ["go left", "go right"][side], ["face the line", f"walk {'left' if side == 0 else 'right'}"]


@pytest.fixture(scope="module")
def demos():
    return record_demonstrations(
        LineWorld(), LineParams(), jax.random.key(0), num_envs=4, num_steps=20, describe=_describe
    )


def test_recorded_demonstrations_round_trip_through_load_dataset(demos, tmp_path):
    assert len(demos) > 20 and demos.features["image"] == datasets.Image()
    # Expert episodes in the line world take 2 steps and go toward the instructed side.
    for row in demos.select(range(6)):
        assert row["action"][0] == row["instruction_ids"][0]
        assert row["instruction"] == ["go left", "go right"][row["instruction_ids"][0]]
    assert set(demos["step_id"]) == {0, 1}
    assert len(set(demos["episode_id"])) == len(demos) // 2
    save_demonstrations(demos, tmp_path)
    loaded = load_demonstrations(str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert loaded.features == demos.features and len(loaded) == len(demos)
    assert any((tmp_path / "cache").rglob("*.arrow"))  # the Arrow copy went where it was asked to
    np.testing.assert_array_equal(np.asarray(loaded[3]["image"]), np.asarray(demos[3]["image"]))
    assert loaded[3]["plan"] == demos[3]["plan"]
    with pytest.raises(ValueError, match="lacks the columns"):
        bad_folder = tmp_path / "other"
        datasets.Dataset.from_dict({"x": [1, 2]}).to_parquet(str(bad_folder / "data" / "train-0.parquet"))
        load_demonstrations(str(bad_folder))


def test_noisy_demonstrations_record_the_expert_while_executing_slips():
    """With noise, executed random actions knock the expert off its path (longer episodes), yet every row
    records the expert's own action for the state shown (toward the instructed side, wherever it stands)."""
    clean = record_demonstrations(LineWorld(), LineParams(), jax.random.key(1), num_envs=8, num_steps=40,
                                  describe=_describe)
    noisy = record_demonstrations(LineWorld(), LineParams(), jax.random.key(1), num_envs=8, num_steps=40,
                                  describe=_describe, noise=0.6)
    assert max(noisy["step_id"]) > max(clean["step_id"]) == 1
    assert all(action[0] == ids[0] for action, ids in zip(noisy["action"], noisy["instruction_ids"], strict=True))
    positions = {int(np.argmax(np.asarray(image)[0, :, 0])) for image in noisy["image"]}
    assert len(positions) > len({int(np.argmax(np.asarray(image)[0, :, 0])) for image in clean["image"]})
    with pytest.raises(ValueError, match="noise must be a probability"):
        record_demonstrations(LineWorld(), LineParams(), jax.random.key(1), num_envs=2, num_steps=4,
                              describe=_describe, noise=1.0)


def test_bad_rows_are_reported_with_their_index(demos):
    rows = demos.select(range(10)).to_dict()
    rows["image"][1] = np.zeros((5, 4, 3), np.uint8)
    rows["action"][3] = [9, 0, 0]
    rows["instruction"][4] = "   "
    broken = datasets.Dataset.from_dict(rows, features=demos.features)
    problems = validate_rows(broken, image_shape=(4, 4, 3), action_nvec=NVEC)
    assert [index for index, _ in problems] == [1, 3, 4]
    assert "image shape" in problems[0][1] and "out of range" in problems[1][1] and "empty" in problems[2][1]
    # Data of an agent that is not told the task (a team's listener) may have empty instructions.
    allowed = validate_rows(broken, image_shape=(4, 4, 3), action_nvec=NVEC, allow_empty_instructions=True)
    assert [index for index, _ in allowed] == [1, 3]
    with pytest.raises(ValueError, match="row 1: image shape.*row 3: action.*row 4: empty instruction"):
        check_dataset(broken, image_shape=(4, 4, 3), action_nvec=NVEC)
    kept = check_dataset(broken, image_shape=(4, 4, 3), action_nvec=NVEC, on_invalid="drop")
    # Dropping removes whole episodes, so sequence windows never jump over a hole.
    bad_episodes = {rows["episode_id"][i] for i in (1, 3, 4)}
    expected = [i for i, episode in enumerate(rows["episode_id"]) if episode not in bad_episodes]
    assert 0 < len(expected) < 7 and kept["episode_id"] == [rows["episode_id"][i] for i in expected]
    assert not validate_rows(kept, image_shape=(4, 4, 3), action_nvec=NVEC)


def test_bad_ids_proprio_touch_and_missing_values_are_reported(demos):
    rows = demos.select(range(8)).to_dict()
    rows["instruction_ids"][0] = [1, 500]
    rows["instruction_ids"][2] = [-1]
    rows["proprio"][3] = rows["proprio"][3][:-1]
    rows["proprio"][5] = None
    rows["step_id"][6] = None
    assert rows["touch"][7] == []  # the line world has no touch: every row records an empty vector
    rows["touch"][7] = [float("nan")]
    broken = datasets.Dataset.from_dict(rows, features=demos.features)
    problems = dict(validate_rows(broken, image_shape=(4, 4, 3), action_nvec=NVEC, vocab_size=100))
    assert sorted(problems) == [0, 2, 3, 5, 6, 7]
    assert "[0, 100)" in problems[0] and "non-negative" not in problems[2] and "length" in problems[3]
    assert problems[5] == "no proprio" and problems[6] == "no step_id" and problems[7] == "touch of length 1 != 0"
    # Without a vocabulary size only negative ids are known to be wrong.
    assert sorted(dict(validate_rows(broken, image_shape=(4, 4, 3), action_nvec=NVEC))) == [2, 3, 5, 6, 7]
    with pytest.raises(ValueError, match="6 invalid dataset rows"):
        check_dataset(broken, image_shape=(4, 4, 3), action_nvec=NVEC, vocab_size=100)


def test_iterator_is_deterministic_covers_epochs_and_resumes_at_a_position(demos):
    batches = DemonstrationBatches(demos, 8, seed=3, prefetch=2)
    served = [next(batches) for _ in range(7)]
    batches.close()
    assert batches.position == 7
    epoch = np.concatenate([b["episode_id"] * 2 + b["step_id"] for b in served[: batches.batches_per_epoch]])
    assert len(set(epoch.tolist())) == len(epoch)  # no row twice within an epoch
    resumed = DemonstrationBatches(demos, 8, seed=3, position=5, prefetch=0)
    for expected in served[5:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["obs"]["image"], expected["obs"]["image"])
        np.testing.assert_array_equal(got["action"], expected["action"])
    other_seed = DemonstrationBatches(demos, 8, seed=4, prefetch=0)
    assert not np.array_equal(next(other_seed)["episode_id"], served[0]["episode_id"])
    with pytest.raises(ValueError, match="batch_size"):
        DemonstrationBatches(demos, 0)


def test_augmentations_keep_shape_and_dtype_and_vary_images():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3)), jnp.uint8)
    same = augment_images(jax.random.key(0), images, crop_padding=0, noise_std=0.0)
    np.testing.assert_array_equal(same, images)
    out = augment_images(jax.random.key(0), images, crop_padding=2, noise_std=0.05)
    assert out.shape == images.shape and out.dtype == jnp.uint8 and not np.array_equal(out, images)


def test_brightness_and_contrast_keep_each_pixels_hue():
    """The jitter scales every channel of a pixel alike (about the image's grey), so a red pixel stays red."""
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.integers(40, 200, (16, 8, 8, 3)), jnp.uint8)
    out = augment_images(jax.random.key(2), images, crop_padding=0, noise_std=0.0, brightness=0.4, contrast=0.3)
    src, got = np.asarray(images, np.float64), np.asarray(out, np.float64)
    means = [(src[i].mean(), got[i].mean()) for i in range(16)]
    assert len({round(b / a, 3) for a, b in means}) > 8  # a factor per image
    # got = grey' + k * (src - grey): channel differences within a pixel scale by one factor per image.
    src_diff, got_diff = src[..., 0] - src[..., 1], got[..., 0] - got[..., 1]
    for i in range(16):
        unclipped = (got[i] > 0).all(-1) & (got[i] < 255).all(-1)
        a, b = src_diff[i][unclipped], got_diff[i][unclipped]
        k = np.sum(a * b) / np.sum(a**2)
        np.testing.assert_allclose(b, k * a, atol=1.5)
    with pytest.raises(ValueError, match="brightness and contrast"):
        augment_images(jax.random.key(0), images, crop_padding=0, noise_std=0.0, brightness=1.5)


def test_behaviour_cloning_learns_the_expert_and_writes_outputs(demos, tmp_path):
    config = apply_overrides(
        TrainConfig(),
        [
            f"out={tmp_path}",
            "num_updates=60",
            "bc.batch_size=16",
            "optim.lr=1e-2",
            "optim.warmup_steps=5",
            "optim.decay_steps=60",
            "monitor.log_every=10",
            "monitor.progress=False",
            "checkpoint.every=30",
            "checkpoint.async_save=False",
            "bc.crop_padding=0",
            "bc.noise_std=0.0",
        ],
    )
    agent = MemorylessMLPAgent(jax.random.key(1))
    plan_loss = lambda model, batch: 0.0 * jnp.mean(model.value.weight)  # noqa: E731
    state = train_bc(config, agent, demos, image_shape=(4, 4, 3), action_nvec=NVEC, plan_loss=plan_loss)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < 0.5 * losses[0] and "plan_loss" in records[0]
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["30", "60"]
    assert list((tmp_path / "tb").iterdir())
    batch = next(DemonstrationBatches(demos, 32, prefetch=0))
    logits = jax.vmap(lambda o: state.model._heads(o)[0])(batch["obs"])
    accuracy = float((jnp.argmax(logits[:, :4], -1) == batch["action"][:, 0]).mean())
    assert accuracy == 1.0


def _recall_demos(num_episodes: int, length: int = 4) -> datasets.Dataset:
    """Episodes whose expert repeats a cue that is visible only in the first image: memory is required."""
    rng = np.random.default_rng(0)
    rows = {name: [] for name in FEATURES}
    for episode in range(num_episodes):
        cue = int(rng.integers(0, 2))
        for step in range(length):
            image = np.zeros((4, 4, 3), np.uint8)
            if step == 0:
                image[0, 0, cue] = 255
            append_row(rows, image=image, instruction="repeat the cue", instruction_ids=[1], proprio=[0.0, 0.0],
                       action=[cue, 0, 0], episode=episode, step=step)  # a world without touch
    return datasets.Dataset.from_dict(rows, features=FEATURES)


def test_sequence_batches_start_at_episodes_and_flag_episode_starts():
    recall = _recall_demos(12)
    batches = DemonstrationBatches(recall, 3, sequence_length=6, seed=1, prefetch=0)
    batch = next(batches)
    assert batch["obs"]["image"].shape == (3, 6, 4, 4, 3) and batch["action"].shape == (3, 6, 3)
    # Episodes of 4 steps, windows of 6: every episode start, and one last window ending at the last row.
    np.testing.assert_array_equal(batches.starts, [*range(0, 41, 4), 42])
    assert batches.steps_covered == 1.0
    np.testing.assert_array_equal(batch["first"], batch["step_id"] == 0)
    starts_episode = batches.indices(0)[:, 0] % 4 == 0
    np.testing.assert_array_equal(batch["first"][:, 0], starts_episode)
    np.testing.assert_array_equal(batch["first"][starts_episode, 4], True)  # the next episode starts 4 rows on
    # Windows never run past the end of the data, and a resumed iterator serves the same windows.
    assert (batches.indices(0) < len(recall)).all()
    np.testing.assert_array_equal(
        DemonstrationBatches(recall, 3, sequence_length=6, seed=1, position=0, prefetch=0).indices(0),
        batches.indices(0),
    )
    shuffled = recall.select(np.random.default_rng(0).permutation(len(recall)))
    with pytest.raises(ValueError, match="contiguous and in step order"):
        DemonstrationBatches(shuffled, 3, sequence_length=6)
    with pytest.raises(ValueError, match=r"batch_size must be in 1\.\.12 \(windows of 6 rows: episode starts"):
        DemonstrationBatches(recall, 13, sequence_length=6)
    with pytest.raises(ValueError, match="longer than the dataset's 48 rows; lower bc.sequence_length"):
        DemonstrationBatches(recall, 1, sequence_length=49)


def _episodes_of(lengths: list[int]) -> datasets.Dataset:
    """Recall-style rows in episodes of the given lengths, ids 0, 1, ... in order."""
    parts = [_recall_demos(1, length).to_dict() for length in lengths]
    for episode, part in enumerate(parts):
        part["episode_id"] = [episode] * len(part["episode_id"])
    return datasets.Dataset.from_dict({name: sum((part[name] for part in parts), []) for name in FEATURES},
                                      features=FEATURES)


def test_sequence_windows_cover_every_row_of_episodes_longer_than_the_window():
    lengths = [11, 3, 9, 17, 8, 5, 13]
    rows = _episodes_of(lengths)
    batches = DemonstrationBatches(rows, 2, sequence_length=4, seed=3, prefetch=0)
    assert batches.steps_covered == 1.0
    served = np.concatenate([batches.indices(p) for p in range(batches.batches_per_epoch)])
    assert len(served) == len(batches.starts) - len(batches.starts) % 2  # one epoch: each start once
    covered = np.unique(np.concatenate([batches.indices(p) for p in range(2 * batches.batches_per_epoch)]))
    np.testing.assert_array_equal(covered, np.arange(sum(lengths)))  # every row, past the first 4 steps too
    # Batch number -> windows depends only on seed, epoch and position, as before.
    resumed = DemonstrationBatches(rows, 2, sequence_length=4, seed=3, position=5, prefetch=0)
    np.testing.assert_array_equal(resumed.indices(5), batches.indices(5))
    batch = next(resumed)
    np.testing.assert_array_equal(batch["first"], batch["step_id"] == 0)


def test_windows_from_episode_starts_only_say_what_they_leave_untrained():
    rows = _episodes_of([11, 3, 9])  # 23 rows; windows of 4 from 0, 11 and 14 cover rows 0-3 and 11-17
    batches = DemonstrationBatches(rows, 1, sequence_length=4, prefetch=0, window_mode="episode_starts")
    np.testing.assert_array_equal(batches.starts, [0, 11, 14])
    assert batches.steps_covered == pytest.approx(11 / 23)  # rows 4-10 and 18-22 are never trained
    with pytest.raises(ValueError, match="window starts must be one of"):
        DemonstrationBatches(rows, 1, sequence_length=4, window_mode="anywhere")
    with pytest.raises(ValueError, match="window_starts"):
        BCConfig(window_starts="anywhere")


def test_sequence_windows_start_only_at_episode_starts_and_every_t_th_step():
    lengths = [11, 3, 9, 17, 8, 5, 14]
    rows = _episodes_of(lengths)
    step = np.asarray(rows["step_id"])
    for length in (2, 3, 4, 8):
        starts = DemonstrationBatches(rows, 1, sequence_length=length, prefetch=0).starts
        # Every episode start and every `length`-th step starts a window; no other row does, but for the one
        # window moved back to end at the last row (here at step 14 - length of the last episode).
        last = len(rows) - length
        assert (step[starts[starts != last]] % length == 0).all() and (step[starts] > 0).sum() > 0
        np.testing.assert_array_equal(starts, np.unique(np.minimum(np.flatnonzero(step % length == 0), last)))


def test_train_bc_refuses_single_rows_for_an_agent_with_a_memory(tmp_path):
    recall = _recall_demos(8)
    config = apply_overrides(TrainConfig(), [f"out={tmp_path}", "num_updates=1", "bc.batch_size=4"])
    with pytest.raises(ValueError, match=r'bc.sequence_length=1 .*pipeline_config\("cpu-small"\).bc'):
        train_bc(config, GRUAgent(jax.random.key(0)), recall, image_shape=(4, 4, 3), action_nvec=NVEC)
    assert not (tmp_path / "config.json").exists()  # refused before anything was written


def test_sequence_behaviour_cloning_trains_the_memory():
    recall = _recall_demos(64)

    def train(sequence_length: int) -> float:
        config = apply_overrides(
            TrainConfig(),
            [
                "optim.lr=2e-2",
                "optim.warmup_steps=5",
                "optim.decay_steps=150",
                "bc.crop_padding=0",
                "bc.noise_std=0.0",
                "guard.enabled=False",
            ],
        )
        init, step = make_bc(GRUAgent(jax.random.key(2)), config)
        step = jax.jit(step)
        state = init(jax.random.key(3))
        windows = 16 if sequence_length > 1 else 64
        batches = DemonstrationBatches(recall, windows, sequence_length=sequence_length, prefetch=0)
        for _ in range(150):
            state, _ = step(state, next(batches))
        # Greedy replay of whole episodes with the memory threaded, as the agent acts in a world.
        test = next(DemonstrationBatches(recall, 16, sequence_length=4, seed=9, prefetch=0))
        agent, correct = state.model, []
        for window in range(16):
            carry = agent.initial_carry()
            for t in range(4):
                obs = jax.tree.map(lambda x, w=window, s=t: x[w, s], test["obs"])
                logits, _, carry = agent._core(obs, carry)
                correct.append(int(jnp.argmax(logits[:4])) == int(test["action"][window, t, 0]))
        return float(np.mean(correct))

    assert train(sequence_length=4) == 1.0
    assert train(sequence_length=1) < 0.9  # single rows never teach what to remember

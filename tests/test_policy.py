"""Tests of the factorised action distribution and the fusion actor-critic on their own."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sima2.policy import (
    MASKED_LOGIT,
    ActorCritic,
    ActorCriticConfig,
    FactorisedCategorical,
    check_action_mask,
)
from sima2.policy.distributions import num_logits

NVEC = (7, 5, 3)


def _logits(seed=0):
    return jax.random.normal(jax.random.key(seed), (sum(NVEC),)) * 3.0


def test_log_prob_and_entropy_match_numpy():
    logits = _logits()
    dist = FactorisedCategorical.from_logits(logits, NVEC)
    action = jnp.array([3, 1, 2], jnp.int32)
    parts = np.split(np.asarray(logits, np.float64), np.cumsum(NVEC)[:-1])
    log_softmax = [p - np.log(np.exp(p - p.max()).sum()) - p.max() for p in parts]
    expected_lp = sum(ls[a] for ls, a in zip(log_softmax, [3, 1, 2], strict=True))
    expected_h = sum(-(np.exp(ls) * ls).sum() for ls in log_softmax)
    np.testing.assert_allclose(dist.log_prob(action), expected_lp, rtol=1e-5)
    np.testing.assert_allclose(dist.entropy(), expected_h, rtol=1e-5)
    # A stack of candidate actions is scored at once, each as on its own.
    other = jnp.array([0, 4, 1], jnp.int32)
    stacked = dist.log_prob(jnp.stack([action, other]))
    assert stacked.shape == (2,)
    np.testing.assert_allclose(stacked, [dist.log_prob(action), dist.log_prob(other)], rtol=1e-6)
    assert dist.sample(jax.random.key(1)).dtype == jnp.int32
    assert dist.mode().tolist() == [int(np.argmax(p)) for p in parts]


def _joint_table(dist):
    """Brute force: the probability of every joint action, by enumeration."""
    actions = np.stack(np.meshgrid(*[np.arange(n) for n in NVEC], indexing="ij"), -1).reshape(-1, len(NVEC))
    return actions, np.exp(np.asarray(dist.log_prob(jnp.asarray(actions, jnp.int32)), np.float64))


def test_conditional_factors_are_an_exact_chain():
    """Each factor conditioned on the previous one: probabilities sum to 1 over all joint actions, and the
    entropy, the marginals, the mode and sampling agree with brute-force enumeration."""
    logits = jax.random.normal(jax.random.key(4), (num_logits(NVEC, conditional=True),)) * 2.0
    assert logits.shape == (7 + 7 * 5 + 5 * 3,)
    dist = FactorisedCategorical.from_logits(logits, NVEC, conditional=True)
    actions, probs = _joint_table(dist)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(dist.entropy(), -(probs * np.log(probs)).sum(), rtol=1e-4)
    assert dist.mode().tolist() == actions[np.argmax(probs)].tolist()
    for factor, marginal in enumerate(dist.marginals()):
        expected = np.bincount(actions[:, factor], weights=probs, minlength=NVEC[factor])
        np.testing.assert_allclose(marginal, expected, atol=1e-5)
    # Factor 1's table row is picked by factor 0's value: the conditional really depends on it.
    table = np.asarray(dist.log_probs[1])
    assert table.shape == (7, 5) and not np.allclose(table[0], table[1])
    samples = np.asarray(jax.vmap(dist.sample)(jax.random.split(jax.random.key(5), 20000)))
    counts = np.zeros(len(actions))
    np.add.at(counts, np.ravel_multi_index(samples.T, NVEC), 1)
    np.testing.assert_allclose(counts / counts.sum(), probs, atol=0.012)
    # Masks stay per value: a masked value is never drawn, whatever the previous factor was.
    mask = np.ones(sum(NVEC), bool)
    mask[7 + 2] = False
    masked = FactorisedCategorical.from_logits(logits, NVEC, jnp.asarray(mask), conditional=True)
    masked_samples = jax.vmap(masked.sample)(jax.random.split(jax.random.key(6), 2000))
    assert not (masked_samples[:, 1] == 2).any()
    assert np.isfinite(masked.entropy()) and masked.mode()[1] != 2
    with pytest.raises(ValueError, match="num_logits"):
        FactorisedCategorical.from_logits(jnp.zeros(sum(NVEC)), NVEC, conditional=True)


def test_independent_factors_are_the_chain_with_equal_rows():
    """Independent factors are the special case of a chain whose rows repeat the same logits."""
    logits = _logits(7)
    independent = FactorisedCategorical.from_logits(logits, NVEC)
    parts = np.split(np.asarray(logits), np.cumsum(NVEC)[:-1])
    tiled = np.concatenate([parts[0], np.tile(parts[1], 7), np.tile(parts[2], 5)])
    chain = FactorisedCategorical.from_logits(jnp.asarray(tiled), NVEC, conditional=True)
    _, p_independent = _joint_table(independent)
    _, p_chain = _joint_table(chain)
    np.testing.assert_allclose(p_chain, p_independent, rtol=1e-5)
    np.testing.assert_allclose(chain.entropy(), independent.entropy(), rtol=1e-5)
    assert chain.mode().tolist() == independent.mode().tolist()


def test_sampling_never_picks_a_masked_value():
    # Mask away the most likely value of every factor and keep a single allowed value in factor 1.
    logits = jnp.zeros(sum(NVEC)).at[jnp.array([0, 7, 12])].set(50.0)
    mask = np.ones(sum(NVEC), bool)
    mask[[0, 12]] = False
    mask[7:12] = False
    mask[9] = True
    dist = FactorisedCategorical.from_logits(logits, NVEC, jnp.asarray(mask))
    samples = jax.vmap(dist.sample)(jax.random.split(jax.random.key(0), 4000))
    assert not np.isin(samples[:, 0], [0]).any()
    assert (samples[:, 1] == 2).all()  # flat index 9 is value 2 of factor 1
    assert not np.isin(samples[:, 2], [0]).any()  # flat index 12 is value 0 of factor 2
    assert set(np.unique(samples[:, 0])) == set(range(1, 7))  # every allowed value still reachable
    assert dist.log_prob(jnp.array([0, 2, 0], jnp.int32)) < MASKED_LOGIT / 2
    assert np.isfinite(dist.entropy())


def test_all_false_factor_falls_back_to_unmasked_and_host_check_raises():
    logits = _logits(3)
    mask = np.ones(sum(NVEC), bool)
    mask[7:12] = False  # nothing allowed in factor 1
    masked = FactorisedCategorical.from_logits(logits, NVEC, jnp.asarray(mask))
    plain = FactorisedCategorical.from_logits(logits, NVEC)
    np.testing.assert_allclose(masked.log_probs[1], plain.log_probs[1])
    with pytest.raises(ValueError, match="factor 1"):
        check_action_mask(mask, NVEC)
    check_action_mask(np.ones((2, sum(NVEC)), bool), NVEC)
    with pytest.raises(ValueError, match="sum\\(nvec\\)"):
        check_action_mask(np.ones(4, bool), NVEC)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="flat logits"):
        FactorisedCategorical.from_logits(jnp.zeros(5), NVEC)
    with pytest.raises(ValueError, match="nvec"):
        FactorisedCategorical.from_logits(jnp.zeros(5), (5, 0))
    with pytest.raises(ValueError, match="divisible"):
        ActorCriticConfig(
            image_dim=8, text_dim=8, proprio_dim=2, action_nvec=NVEC, hidden_size=30, num_heads=4
        )


def _actor_critic(**sizes):
    key = jax.random.key(0)
    config = ActorCriticConfig(
        image_dim=24,
        text_dim=16,
        proprio_dim=5,
        action_nvec=NVEC,
        hidden_size=32,
        num_heads=2,
        memory_size=16,
        head_hidden=16,
        **sizes,
    )
    return ActorCritic(config, key=key)


def test_actor_critic_shapes_and_padding_is_ignored():
    model = _actor_critic()
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    image = jax.random.normal(k1, (9, 24))
    text = jax.random.normal(k2, (6, 16))
    valid = jnp.array([True, True, True, False, False, False])
    proprio = jnp.ones(5)
    logits, value, carry = model(image, text, valid, proprio, model.initial_carry())
    assert logits.shape == (num_logits(NVEC, conditional=True),) and value.shape == () and carry.shape == (16,)
    # Whatever sits in padded positions does not change the decision.
    noisy = text.at[3:].set(jax.random.normal(k3, (3, 16)) * 10)
    logits2, value2, carry2 = model(image, noisy, valid, proprio, model.initial_carry())
    np.testing.assert_allclose(logits, logits2, atol=1e-5)
    np.testing.assert_allclose(carry, carry2, atol=1e-5)
    # The memory carries information: a different carry gives a different decision.
    logits3, _, _ = model(image, text, valid, proprio, carry)
    assert not np.allclose(logits3, logits)
    with pytest.raises(ValueError, match="proprio"):
        model(image, text, valid, jnp.ones(4), model.initial_carry())


def test_actor_critic_gradients_reach_every_parameter():
    model = _actor_critic()
    image = jax.random.normal(jax.random.key(2), (9, 24))
    text = jax.random.normal(jax.random.key(3), (4, 16))
    valid = jnp.ones(4, bool)

    def loss(m):
        carry = m.initial_carry()
        total = 0.0
        for _ in range(2):  # two steps, so the memory projection gets a gradient through the carry
            logits, value, carry = m(image, text, valid, jnp.ones(5), carry)
            dist = m.distribution(logits)
            total = total + dist.log_prob(jnp.array([1, 2, 0], jnp.int32)) + value**2
        return total + m.subgoal_done_logit(carry)

    grads = eqx.filter_grad(loss)(model)
    for leaf in jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array)):
        assert jnp.any(leaf != 0)


@pytest.mark.parametrize("num_layers", [1, 3])
def test_decision_equals_running_every_block_on_every_token(num_layers):
    """The last block computes the decision token's row alone; that must equal the full computation."""
    from sima2.policy.actor_critic import DECISION, IMAGE, INSTRUCTION, MEMORY, PROPRIO

    model = _actor_critic(num_layers=num_layers)
    k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
    image, text = jax.random.normal(k1, (9, 24)), jax.random.normal(k2, (6, 16))
    valid = jnp.array([True, True, True, True, False, False])
    proprio, carry = jnp.linspace(-1, 1, 5), jax.random.normal(k3, (16,))
    logits, value, new_carry = model(image, text, valid, proprio, carry)

    seg = model.segment_embeddings
    x = jnp.concatenate([
        (model.decision_token + seg[DECISION])[None],
        (model.memory_proj(carry) + seg[MEMORY])[None],
        (model.proprio_proj(proprio) + seg[PROPRIO])[None],
        jax.vmap(model.image_proj)(image) + seg[IMAGE],
        jax.vmap(model.text_proj)(text) + seg[INSTRUCTION],
    ])
    mask = jnp.concatenate([jnp.ones(12, bool), valid])
    for block in model.blocks:
        x = block(x, mask)
    assert x.shape == (18, 32)
    np.testing.assert_allclose(model.blocks[-1](x, mask, num_queries=2), model.blocks[-1](x, mask)[:2], atol=1e-5)
    decision = model.final_norm(x[0])
    expected_carry = model.memory(decision, carry)
    features = jnp.concatenate([expected_carry, decision])
    np.testing.assert_allclose(new_carry, expected_carry, atol=1e-5)
    np.testing.assert_allclose(logits, model.actor_out(jnp.tanh(model.actor_hidden(features))), atol=1e-5)
    np.testing.assert_allclose(value, model.critic_out(jnp.tanh(model.critic_hidden(features)))[0], atol=1e-5)

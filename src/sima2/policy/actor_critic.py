"""`ActorCritic`: fuses image, language, body-state and touch tokens into one decision per step.

One joint token sequence goes through a small pre-norm transformer:

    [decision] [memory] [proprio] [touch] [image tokens ...] [instruction tokens ...] [subgoal tokens ...]

`decision` is a learned query token; `memory` is the recurrent state (GRU hidden from the previous decision
step) projected to a token, so attention can read what the agent remembered; each segment has a learned
type embedding, and padded language tokens are masked out of attention. The transformer's output at the
decision token updates the GRU (memory over decision steps, for partial observability), and the actor
(flat logits for `FactorisedCategorical`, each factor conditioned on the previous one by default) and the
critic read `[gru state, decision]`. A subgoal-done head (`subgoal_done_head`) reads the new memory alone and
says whether the step completes the current subgoal: an agent following a plan advances to its next subgoal
when it fires (`sima2.policy.plans`). Touch (contact and grip; `touch_dim > 0`) is a modality of its own
with its own encoder, a small MLP to one token; its type is learned by that encoder's output bias.

Input projections adapt to whatever hidden sizes the vision and language components have.
"""

from __future__ import annotations

import dataclasses

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from sima2.layers import attention, get_activation, linear
from sima2.policy.distributions import FactorisedCategorical, num_logits

# Segment ids for the learned type embeddings.
DECISION, MEMORY, PROPRIO, IMAGE, INSTRUCTION, SUBGOAL = range(6)
NUM_SEGMENTS = 6


@dataclasses.dataclass(frozen=True)
class ActorCriticConfig:
    """Sizes of the fusion transformer, the recurrent memory and the heads."""

    image_dim: int  # hidden size of the vision encoder's tokens
    text_dim: int  # hidden size of the language component's tokens
    proprio_dim: int
    action_nvec: tuple[int, ...]
    touch_dim: int = 0  # length of the touch observation; 0: the agent has no sense of touch
    hidden_size: int = 64  # fusion transformer width
    num_layers: int = 1
    num_heads: int = 4
    mlp_ratio: int = 2
    memory_size: int = 128  # GRU hidden size
    head_hidden: int = 128
    activation: str = "gelu"
    # Each action factor conditioned on the previous one's value (see `FactorisedCategorical`): the head
    # then emits `num_logits(action_nvec, conditional=True)` logits instead of `sum(action_nvec)`.
    conditional_actions: bool = True
    # Width of the subgoal tokens when another model than the instruction's embeds them (the agent's plan
    # writer); None: `text_dim`, through the instruction's projection.
    subgoal_dim: int | None = None
    # A logit per step: does this step complete the current subgoal? (Trained from the expert's subgoal
    # boundaries; read from the new memory, so a learner gets it from the carries it already replays.)
    subgoal_done_head: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        object.__setattr__(self, "action_nvec", tuple(int(n) for n in self.action_nvec))
        if not self.action_nvec or min(self.action_nvec) < 1:
            raise ValueError(f"action_nvec must be non-empty positive sizes, got {self.action_nvec}")


class FusionBlock(eqx.Module):
    """Pre-norm transformer block with a key-padding mask."""

    norm1: eqx.nn.LayerNorm
    qkv: eqx.nn.Linear
    out: eqx.nn.Linear
    norm2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, activation: str, *, key: PRNGKeyArray):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.norm1 = eqx.nn.LayerNorm(dim)
        self.qkv = linear(dim, 3 * dim, key=k1)
        self.out = linear(dim, dim, key=k2)
        self.norm2 = eqx.nn.LayerNorm(dim)
        self.fc1 = linear(dim, mlp_ratio * dim, key=k3)
        self.fc2 = linear(mlp_ratio * dim, dim, key=k4)
        self.num_heads = num_heads
        self.activation = activation

    def __call__(
        self, x: Float[Array, "T D"], valid: Bool[Array, " T"], *, num_queries: int | None = None
    ) -> Float[Array, "Q D"]:
        """The block's output for the first `num_queries` tokens (all by default); every token is still read
        as a key and value. A last block whose caller reads one token computes only that token's row."""
        rows = x.shape[0] if num_queries is None else num_queries
        qkv = jax.vmap(self.qkv)(jax.vmap(self.norm1)(x))
        q, k, v = einops.rearrange(qkv, "t (three h d) -> three t h d", three=3, h=self.num_heads)
        mask = jnp.broadcast_to(valid[None, :], (rows, x.shape[0]))
        att = einops.rearrange(attention(q[:rows], k, v, mask=mask), "t h d -> t (h d)")
        x = x[:rows] + jax.vmap(self.out)(att)
        h = get_activation(self.activation)(jax.vmap(self.fc1)(jax.vmap(self.norm2)(x)))
        return x + jax.vmap(self.fc2)(h)


class TouchEncoder(eqx.Module):
    """Touch (contact and grip values) -> one fusion token: a two-layer MLP."""

    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    activation: str = eqx.field(static=True)

    def __init__(self, touch_dim: int, dim: int, activation: str, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.fc1 = linear(touch_dim, dim, key=k1)
        self.fc2 = linear(dim, dim, key=k2)
        self.activation = activation

    def __call__(self, touch: Float[Array, " K"]) -> Float[Array, " D"]:
        return self.fc2(get_activation(self.activation)(self.fc1(touch.astype(jnp.float32))))


class ActorCritic(eqx.Module):
    """Fusion transformer + GRU memory + factorised actor head + value head (one example per call)."""

    image_proj: eqx.nn.Linear
    text_proj: eqx.nn.Linear
    proprio_proj: eqx.nn.Linear
    touch_encoder: TouchEncoder | None
    memory_proj: eqx.nn.Linear
    decision_token: Float[Array, " D"]
    segment_embeddings: Float[Array, "S D"]
    blocks: list[FusionBlock]
    final_norm: eqx.nn.LayerNorm
    memory: eqx.nn.GRUCell
    actor_hidden: eqx.nn.Linear
    actor_out: eqx.nn.Linear
    critic_hidden: eqx.nn.Linear
    critic_out: eqx.nn.Linear
    subgoal_done_out: eqx.nn.Linear | None
    subgoal_proj: eqx.nn.Linear | None
    config: ActorCriticConfig = eqx.field(static=True)

    def __init__(self, config: ActorCriticConfig, *, key: PRNGKeyArray):
        c = config
        d = c.hidden_size
        keys = iter(jax.random.split(key, 12 + c.num_layers))
        self.image_proj = linear(c.image_dim, d, key=next(keys))
        self.text_proj = linear(c.text_dim, d, key=next(keys))
        self.proprio_proj = linear(c.proprio_dim, d, key=next(keys))
        touch_key = jax.random.fold_in(key, 1)  # its own stream: the other parts' keys stay as they were
        self.touch_encoder = TouchEncoder(c.touch_dim, d, c.activation, key=touch_key) if c.touch_dim else None
        self.memory_proj = linear(c.memory_size, d, key=next(keys))
        self.decision_token = 0.02 * jax.random.normal(next(keys), (d,))
        self.segment_embeddings = 0.02 * jax.random.normal(next(keys), (NUM_SEGMENTS, d))
        self.blocks = [
            FusionBlock(d, c.num_heads, c.mlp_ratio, c.activation, key=next(keys)) for _ in range(c.num_layers)
        ]
        self.final_norm = eqx.nn.LayerNorm(d)
        self.memory = eqx.nn.GRUCell(d, c.memory_size, key=next(keys))
        head_in = c.memory_size + d
        self.actor_hidden = eqx.nn.Linear(head_in, c.head_hidden, key=next(keys))
        # Small final layers: a near-uniform initial policy and a near-zero initial value (standard for PPO).
        logits = num_logits(c.action_nvec, c.conditional_actions)
        self.actor_out = linear(c.head_hidden, logits, std=0.01, key=next(keys))
        self.critic_hidden = eqx.nn.Linear(head_in, c.head_hidden, key=next(keys))
        self.critic_out = linear(c.head_hidden, 1, std=0.01, key=next(keys))
        done_key = jax.random.fold_in(key, 2)  # its own stream, as the touch encoder's
        self.subgoal_done_out = linear(c.memory_size, 1, key=done_key) if c.subgoal_done_head else None
        subgoal_key = jax.random.fold_in(key, 3)
        self.subgoal_proj = None if c.subgoal_dim is None else linear(c.subgoal_dim, d, key=subgoal_key)
        self.config = config

    @property
    def num_logits(self) -> int:
        return num_logits(self.config.action_nvec, self.config.conditional_actions)

    def distribution(
        self, logits: Float[Array, " N"], mask: Bool[Array, " A"] | None = None
    ) -> FactorisedCategorical:
        """The action distribution of this head's flat `logits` (with an optional per-value action mask)."""
        return FactorisedCategorical.from_logits(
            logits, self.config.action_nvec, mask, conditional=self.config.conditional_actions
        )

    def initial_carry(self) -> Float[Array, " M"]:
        return jnp.zeros((self.config.memory_size,), jnp.float32)

    def subgoal_done_logit(self, new_carry: Float[Array, " M"]) -> Float[Array, ""]:
        """Logit that the step which produced the memory `new_carry` completed the current subgoal."""
        if self.subgoal_done_out is None:
            raise ValueError("this policy has no subgoal-done head (ActorCriticConfig.subgoal_done_head=False)")
        return self.subgoal_done_out(new_carry)[0]

    def __call__(
        self,
        image_tokens: Float[Array, "Ti Dv"],
        text_tokens: Float[Array, "Lt Dt"],
        text_valid: Bool[Array, " Lt"],
        proprio: Float[Array, " P"],
        carry: Float[Array, " M"],
        subgoal_tokens: Float[Array, "Ls Ds"] | None = None,
        subgoal_valid: Bool[Array, " Ls"] | None = None,
        touch: Float[Array, " K"] | None = None,
    ) -> tuple[Float[Array, " N"], Float[Array, ""], Float[Array, " M"]]:
        """Returns flat action logits (`self.num_logits`; see `distribution`), the value and the new memory.
        `touch` is required by, and only read by, a policy with `touch_dim > 0`."""
        c = self.config
        if proprio.shape != (c.proprio_dim,):
            raise ValueError(f"expected proprio of shape ({c.proprio_dim},), got {proprio.shape}")
        if self.touch_encoder is not None and (touch is None or touch.shape != (c.touch_dim,)):
            got = "none" if touch is None else f"shape {touch.shape}"
            raise ValueError(f"this policy reads touch of shape ({c.touch_dim},), got {got}")
        seg = self.segment_embeddings
        pieces: list[tuple[Float[Array, "t D"], Bool[Array, " t"]]] = [
            ((self.decision_token + seg[DECISION])[None], jnp.ones((1,), bool)),
            ((self.memory_proj(carry) + seg[MEMORY])[None], jnp.ones((1,), bool)),
            ((self.proprio_proj(proprio) + seg[PROPRIO])[None], jnp.ones((1,), bool)),
        ]
        if self.touch_encoder is not None:
            pieces.append((self.touch_encoder(touch)[None], jnp.ones((1,), bool)))
        pieces += [
            (jax.vmap(self.image_proj)(image_tokens) + seg[IMAGE], jnp.ones((image_tokens.shape[0],), bool)),
            (jax.vmap(self.text_proj)(text_tokens) + seg[INSTRUCTION], text_valid),
        ]
        if subgoal_tokens is not None:
            valid = subgoal_valid if subgoal_valid is not None else jnp.ones((subgoal_tokens.shape[0],), bool)
            project = self.text_proj if self.subgoal_proj is None else self.subgoal_proj
            pieces.append((jax.vmap(project)(subgoal_tokens) + seg[SUBGOAL], valid))
        x = jnp.concatenate([p[0] for p in pieces])
        valid = jnp.concatenate([p[1] for p in pieces])
        for block in self.blocks[:-1]:
            x = block(x, valid)
        # Only the decision token's output is read: the last block computes that row alone.
        if self.blocks:
            x = self.blocks[-1](x, valid, num_queries=1)
        decision = self.final_norm(x[0])
        new_carry = self.memory(decision, carry)
        features = jnp.concatenate([new_carry, decision])
        logits = self.actor_out(jnp.tanh(self.actor_hidden(features)))
        value = self.critic_out(jnp.tanh(self.critic_hidden(features)))[0]
        return logits, value, new_carry


__all__ = ["ActorCritic", "ActorCriticConfig", "FusionBlock", "TouchEncoder"]

"""`Agent`: perception (`ViTEncoder`) + language (`LanguagePlanner`) + `ActorCritic`, as one Equinox module.

Every call works on ONE raw world observation; callers `jax.vmap` over worlds and `lax.scan` over time:

    agent = Agent.from_preset("cpu-small", env.spec, key=jax.random.key(0))   # sized from the env's spec
    carry = agent.initial_carry()
    action, carry, out = agent.act(key, obs, carry)             # out: ActOutput(log_prob, value, entropy)
    log_prob, entropy, value, carry = agent.evaluate(obs, carry, action)

`obs` is the world's dict: "image" uint8 `(H, W, 3)`, "instruction" int32 `(L,)`, "proprio" float32 `(P,)`,
"touch" float32 `(K,)` (for an agent with touch), optionally "action_mask" bool `(sum(nvec),)` (True = allowed;
see `sima2.policy.distributions`) and "subgoal" int32 `(S,)` (the current subgoal, the instruction's ids).
Images are normalised inside the agent. Reset the memory at episode start: `agent.reset_carry(carry, first)`.

Training only parts of the agent (e.g. a frozen pretrained ViT): `agent.trainable_filter(freeze_vision=True)`
is a PyTree of bools for `eqx.partition` or, as labels, for `optax.multi_transform`.

Pretrained parts plug in by Hugging Face name or local path (a name that cannot be loaded raises):

    agent = Agent.from_preset("cpu-small", env.spec, key=key, vision="google/vit-base-patch16-224",
                              planner="HuggingFaceTB/SmolLM2-135M")   # or text_encoder=<BERT path>

Instructions are text at the boundary: a world made with the language model's tokenizer
(`sima2.envs.make(id, tokenizer=...)`) writes them in its ids, and `agent.tokenize(any_text)` writes any text
the same way (put it in `obs["instruction"]`); built-in word ids read by a pretrained model are mapped on
device (`sima2.planning.TokenBridge`, `config.text_bridge`). The instruction's features are the costly part of
a step and constant over an episode: rollouts compute `agent.instruction_features(ids)` once per episode and
pass them to `act(..., instruction=)`. Plans written at run time: `sima2.policy.plans`.

Saving: `agent.save_pretrained(dir)` / `Agent.from_pretrained(dir)` (files: `sima2.policy.persistence`);
presets live in `sima2.presets`, pretrained parts by name in `sima2.policy.pretrained_parts`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree, UInt8

from sima2 import presets
from sima2.contract import AbstractAgent, ActOutput, EnvSpec
from sima2.perception.vit import ViTEncoder
from sima2.planning import CausalLM, LanguagePlanner, TextEncoder
from sima2.policy import partitions
from sima2.policy.actor_critic import ActorCritic, ActorCriticConfig
from sima2.policy.distributions import FactorisedCategorical
from sima2.policy.instructions import InstructionFeatures, check_fits, check_same_tokenizer, tokenize
from sima2.policy.persistence import (
    AGENT_CONFIG_NAME,
    AGENT_WEIGHTS_NAME,
    AgentConfig,
    load_agent,
    planner_from_config,
    save_agent,
)
from sima2.policy.plans import writer_ids
from sima2.policy.pretrained_parts import plan_writer_for, pretrained_language, pretrained_vision, token_bridge

PRESETS = presets.PRESETS


# --- the agent --------------------------------------------------------------------------------------------
class Agent(AbstractAgent):
    """Vision encoder + language planner + fusion actor-critic; one raw observation per call."""

    vision: ViTEncoder
    planner: LanguagePlanner
    policy: ActorCritic
    config: AgentConfig = eqx.field(static=True)
    # A small causal LM over the world's words that writes plans (`sima2.policy.plans`) for an agent whose
    # language model cannot: a sentence encoder, or a model behind a token bridge. None: the planner writes.
    plan_writer: LanguagePlanner | None = None

    # --- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_components(
        cls,
        vision: ViTEncoder,
        planner: LanguagePlanner,
        *,
        key: PRNGKeyArray,
        preset: str = "custom",
        action_nvec: tuple[int, ...],
        proprio_dim: int,
        touch_dim: int = 0,
        policy_sizes: Mapping[str, Any] | None = None,
        plan_writer: LanguagePlanner | None = None,
        **agent_fields: Any,
    ) -> Agent:
        """Assemble an agent around given components for `action_nvec` actions, `proprio_dim` proprio and
        `touch_dim` touch (0: none); the fusion's input projections adapt to the components' widths."""
        policy_config = ActorCriticConfig(
            image_dim=vision.config.hidden_size,
            text_dim=int(planner.hidden_size),
            subgoal_dim=None if plan_writer is None else int(plan_writer.hidden_size),
            proprio_dim=int(proprio_dim),
            touch_dim=int(touch_dim),
            action_nvec=tuple(action_nvec),
            **dict(policy_sizes or {}),
        )
        config = AgentConfig(preset=preset, policy=policy_config, **agent_fields)
        policy = ActorCritic(policy_config, key=key)
        return cls(vision=vision, planner=planner, policy=policy, config=config, plan_writer=plan_writer)

    @classmethod
    def from_preset(
        cls,
        name: str,
        spec: EnvSpec,
        *,
        key: PRNGKeyArray,
        vision: ViTEncoder | str | os.PathLike | None = None,
        planner: LanguagePlanner | str | os.PathLike | None = None,
        text_encoder: str | os.PathLike | None = None,
        tokenizer: Any = None,
        instruction_length: int | None = None,
        freeze_language: bool | None = None,
        touch: bool = True,
    ) -> Agent:
        """A preset agent (`sima2.presets`: `tiny` for tests, `cpu-small` for CPU training at 64x64, `base` for a
        GPU: ViT-B/16 + LM) sized for the env's `spec`: its action factors, proprio size and word vocabulary.

        Replace a randomly initialised component with a module (`ViTEncoder.from_pretrained(...)`,
        `LanguagePlanner.from_pretrained(...)`) or with a Hugging Face name or local path:

        - `vision=`: a ViT / CLIP / SigLIP checkpoint, frozen by default; images are normalised with its
          `preprocessor_config.json` when present, and position embeddings follow the world's image size.
        - `planner=`: a causal LM (GPT-2, Llama, Qwen2); `text_encoder=`: a BERT encoder. Either is finetuned
          through LoRA adapters (the `base` preset's rank and alpha) and reads instructions through a
          `TokenBridge` to the tokenizer saved beside it.
        - `tokenizer=`: an HF tokenizer (or name / path) to bridge to instead, e.g. for a planner passed as a
          module.

        A name or path that cannot be loaded raises a ValueError naming it. `instruction_length`: read only
        that many leading instruction ids (default `spec.max_instruction_words`, the rest is padding). An env
        made with a tokenizer (`spec.observation.tokenizer`) writes instructions in its ids: the language
        model must use the same one. `freeze_language=True` keeps a pretrained language model as loaded (no
        LoRA adapters, features never differentiated). `touch=False`: no sense of touch, even where the env
        has one (`spec.observation.touch`).
        """
        if planner is not None and text_encoder is not None:
            raise ValueError("pass planner= (a causal LM) or text_encoder= (BERT), not both: the agent has one")
        table = presets.preset(name)
        agent_fields = table.agent_fields()
        k_vision, k_planner, k_policy = jax.random.split(key, 3)
        if isinstance(vision, str | os.PathLike):
            vision, vision_fields = pretrained_vision(vision)
            agent_fields = {**agent_fields, **vision_fields}
        elif vision is None:
            vision = ViTEncoder.from_config(table.vision_config(), key=k_vision)
        language_source = planner if isinstance(planner, str | os.PathLike) else text_encoder
        lora = not freeze_language  # a frozen language model needs no adapters
        if isinstance(planner, str | os.PathLike):
            planner = pretrained_language(planner, CausalLM, "planner", key=k_planner, lora=lora)
        elif text_encoder is not None:
            planner = pretrained_language(text_encoder, TextEncoder, "text_encoder", key=k_planner, lora=lora)
        elif planner is None:
            if tokenizer is not None:
                raise ValueError("tokenizer= bridges to a pretrained language model: pass planner= or text_encoder=")
            planner = planner_from_config(table.planner_config(spec.observation.vocab_size), key=k_planner)
        tokenizer = tokenizer if tokenizer is not None else language_source
        if spec.observation.tokenizer is not None:  # the env already writes instructions in a tokenizer's ids
            check_same_tokenizer(spec, tokenizer, planner)
            agent_fields = {
                **agent_fields,
                "tokenizer": spec.observation.tokenizer,
                "instruction_pad_id": spec.observation.instruction_pad_id,
            }
        elif tokenizer is not None:
            bridge = token_bridge(tokenizer, planner, spec.observation.instruction.shape[0])
            agent_fields = {**agent_fields, "text_bridge": bridge}
        if freeze_language and language_source is None:  # a frozen random language model never learns
            raise ValueError("freeze_language=True keeps a pretrained planner= or text_encoder= as loaded; pass one")
        if freeze_language is not None:
            agent_fields = {**agent_fields, "freeze_planner": bool(freeze_language)}
        instruction_length = spec.max_instruction_words if instruction_length is None else instruction_length
        agent_fields = {**agent_fields, "instruction_length": int(instruction_length)}
        writer, writer_fields = plan_writer_for(planner, spec, agent_fields, table, key=jax.random.fold_in(key, 3))
        agent_fields = {**agent_fields, **writer_fields}
        return cls.from_components(
            vision,
            planner,
            key=k_policy,
            preset=name,
            action_nvec=tuple(spec.action.nvec),
            proprio_dim=spec.observation.proprio.shape[0],
            touch_dim=spec.observation.touch.shape[0] if touch and spec.observation.touch is not None else 0,
            policy_sizes=table.policy_sizes(),
            plan_writer=writer,
            **agent_fields,
        )

    @property
    def action_nvec(self) -> tuple[int, ...]:
        return self.config.policy.action_nvec

    def preprocess_image(self, image: UInt8[Array, "H W 3"] | Float[Array, "H W 3"]) -> Float[Array, "3 H W"]:
        """uint8 HWC in [0, 255] (or float HWC in [0, 1]) -> normalised float32 CHW."""
        pixels = image.astype(jnp.float32) / (255.0 if jnp.issubdtype(image.dtype, jnp.integer) else 1.0)
        mean, std = jnp.asarray(self.config.image_mean, jnp.float32), jnp.asarray(self.config.image_std, jnp.float32)
        return jnp.transpose((pixels - mean) / std, (2, 0, 1))

    def encode_image(self, image: UInt8[Array, "H W 3"] | Float[Array, "H W 3"]) -> Float[Array, "T Dv"]:
        """Image tokens for the fusion: ViT tokens, patch grid average-pooled by `config.image_pool`."""
        pixels = self.preprocess_image(image)
        tokens = self.vision(pixels)
        pool = self.config.image_pool
        if pool == 1:
            return tokens
        p = self.vision.config.patch_size
        gh, gw = pixels.shape[1] // p, pixels.shape[2] // p
        if gh % pool or gw % pool:
            raise ValueError(
                f"patch grid {gh}x{gw} of a {pixels.shape[1:]} image is not divisible by image_pool={pool}"
            )
        prefix = tokens.shape[0] - gh * gw  # class token, if any, is kept as is
        grid = tokens[prefix:].reshape(gh // pool, pool, gw // pool, pool, -1).mean(axis=(1, 3))
        return jnp.concatenate([tokens[:prefix], grid.reshape(-1, grid.shape[-1])])

    def _check_obs(self, obs: Mapping[str, Any]) -> None:
        for name in ("image", "instruction", "proprio") + (("touch",) if self.config.policy.touch_dim else ()):
            if name not in obs:
                raise ValueError(f"observation has no {name!r} entry (got keys {sorted(obs)})")
        if obs["image"].ndim != 3 or obs["image"].shape[-1] != 3:
            raise ValueError(f"obs['image'] must be one (H, W, 3) image, got shape {obs['image'].shape}")
        if obs["instruction"].ndim != 1 or not jnp.issubdtype(obs["instruction"].dtype, jnp.integer):
            raise ValueError(
                f"obs['instruction'] must be a 1-D integer array of token ids, got {obs['instruction'].dtype}"
                f"{obs['instruction'].shape}"
            )

    def check_instruction_fits(self, num_words: int, what: str = "the instruction") -> None:
        """Host-side check that an instruction of `num_words` ids is read whole (`config.instruction_length`
        bounds what the agent reads; a longer one would lose its tail without notice inside `jit`)."""
        check_fits(self.config.instruction_length, num_words, what)

    def _embed_text(self, ids: Int[Array, " L"]) -> tuple[Float[Array, "N D"], Bool[Array, " N"]]:
        """Instruction ids (the world's words, bridged, or the tokenizer's) -> the planner's token embeddings
        and their validity mask."""
        bridge = self.config.text_bridge
        if bridge is None:
            ids, valid = ids.astype(jnp.int32), ids != self.config.instruction_pad_id
        else:
            ids, valid = bridge(ids)
        tokens, _ = self.planner.embed(ids, valid.astype(jnp.int32))
        return tokens, valid

    def instruction_features(self, instruction: Int[Array, " L"]) -> InstructionFeatures:
        """The instruction's token embeddings: the costly language part of a step, constant over an episode,
        so rollouts compute it once per episode and pass it to `act(..., instruction=)`. A frozen language
        model's features carry no gradient."""
        tokens, valid = self._embed_text(instruction[: self.config.instruction_length])
        if self.config.freeze_planner:
            tokens = jax.lax.stop_gradient(tokens)
        return InstructionFeatures(tokens=tokens, valid=valid)

    def subgoal_features(self, subgoal: Int[Array, " S"]) -> InstructionFeatures:
        """A subgoal's token embeddings for the fusion: by the agent's plan writer when it has one (small: every
        subgoal of a plan costs little), else as an instruction's."""
        if self.plan_writer is None:
            return self.instruction_features(subgoal)
        valid = subgoal != self.config.instruction_pad_id
        tokens, _ = self.plan_writer.embed(writer_ids(self, subgoal), valid.astype(jnp.int32))
        return InstructionFeatures(tokens=tokens, valid=valid)

    def instruction_features_frozen(self) -> bool:
        return self.config.freeze_planner  # a frozen language model's features never change in training

    def tokenize(self, text: str) -> Int[np.ndarray, " L"]:
        """Free text -> the instruction ids this agent reads, padded to its instruction length: its
        tokenizer's ids, or for an agent that reads the world's words their ids (other words as [UNK]). Put
        the result in `obs["instruction"]` at an episode's start to give the agent any instruction."""
        config = self.config
        return tokenize(text, config.tokenizer, config.instruction_length, config.instruction_pad_id)

    def observation_features(
        self,
        obs: Mapping[str, Any],
        instruction: InstructionFeatures | None = None,
        subgoal: InstructionFeatures | None = None,
    ) -> dict[str, Array]:
        """The part of a step that does not depend on the memory: image tokens, the instruction's (and
        subgoal's) token embeddings, proprio, touch and the action mask. Replaying memory over a sequence
        (`sima2.training.recurrent.evaluate_sequences`) computes these for all steps in one batch and runs only
        `evaluate_features` step by step. `instruction` / `subgoal`: `instruction_features(obs["instruction"])`
        / `subgoal_features` of the current subgoal computed before (once per episode or plan), else computed
        here (the subgoal from `obs["subgoal"]`, when there is one)."""
        self._check_obs(obs)
        if instruction is None:
            instruction = self.instruction_features(obs["instruction"])
        features = {
            "image": self.encode_image(obs["image"]),
            "text": instruction.tokens,
            "text_valid": instruction.valid,
            "proprio": obs["proprio"].astype(jnp.float32),
        }
        if self.config.policy.touch_dim:
            features["touch"] = obs["touch"].astype(jnp.float32)
        if subgoal is None and obs.get("subgoal") is not None:
            subgoal = self.subgoal_features(obs["subgoal"])
        if subgoal is not None:
            features["subgoal"], features["subgoal_valid"] = subgoal.tokens, subgoal.valid
        if obs.get("action_mask") is not None:
            features["action_mask"] = obs["action_mask"]
        return features

    def _decide(
        self, features: Mapping[str, Array], carry: Float[Array, " M"]
    ) -> tuple[FactorisedCategorical, Float[Array, ""], Float[Array, " M"]]:
        logits, value, new_carry = self.policy(
            features["image"],
            features["text"],
            features["text_valid"],
            features["proprio"],
            carry,
            features.get("subgoal"),
            features.get("subgoal_valid"),
            features.get("touch"),
        )
        dist = self.policy.distribution(logits, features.get("action_mask"))
        return dist, value, new_carry

    # --- the agent protocol -----------------------------------------------------------------------------
    def initial_carry(self) -> Float[Array, " M"]:
        """The recurrent memory at episode start (one example)."""
        return self.policy.initial_carry()

    def reset_carry(self, carry: Float[Array, " M"], first: Bool[Array, ""] | bool) -> Float[Array, " M"]:
        """`initial_carry()` where `first` (episode start), else `carry`."""
        return jnp.where(first, self.initial_carry(), carry)

    def act(
        self,
        key: PRNGKeyArray,
        obs: Mapping[str, Array],
        carry: Float[Array, " M"],
        *,
        deterministic: bool = False,
        instruction: InstructionFeatures | None = None,
        subgoal: InstructionFeatures | None = None,
    ) -> tuple[Int[Array, " F"], Float[Array, " M"], ActOutput]:
        """Sample (or, with `deterministic`, take the most likely) action for one observation.

        Returns `(action, new_carry, ActOutput(log_prob, value, entropy))`. `instruction` / `subgoal`: the
        episode's `instruction_features` / the current subgoal's, when the caller computed them once.
        """
        dist, value, new_carry = self._decide(self.observation_features(obs, instruction, subgoal), carry)
        action = dist.mode() if deterministic else dist.sample(key)
        return action, new_carry, ActOutput(log_prob=dist.log_prob(action), value=value, entropy=dist.entropy())

    def evaluate_features(
        self, features: Mapping[str, Array], carry: Float[Array, " M"], action: Int[Array, "*K F"]
    ) -> tuple[Float[Array, "*K"], Float[Array, ""], Float[Array, ""], Float[Array, " M"]]:
        """`(log_prob(action), entropy, value, new_carry)` from `observation_features(obs)` (PPO / behaviour
        cloning; `evaluate(obs, carry, action)` is both in one). `action` may be a stack of candidate actions
        `(K, F)`: all are scored in one forward pass."""
        dist, value, new_carry = self._decide(features, carry)
        return dist.log_prob(action), dist.entropy(), value, new_carry

    def action_logits(
        self, obs: Mapping[str, Array], carry: Float[Array, " M"]
    ) -> tuple[list[Float[Array, " _"]], Float[Array, ""], Float[Array, " M"]]:
        """Per-factor (marginal) normalised log-probabilities (masked), the value and the new carry."""
        dist, value, new_carry = self._decide(self.observation_features(obs), carry)
        return dist.marginal_log_probs(), value, new_carry

    # --- training partitions ----------------------------------------------------------------------------
    def trainable_filter(
        self, *, freeze_vision: bool | None = None, freeze_planner: bool | None = None
    ) -> PyTree[bool]:
        """True for every array to train (`sima2.policy.partitions`); defaults from the preset (`base`: frozen ViT)."""
        freeze_vision = self.config.freeze_vision if freeze_vision is None else freeze_vision
        freeze_planner = self.config.freeze_planner if freeze_planner is None else freeze_planner
        return partitions.trainable_filter(self, freeze_vision=freeze_vision, freeze_planner=freeze_planner)

    def critic_filter(self) -> PyTree[bool]:
        """True for the arrays only the value estimate uses, e.g. for a critic warm-up (`sima2.policy.partitions`)."""
        return partitions.critic_filter(self)

    # --- persistence ------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `agent_config.json` + `model.safetensors` (all arrays under their dotted paths)."""
        return save_agent(self, save_directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Agent:
        """Rebuild an agent saved by `save_pretrained` (strict: every array must match by name and shape)."""
        return load_agent(cls, directory)


__all__ = ["AGENT_CONFIG_NAME", "AGENT_WEIGHTS_NAME", "PRESETS", "Agent", "AgentConfig", "InstructionFeatures",
           "token_bridge"]

"""Data-parallel behaviour cloning over several devices, checked against one device.

The parameters and optimiser state are replicated over a 1-D device mesh (`make_mesh`,
`shard_train_state`) and every batch is split along its examples (`shard_batch`); the jitted step is the
single-device one and XLA adds the gradient all-reduce. On a CPU the script asks XLA for `--devices` host
devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, which must be set before JAX starts); on
GPUs or TPUs the real devices are used.

    python examples/multi_device.py [--devices 4] [--steps 3] [--batch 16]
"""

from __future__ import annotations

import argparse
import os

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--devices", type=int, default=4, help="host devices to simulate on a CPU")
parser.add_argument("--steps", type=int, default=3, help="behaviour cloning updates")
parser.add_argument("--batch", type=int, default=16, help="global batch size (a multiple of the devices)")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
).strip()

import equinox as eqx  # noqa: E402  (JAX must see XLA_FLAGS first)
import jax  # noqa: E402
import numpy as np  # noqa: E402

import sima2.envs as envs  # noqa: E402
from sima2.policy import Agent  # noqa: E402
from sima2.training import (  # noqa: E402
    DemonstrationBatches,
    TrainConfig,
    apply_overrides,
    make_bc,
    make_mesh,
    record_demonstrations,
    shard_batch,
    shard_train_state,
)


def main() -> None:
    env, params = envs.make("sima2/GoTo-v0", image_size=64)
    agent = Agent.from_preset("tiny", env.spec, key=jax.random.key(1))
    demos = record_demonstrations(env, params, jax.random.key(2), num_envs=4, num_steps=32,
                                  describe=lambda obs: (envs.decode_ids(obs["instruction"]), []))
    config = apply_overrides(TrainConfig(), [f"bc.batch_size={args.batch}", "optim.lr=1e-3", "optim.warmup_steps=1"])
    init_fn, step_fn = make_bc(agent, config)
    step = eqx.filter_jit(step_fn)

    def train(state, put):
        batches = DemonstrationBatches(demos, args.batch, seed=0, prefetch=0, put=put)
        for _ in range(args.steps):
            state, metrics = step(state, next(batches))
        return state, batches.load(0), float(metrics["loss"])

    # The same updates on one device, then data-parallel over all of them.
    one, _, loss_one = train(init_fn(jax.random.key(0)), jax.device_put)
    mesh = make_mesh()
    many, batch, loss_many = train(shard_train_state(init_fn(jax.random.key(0)), mesh), lambda b: shard_batch(b, mesh))

    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, mesh axes {dict(mesh.shape)}")
    images = batch["obs"]["image"]
    print(f"a batch of {images.shape[0]} images is split {images.sharding.spec}: "
          f"{[s.data.shape[0] for s in images.addressable_shards]} examples per device")
    print(f"parameters are replicated: {many.model.policy.actor_out.weight.sharding.is_fully_replicated}")
    pairs = zip(jax.tree.leaves(eqx.filter(one.model, eqx.is_array)),
                jax.tree.leaves(eqx.filter(many.model, eqx.is_array)), strict=True)
    difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs)
    print(f"after {args.steps} updates: loss {loss_one:.5f} on 1 device, {loss_many:.5f} on {jax.device_count()}; "
          f"largest parameter difference {difference:.2e}")
    print("results match" if difference < 1e-4 else "results DIFFER")


if __name__ == "__main__":
    main()

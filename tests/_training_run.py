"""Training run used by subprocess tests (device count, resume after SIGKILL, several processes).

Usage: python _training_run.py STAGE OUT STEPS [--resume] [--devices N] [--mesh]
       [--process-id I --num-processes N --coordinator HOST:PORT] [--save-every K] [--sleep S]
Writes the final model arrays to OUT/final_params.npz (from process 0).
"""

import argparse
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("stage", choices=["bc", "ppo"])
parser.add_argument("out")
parser.add_argument("steps", type=int)
parser.add_argument("--resume", action="store_true")
parser.add_argument("--devices", type=int, default=1)
parser.add_argument("--mesh", action="store_true")
parser.add_argument("--process-id", type=int, default=None)
parser.add_argument("--num-processes", type=int, default=None)
parser.add_argument("--coordinator", default=None)
parser.add_argument("--save-every", type=int, default=1000)
parser.add_argument("--sleep", type=float, default=0.0)
args = parser.parse_args()

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))

import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _training_standins import NVEC, LineParams, LineWorld, MemorylessMLPAgent, MLPAgent  # noqa: E402

from sima2.training import (  # noqa: E402
    TrainConfig,
    apply_overrides,
    initialize_distributed,
    make_mesh,
    record_demonstrations,
    train_bc,
    train_ppo,
)
from sima2.training.parallel import to_host  # noqa: E402

if args.num_processes:
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)

config = apply_overrides(
    TrainConfig(),
    [
        f"out={args.out}",
        f"num_updates={args.steps}",
        f"checkpoint.every={args.save_every}",
        "checkpoint.async_save=False",
        "monitor.log_every=1",
        "monitor.progress=False",
        "monitor.tensorboard=False",
        "optim.lr=3e-3",
        "optim.warmup_steps=2",
        "optim.decay_steps=50",
        "ppo.num_envs=8",
        "ppo.rollout_length=8",
        "ppo.num_minibatches=2",
        "ppo.update_epochs=2",
        "bc.batch_size=16",
        "data.prefetch=2",
    ],
)
mesh = make_mesh() if args.mesh else None
# Cloned on single rows, so the agent declares no memory (`train_bc` refuses single rows otherwise).
agent = (MLPAgent if args.stage == "ppo" else MemorylessMLPAgent)(jax.random.key(0))
hooks = [lambda step, state, metrics: time.sleep(args.sleep)] if args.sleep else []
if args.stage == "ppo":
    state = train_ppo(config, agent, LineWorld(), LineParams(), resume=args.resume, mesh=mesh, hooks=hooks)
else:
    dataset = record_demonstrations(
        LineWorld(),
        LineParams(),
        jax.random.key(3),
        num_envs=4,
        num_steps=24,
        describe=lambda obs: (["go left", "go right"][int(obs["instruction"][0])], ["walk"]),
    )
    if args.num_processes:  # each process trains on its own half of the data
        dataset = dataset.shard(args.num_processes, args.process_id, contiguous=True)
    state = train_bc(
        config,
        agent,
        dataset,
        image_shape=(4, 4, 3),
        action_nvec=NVEC,
        resume=args.resume,
        mesh=mesh,
        hooks=hooks,
    )
leaves = jax.tree.leaves(
    to_host(
        jax.tree.map(lambda x: x, __import__("equinox").filter(state.model, __import__("equinox").is_array))
    )
)
if jax.process_index() == 0 or args.num_processes:
    name = "final_params.npz" if not args.num_processes else f"final_params_{args.process_id}.npz"
    np.savez(os.path.join(args.out, name), *leaves)
print("done", jax.device_count(), flush=True)

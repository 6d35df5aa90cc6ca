"""sima2: instruction-following agents for real-time 3D worlds from pixels, in JAX + Equinox.

Sub-packages, one per concern: `perception` (ViT encoders), `planning` (language models and the planner),
`policy` (fusion, actor-critic, the agent), `envs` (the built-in world and wrappers), `training`
(behaviour cloning, PPO, checkpoints, monitoring) and `interop` (Hugging Face weights <-> Equinox).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

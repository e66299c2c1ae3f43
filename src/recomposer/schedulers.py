"""Samplers by name: each is a diffusers scheduler built from the backbone's own scheduler config.

The update rule is diffusers'; the loop (sampling.py) is ours. Names follow common usage
(A1111/ComfyUI): ``euler_a`` is Euler ancestral, ``dpmpp_2m`` is DPM-Solver++(2M).
"""

from typing import TYPE_CHECKING

from .errors import InvalidParameter
from .validation import choice

if TYPE_CHECKING:  # torch is imported when first used: parsing a command line must not pay for it
    import torch

# name -> (diffusers class name, settings over the backbone's own config); classes are imported when first used
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
NAMES = tuple(SCHEDULERS)


def make_scheduler(name: str, config: dict):
    """A fresh diffusers scheduler (schedulers are stateful: one per sampling run)."""
    import diffusers

    cls, overrides = SCHEDULERS[choice("scheduler", name, NAMES)]
    return getattr(diffusers, cls).from_config(config, **overrides)


def display_name(name: str) -> str:
    """The A1111 'Sampler:' label for a scheduler name."""
    return {"ddim": "DDIM", "ddpm": "DDPM", "pndm": "PLMS", "euler": "Euler", "euler_a": "Euler a", "heun": "Heun",
            "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_karras": "DPM++ 2M Karras", "unipc": "UniPC"}[name]


def training_target(scheduler, prediction_type: str, latents: "torch.Tensor", noise: "torch.Tensor",
                    timesteps: "torch.Tensor") -> "torch.Tensor":
    """What a model of ``prediction_type`` should predict for x_t = q(x_t | x_0 = latents, ε = noise): ε,
    v = √ᾱ_t·ε − √(1 − ᾱ_t)·x_0 (Salimans & Ho 2022), or x_0 (the training loss's target, and Visii's)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise InvalidParameter("prediction_type", "epsilon, v_prediction or sample", prediction_type)

"""Samplers by name: each is a diffusers scheduler built from the backbone's own scheduler config.

The update rule is diffusers'; the loop (sampling.py) is ours. Names follow common usage
(A1111/ComfyUI): ``euler_a`` is Euler ancestral, ``dpmpp_2m`` is DPM-Solver++(2M).
"""

from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, PNDMScheduler, UniPCMultistepScheduler)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .validation import choice

SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler,
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {}),
}
NAMES = tuple(SCHEDULERS)


def make_scheduler(name: str, config: dict) -> SchedulerMixin:
    """A fresh scheduler (schedulers are stateful: one per sampling run)."""
    cls, overrides = SCHEDULERS[choice("scheduler", name, NAMES)]
    return cls.from_config(config, **overrides)


def display_name(name: str) -> str:
    """The A1111 'Sampler:' label for a scheduler name."""
    return {"ddim": "DDIM", "ddpm": "DDPM", "pndm": "PLMS", "euler": "Euler", "euler_a": "Euler a", "heun": "Heun",
            "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_karras": "DPM++ 2M Karras", "unipc": "UniPC"}[name]

"""Samplers by name: each is a diffusers scheduler built from the backbone's own scheduler config.

The update rule is diffusers'; the loop (sampling.py) is ours. Names follow common usage
(A1111/ComfyUI): ``euler_a`` is Euler ancestral, ``dpmpp_2m`` is DPM-Solver++(2M).
"""

from .validation import choice

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

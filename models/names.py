"""Model names the command lines need before anything heavy loads: importing this module imports
neither torch nor diffusers, so ``--help`` and the argument checks stay fast."""

# The model a command edits with when none is named: a hub id or a local diffusers folder.
DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"

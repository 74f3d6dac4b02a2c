"""Real-photo inversion: DDIM, null-text and negative-prompt inversion, cached."""

from inversion.invert import METHODS, invert, reconstruct, reconstruct_latent
from inversion.null_text import InversionError
from inversion.result import Inversion, InversionCacheError

__all__ = ["invert", "reconstruct", "reconstruct_latent", "Inversion", "InversionError", "InversionCacheError", "METHODS"]

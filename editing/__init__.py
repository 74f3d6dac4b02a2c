"""Prompt-to-Prompt editing: cross-attention control on diffusers' UNet."""

from editing.edit import EditResult, build_controller, edit
from editing.spec import EditSpec, EditSpecError
from editing.visualize import attention_pictures

__all__ = ["EditSpec", "EditSpecError", "EditResult", "edit", "build_controller", "attention_pictures"]

"""Floor 2: the diffusion model itself — loading (``models.loading``), the offline test models
(``models.tiny``, ``models.tiny_xl``), SD's tokenizer (``models.tokenizer``), SDXL's
conditioning record (``models.conditioning``), prompt and image encoding (``models.codec``) and
the classifier-free-guidance UNet call (``models.guidance``).

Deliberately empty: importing a submodule must not pull in torch and diffusers for the others
(the commands refuse bad input before torch is imported)."""

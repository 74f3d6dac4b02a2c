"""Floor 2: the diffusion model itself — loading (``models.loading``), the offline test models
(``models.tiny``), SD's tokenizer (``models.tokenizer``), prompt and image encoding
(``models.codec``) and the classifier-free-guidance UNet call (``models.guidance``).

Deliberately empty: importing a submodule must not pull in torch and diffusers for the others
(the commands refuse bad input before torch is imported)."""

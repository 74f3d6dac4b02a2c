"""Entry points and model loading: ``load_pipeline``, ``edit_real_photo`` and the commands
``python -m pipelines.edit_real`` / ``pipelines.edit_generated``."""


def __getattr__(name: str):
    # lazy, so that `python -m pipelines.edit_real` does not import its own module twice
    if name == "edit_real_photo":
        from pipelines.edit_real import edit_real_photo

        return edit_real_photo
    if name == "load_pipeline":
        from models.loading import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")

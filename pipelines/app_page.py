"""The web app's page and API (Gradio Blocks) over an ``EditSession``.

Importing this module imports gradio: ``pipelines.app`` sets gradio's environment (no analytics,
its upload and cache folders inside the app's output folder) before it does.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

import gradio as gr

from data.manifest import INVERSION_METHODS, PROX_MODES
from pipelines.app_inputs import (
    FADER_RANGE,
    fader_words,
    fader_values,
    parse_blend,
    parse_cross_replace,
    parse_reweights,
    parse_window,
    reweight_text,
    reweights_in,
    target_prompts,
)
from pipelines.app_session import EditRequest, EditSession, Stopped

log = logging.getLogger(__name__)
FADERS = 12  # sliders in the page; further words can still be reweighted as text
METHODS = list(INVERSION_METHODS)
PROX_CHOICES = ["off", *PROX_MODES]
INTRO = """# promptedit — edit a photo with text
Upload a photo (or pick an example below), describe it in the **source prompt**, write how it
should become in a **target prompt**, and press **Edit**. The photo is inverted once (null-text
inversion, the long part); further edits of the same photo and source prompt reuse it and run only
the sampler. **Stop** ends a running job at its next step."""


def photo_input(**options) -> gr.Image:
    """A gr.Image (file path) whose unreadable uploads become a message in the page, not a server
    error. Its ``preprocess`` is wrapped on the instance: a subclass of a gradio component would
    make gradio write a .pyi file beside this module."""
    photo = gr.Image(type="filepath", **options)
    preprocess = photo.preprocess

    def readable(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception:  # Pillow cannot open it: a text file, a damaged or enormous image, ...
            raise gr.Error("The upload is not an image this app can read: upload a PNG, JPEG or WebP photo.",
                           title="Cannot edit") from None

    photo.preprocess = readable
    return photo


def _message(exc: BaseException) -> str:
    """An exception's message, safe to show as HTML (gr.Error renders it)."""
    return html.escape(str(exc), quote=False)


def _edit_handler(session: EditSession):
    def edit(photo, source_prompt, target_prompts_text, mode="auto", cross_replace="0.8", self_replace="0.4",
             blend="", reweight="", inversion="null-text", steps=50, inner_steps=10, guidance=7.5, seed=0,
             fixed_point_steps=None, fixed_point_anchor=0.0, prox="off", prox_quantile=0.75, latent_guard=0,
             request: gr.Request = None, progress=gr.Progress()):
        from inversion import InversionError

        try:
            job = EditRequest(
                photo=photo, source=source_prompt or "", targets=target_prompts(target_prompts_text), mode=mode,
                cross_replace=parse_cross_replace(cross_replace),
                self_replace=parse_window(self_replace, "Self-replace", 0.4),
                blend=parse_blend(blend), reweight=parse_reweights(reweight), method=inversion,
                steps=steps, inner_steps=inner_steps, guidance=guidance, seed=seed,
                fixed_point_steps=fixed_point_steps, fixed_point_anchor=fixed_point_anchor or 0.0,
                prox=None if prox in (None, "", "off") else prox,
                prox_quantile=0.75 if prox_quantile is None else prox_quantile, latent_guard=latent_guard or 0,
            )
            client = getattr(request, "session_hash", None) or ""
            outcome = session.run(job, client=client,
                                  report=lambda stage, done, total: progress((done, total), desc=stage))
        except Stopped as exc:
            raise gr.Error(_message(exc), title="Stopped") from None
        except (ValueError, TypeError, InversionError) as exc:  # the user's input: AppInputError, EditSpecError, ...
            raise gr.Error(_message(exc), title="Cannot edit") from None
        except Exception as exc:
            log.exception("edit failed")
            raise gr.Error(f"The edit failed: {_message(exc)} (the server's log has the details).") from None
        return (
            str(outcome.grid),
            [(str(p), caption) for p, caption in outcome.edits],
            str(outcome.reconstruction),
            [(str(p), caption) for p, caption in outcome.attention],
            [str(p) for p in outcome.files],
            html.escape(outcome.status, quote=False),
        )

    return edit


def _stop_handler(session: EditSession):
    def stop(request: gr.Request = None) -> str:
        client = getattr(request, "session_hash", None) or ""
        if session.stop(client):
            gr.Info("Stopping at the next step.")
            return "stopping"
        gr.Info("Nothing of yours is running.")
        return "idle"

    return stop


def _faders(targets_text: str, reweight: str):
    """A fader for each word of the target prompts, set from the reweight field, which keeps only
    the words that are still in a target prompt."""
    words = fader_words(targets_text, FADERS)
    reweight = reweights_in(targets_text, reweight)
    values = fader_values(words, reweight)
    updates = [gr.update(visible=k < len(words), label=words[k] if k < len(words) else "",
                         value=values[k] if k < len(words) else 1.0) for k in range(FADERS)]
    return [words, reweight, *updates]


def build_page(session: EditSession, examples: list[list[str]], model: str) -> gr.Blocks:
    """The page: inputs on the left, results on the right; the edit is also the API "edit"
    (photo, source prompt, target prompts one per line, then optional settings), and Stop the
    API "stop"."""
    with gr.Blocks(title="promptedit") as page:
        gr.Markdown(INTRO + f"\n\nModel: `{html.escape(model)}`.")
        with gr.Row():
            with gr.Column(scale=1):
                photo = photo_input(label="Photo", sources=["upload"], height=280, elem_id="photo")
                source = gr.Textbox(label="Source prompt (describes the photo)", value=None,
                                    placeholder="a cat sitting on a wooden floor", elem_id="source")
                targets = gr.Textbox(label="Target prompts (one per line)", lines=2, value=None,
                                     placeholder="a dog sitting on a wooden floor", elem_id="targets")
                with gr.Row():
                    edit_button = gr.Button("Edit", variant="primary", elem_id="edit-button")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop-button")
                if examples:
                    gr.Examples(examples=examples, inputs=[photo, source, targets], label="Bundled examples")
                with gr.Accordion("Edit settings", open=True):
                    mode = gr.Radio(["auto", "replace", "refine"], value="auto", label="Mode",
                                    info="replace: swap words (same word count); refine: add words; auto: by word count")
                    with gr.Row():
                        cross = gr.Textbox(label="Cross-replace window", value="0.8", lines=1,
                                           info="0.8, or START,END; a line WORD=0.4 gives a word its own")
                        self_window = gr.Textbox(label="Self-replace window", value="0.4",
                                                 info="0.4, or START,END")
                    blend = gr.Textbox(label="Local blend words", value="",
                                       info="SOURCE:TARGET, e.g. cat:dog: change only where these words are")
                    with gr.Row():
                        prox = gr.Dropdown(PROX_CHOICES, value="off", label="Proximal guidance (ProxEdit)",
                                           elem_id="prox")
                        prox_quantile = gr.Number(value=0.75, minimum=-100, maximum=1, label="Proximal quantile",
                                                  info="threshold: this quantile of |ε_c − ε_u| (≤ 0: minus a fixed one)")
                        guard = gr.Number(value=0, precision=0, minimum=0, maximum=1000, label="Latent guard below t",
                                          info="outside the proximal region (l0's without proximal guidance); the authors use 400; 0: off")
                with gr.Accordion("Faders (reweight a target word, −2…2)", open=True):
                    words = gr.State([])
                    sliders = [gr.Slider(FADER_RANGE[0], FADER_RANGE[1], value=1.0, step=0.1, visible=False,
                                         label="", interactive=True) for _ in range(FADERS)]
                    reweight = gr.Textbox(label="Reweights (the faders write them; one WORD=SCALE per line)",
                                          value="", lines=2)
                with gr.Accordion("Inversion", open=False):
                    with gr.Row():
                        method = gr.Dropdown(METHODS, value="null-text", label="Inversion method")
                        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                    with gr.Row():
                        steps = gr.Number(value=50, precision=0, minimum=1, maximum=1000, label="Steps", elem_id="steps")
                        inner = gr.Number(value=10, precision=0, minimum=0, maximum=1000, label="Inner steps (null-text)",
                                          elem_id="inner-steps")
                        guidance = gr.Number(value=7.5, minimum=0, maximum=100, label="Guidance")
                    with gr.Row():
                        fixed_steps = gr.Number(value=None, precision=0, minimum=0, maximum=1000,
                                                label="Fixed-point steps", info="empty: 25 (SPDInv), 5 with an anchor")
                        anchor = gr.Number(value=0.0, minimum=0, maximum=100, label="Fixed-point anchor λ",
                                           info="DCI's pull toward the photo (its paper: 2; 0: SPDInv)")
            with gr.Column(scale=1):
                status = gr.Markdown("Results appear here.", elem_id="status")
                grid = gr.Image(label="Grid: input | reconstruction | edits", type="filepath", elem_id="grid",
                                interactive=False)
                edits = gr.Gallery(label="Edits", columns=3, fit_columns=False, height=240, preview=False,
                                   object_fit="contain", elem_id="edits")
                reconstruction = gr.Image(label="Reconstruction", type="filepath", interactive=False, height=256)
                attention = gr.Gallery(label="Attention per token (source and edits)", columns=5, fit_columns=False,
                                       height="auto", preview=False, object_fit="contain", elem_id="attention")
                files = gr.File(label="Downloads (run.json and the images)", file_count="multiple", interactive=False)

        targets.change(_faders, [targets, reweight], [words, reweight, *sliders], queue=False, show_progress="hidden",
                       api_visibility="private")
        for slider in sliders:
            slider.input(lambda w, *v: reweight_text(w, list(v)), [words, *sliders], reweight, queue=False,
                           show_progress="hidden", api_visibility="private")
        edit_button.click(
            _edit_handler(session),
            [photo, source, targets, mode, cross, self_window, blend, reweight, method, steps, inner, guidance, seed,
             fixed_steps, anchor, prox, prox_quantile, guard],
            [grid, edits, reconstruction, attention, files, status],
            api_name="edit", concurrency_limit=1, concurrency_id="model",
        )
        stopped = gr.Textbox(visible=False)  # what Stop found: "stopping" or "idle" (for API callers)
        stop_button.click(_stop_handler(session), None, stopped, api_name="stop", concurrency_limit=None,
                          concurrency_id="stop", show_progress="hidden")
    return page


def example_rows(folder: Path) -> list[list[str]]:
    """The bundled examples (photo, source prompt, target prompt) whose photos are in ``folder``."""
    rows = [
        ("red_circle.png", "a red circle on a white background", "a blue circle on a white background"),
        ("chelsea.png", "a cat sitting on a wooden floor", "a dog sitting on a wooden floor"),
    ]
    return [[str(folder / name), src, tgt] for name, src, tgt in rows if (folder / name).is_file()]

"""The per-step hook of ``invert`` and ``edit``: progress, and cooperative cancellation between
steps (the web app's Stop button), with results unchanged when it only watches."""

from pathlib import Path

import pytest
import torch

from editing import EditSpec, edit
from inversion import invert

SOURCE = "a red circle on a white background"
PHOTO = str(Path(__file__).resolve().parents[1] / "assets" / "red_circle.png")


class Cancelled(Exception):
    pass


def test_invert_reports_every_step_and_the_result_is_unchanged(tiny_pipe):
    seen = []
    watched = invert(tiny_pipe, PHOTO, SOURCE, num_steps=4, num_inner_steps=2, progress=False,
                     on_step=lambda *step: seen.append(step))
    plain = invert(tiny_pipe, PHOTO, SOURCE, num_steps=4, num_inner_steps=2, progress=False)
    assert seen == [("ddim inversion", k, 4) for k in range(1, 5)] + [("null-text", k, 4) for k in range(1, 5)]
    torch.testing.assert_close(watched.x_T, plain.x_T, rtol=0, atol=0)
    torch.testing.assert_close(watched.null_embeddings, plain.null_embeddings, rtol=0, atol=0)


def test_a_raising_hook_stops_the_inversion_and_nothing_is_cached(tiny_pipe, tmp_path):
    seen = []

    def stop_at_null_text_step_2(stage, done, total):
        seen.append((stage, done))
        if stage == "null-text" and done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        invert(tiny_pipe, PHOTO, SOURCE, num_steps=5, num_inner_steps=3, progress=False, cache_dir=tmp_path,
               on_step=stop_at_null_text_step_2)
    assert seen[-1] == ("null-text", 2)
    assert not list(tmp_path.rglob("*.safetensors"))
    # a cache hit makes no steps
    invert(tiny_pipe, PHOTO, SOURCE, method="ddim", num_steps=3, progress=False, cache_dir=tmp_path)
    again = []
    hit = invert(tiny_pipe, PHOTO, SOURCE, method="ddim", num_steps=3, progress=False, cache_dir=tmp_path,
                 on_step=lambda *step: again.append(step))
    assert hit.stats["cache_hit"] and again == []


def test_edit_reports_every_step_and_a_raising_hook_stops_it(tiny_pipe):
    spec = EditSpec([SOURCE, "a blue circle on a white background"])
    seen = []
    watched = edit(tiny_pipe, spec, generator=torch.Generator().manual_seed(0), num_steps=4,
                   on_step=lambda done, total: seen.append((done, total)))
    plain = edit(tiny_pipe, spec, generator=torch.Generator().manual_seed(0), num_steps=4)
    assert seen == [(k, 4) for k in range(1, 5)]
    torch.testing.assert_close(watched.latents, plain.latents, rtol=0, atol=0)

    def stop_after_2(done, total):
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        edit(tiny_pipe, spec, num_steps=6, on_step=stop_after_2)
    # the attention processors were put back: a plain edit still gives the same numbers
    again = edit(tiny_pipe, spec, generator=torch.Generator().manual_seed(0), num_steps=4)
    torch.testing.assert_close(again.latents, plain.latents, rtol=0, atol=0)

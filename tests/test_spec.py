import pytest

from editing import EditSpec, EditSpecError, edit


def test_needs_two_prompts():
    with pytest.raises(EditSpecError, match="at least two prompts"):
        EditSpec(prompts=["a cat"])
    with pytest.raises(EditSpecError, match="at least two prompts"):
        EditSpec(prompts="a cat")


def test_empty_prompt():
    with pytest.raises(EditSpecError, match="target prompt 1 is empty"):
        EditSpec(prompts=["a cat", "  "])


def test_replace_needs_same_word_count():
    with pytest.raises(EditSpecError, match="mode 'refine'"):
        EditSpec(prompts=["a cat", "a big dog"], mode="replace")


def test_auto_mode_picks_by_word_count():
    assert EditSpec(prompts=["a cat", "a dog"]).resolved_mode() == "replace"
    assert EditSpec(prompts=["a cat", "a cat in the snow"]).resolved_mode() == "refine"


@pytest.mark.parametrize("value", [1.5, -0.1, (0.5, 0.2), (0.0, 2.0), float("nan"), "half"])
def test_steps_outside_unit_interval(value):
    with pytest.raises(EditSpecError, match="cross_replace_steps"):
        EditSpec(prompts=["a cat", "a dog"], cross_replace_steps=value)
    with pytest.raises(EditSpecError, match="self_replace_steps"):
        EditSpec(prompts=["a cat", "a dog"], self_replace_steps=value)


def test_word_schedule_word_must_be_in_a_target():
    EditSpec(prompts=["a cat", "a dog"], cross_replace_steps={"default_": 0.8, "dog": 0.4})
    with pytest.raises(EditSpecError, match="'horse'"):
        EditSpec(prompts=["a cat", "a dog"], cross_replace_steps={"horse": 0.4})


def test_reweight_word_not_in_target():
    with pytest.raises(EditSpecError, match="reweight names 'cat'"):
        EditSpec(prompts=["a cat", "a dog"], reweight={"cat": 2.0})
    with pytest.raises(EditSpecError, match="not a number"):
        EditSpec(prompts=["a cat", "a dog"], reweight={"dog": "lots"})


@pytest.mark.parametrize("field,value", [
    ("reweight", {"dog": float("nan")}), ("reweight", {"dog": float("inf")}), ("reweight", {"dog": 1e6}),
    ("blend_threshold", float("nan")), ("blend_threshold", 0.0), ("blend_start", float("inf")),
    ("cross_replace_steps", {"default_": 0.8, "dog": float("nan")}), ("self_replace_steps", (0.0, float("inf"))),
    ("self_replace_max_pixels", -1), ("blend_resolution", 0),
])
def test_non_finite_or_out_of_range_numbers_are_refused_by_name(field, value):
    with pytest.raises(EditSpecError, match=field.split("_steps")[0]):
        EditSpec(prompts=["a cat", "a dog"], **{field: value})


def test_blend_word_not_in_its_prompt():
    EditSpec(prompts=["a cat,", "a dog."], blend_words=(["cat"], ["dog"]))  # punctuation ignored
    with pytest.raises(EditSpecError, match="'dog' for the prompt 'a cat'"):
        EditSpec(prompts=["a cat", "a dog"], blend_words=(["dog"], ["dog"]))
    with pytest.raises(EditSpecError, match="for each prompt"):
        EditSpec(prompts=["a cat", "a dog"], blend_words=(["cat"],))


def test_blend_two_groups_cover_several_targets():
    spec = EditSpec(prompts=["a cat", "a dog", "a dog"], blend_words=("cat", "dog"))
    assert spec.blend_groups(spec.blend_words) == [["cat"], ["dog"], ["dog"]]


def test_unknown_mode():
    with pytest.raises(EditSpecError, match="unknown"):
        EditSpec(prompts=["a cat", "a dog"], mode="swap")


def test_prompt_over_77_tokens_raises_before_denoising(tiny_pipe):
    long = "a cat " + "very " * 80 + "fluffy"
    spec = EditSpec(prompts=["a cat", long], mode="refine")
    calls = []
    handle = tiny_pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(EditSpecError, match="over the limit of 77"):
            edit(tiny_pipe, spec, num_steps=2)
    finally:
        handle.remove()
    assert calls == []

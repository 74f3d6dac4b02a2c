"""``EditSpec``: what an edit should do, checked when it is made, with messages that name the fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from data.numbers import check_number, limited
from data.prompts import normalized_prompt
from editing.align import word_matches
from editing.proximal import PROX_MODES

Steps = Union[float, tuple[float, float]]
CrossSteps = Union[float, tuple[float, float], dict[str, Steps]]

MODES = ("auto", "replace", "refine")


class EditSpecError(ValueError):
    """An edit was asked for that cannot be done; the message says what to change."""


def contains_words(prompt: str, words: str) -> bool:
    """Whether ``words`` occurs in ``prompt``, matched the way word indices are."""
    return bool(word_matches(prompt, words))


def steps_window(value: Steps, what: str) -> tuple[float, float]:
    """Normalize a step fraction or (start, end) pair to (start, end), checking 0 ≤ start ≤ end ≤ 1."""
    if isinstance(value, bool):
        raise EditSpecError(f"{what} must be a fraction in [0, 1] or a (start, end) pair, not {value!r}")
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        start, end = 0.0, float(limited("fraction", value, f"{what} =", EditSpecError))
    else:
        pair = list(value)
        if len(pair) != 2:
            raise EditSpecError(f"{what} must be a fraction in [0, 1] or a (start, end) pair, not {value!r}")
        start, end = (float(limited("fraction", v, f"{what} =", EditSpecError)) for v in pair)
    if start > end:
        raise EditSpecError(f"{what} = {value!r}: start is after end; give a (start, end) pair with 0 ≤ start ≤ end ≤ 1")
    return start, end


@dataclass
class EditSpec:
    """A Prompt-to-Prompt edit.

    Attributes:
        prompts: the source prompt first, then one or more target prompts.
        mode: "replace" (word swap, same word count), "refine" (added or changed phrase,
            token alignment) or "auto" (replace when the word counts match, refine otherwise).
        cross_replace_steps: fraction of steps (or (start, end)) in which target cross-attention
            is taken from the source; a dict gives it per target word, with key "default_".
        self_replace_steps: fraction (or (start, end)) of steps in which edited rows take the
            source's self-attention.
        reweight: word → scale for the target prompts' cross-attention (the "fader").
        blend_words: local blend words per prompt: (source words, target words) or one entry per
            prompt; the edit is then confined to where those words attend.
        blend_subtract_words: words per prompt whose region is removed from the blend mask.
        blend_threshold: mask threshold on the normalized map (None: the model's own default from
            ``promptedit.json`` in its folder, else 0.3; see ``models.defaults``).
        blend_start: fraction of steps after which the blend applies.
        self_replace_max_pixels: self-attention is injected only in layers with at most this many
            pixels (32² in the reference's real-image notebook, 16² in its generated-image one).
        blend_resolution: side of the cross-attention maps the blend reads, as they are at the
            model's native square size (16 for SD at 512 px); at another size the same layers are
            read, whatever their shape (None: the model's own default from ``promptedit.json``,
            else a quarter of the latent's sides, or the smallest maps the down/up paths have if
            no layer is that small).
        prox: proximal guidance (ProxEdit), "l0" or "l1" as the authors name them (see
            ``editing.proximal``), or None (plain guidance, the default).
        prox_quantile: Q, τ = the Q-quantile of |ε_c − ε_u| over the batch (Q ≤ 0: τ = −Q); the
            authors' PIE-Bench runs use 0.75.
        latent_guard: the latent guard's timestep T_g (0: off; the authors use 400): at
            timesteps below it, outside the proximal step's region dilated by ``guard_radius``
            latent pixels, every row is put back on the inversion's trajectory (by
            ``guard_rate``, 1: replaced). Needs an inversion. Without ``prox`` the region is where
            an "l0" step at ``prox_quantile`` would keep guidance, and guidance stays plain.
    """

    prompts: list[str]
    mode: str = "auto"
    cross_replace_steps: CrossSteps = 0.8
    self_replace_steps: Steps = 0.4
    reweight: dict[str, float] | None = None
    blend_words: tuple | list | None = None
    blend_subtract_words: tuple | list | None = None
    blend_threshold: float | None = None
    blend_start: float = 0.2
    self_replace_max_pixels: int = 32 * 32
    blend_resolution: int | None = None
    prox: str | None = None
    prox_quantile: float = 0.75
    latent_guard: int = 0
    guard_radius: int = 1
    guard_rate: float = 1.0
    _cross_windows: dict[str, tuple[float, float]] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str) or len(self.prompts) < 2:
            raise EditSpecError(
                "an edit needs at least two prompts: the source prompt (describing the photo) first, "
                "then one or more target prompts"
            )
        self.prompts = [normalized_prompt(p, "the source prompt" if k == 0 else f"the target prompt {k}")
                        for k, p in enumerate(self.prompts)]
        for k, prompt in enumerate(self.prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                which = "source prompt" if k == 0 else f"target prompt {k}"
                raise EditSpecError(f"the {which} is empty: describe the image in words")
        if self.mode not in MODES:
            raise EditSpecError(f"mode {self.mode!r} is unknown: use one of {', '.join(MODES)}")
        if self.mode == "replace":
            n = len(self.prompts[0].split(" "))
            for prompt in self.prompts[1:]:
                if len(prompt.split(" ")) != n:
                    raise EditSpecError(
                        f"mode 'replace' swaps words one for one, but '{self.prompts[0]}' has {n} words and "
                        f"'{prompt}' has {len(prompt.split(' '))}: use mode 'refine' (or 'auto') to add or "
                        "remove words"
                    )
        self._cross_windows = self._check_cross_steps()
        steps_window(self.self_replace_steps, "self_replace_steps")
        for word, scale in (self.reweight or {}).items():
            limited("reweight", scale, f"reweight scale for '{word}':", EditSpecError)
            self._need_in_some_target(word, "reweight")
        self._check_blend(self.blend_words, "blend_words")
        self._check_blend(self.blend_subtract_words, "blend_subtract_words")
        if self.blend_threshold is not None:
            limited("blend_threshold", self.blend_threshold, "blend_threshold =", EditSpecError)
        steps_window(self.blend_start, "blend_start")
        check_number(self.self_replace_max_pixels, "self_replace_max_pixels =", low=0, integer=True,
                     hint="the largest layer (in pixels) whose self-attention is injected", error=EditSpecError)
        if self.blend_resolution is not None:
            check_number(self.blend_resolution, "blend_resolution =", low=1, integer=True,
                         hint="the side of the cross-attention maps the blend reads", error=EditSpecError)
        self._check_guidance()

    def _check_guidance(self) -> None:
        if self.prox is not None and self.prox not in PROX_MODES:
            raise EditSpecError(f"prox {self.prox!r} is unknown: use one of {', '.join(PROX_MODES)}, or None for plain guidance")
        limited("prox_quantile", self.prox_quantile, "prox_quantile =", EditSpecError)
        self.latent_guard = limited("latent_guard", self.latent_guard, "latent_guard =", EditSpecError)
        check_number(self.guard_radius, "guard_radius =", low=0, high=64, integer=True,
                     hint="latent pixels the guard's edit region is dilated by (the authors use 1)", error=EditSpecError)
        check_number(self.guard_rate, "guard_rate =", low=0, high=1,
                     hint="how far the guard pulls a latent back (1: replaced, the authors' value)", error=EditSpecError)

    def _check_cross_steps(self) -> dict[str, tuple[float, float]]:
        value = self.cross_replace_steps
        if not isinstance(value, dict):
            return {"default_": steps_window(value, "cross_replace_steps")}
        windows = {"default_": (0.0, 1.0)}
        for word, steps in value.items():
            windows[word] = steps_window(steps, f"cross_replace_steps['{word}']")
            if word != "default_":
                self._need_in_some_target(word, "cross_replace_steps")
        return windows

    def _need_in_some_target(self, word: str, what: str) -> None:
        if not any(contains_words(p, word) for p in self.prompts[1:]):
            raise EditSpecError(
                f"{what} names '{word}', which is not a word of any target prompt "
                f"({'; '.join(repr(p) for p in self.prompts[1:])}). Use a word as it appears in a target prompt."
            )

    def _check_blend(self, words, what: str) -> None:
        for k, group in enumerate(self.blend_groups(words)):
            for word in group:
                if not contains_words(self.prompts[k], word):
                    raise EditSpecError(
                        f"{what} names '{word}' for the prompt '{self.prompts[k]}', which does not contain it. "
                        "Give the source prompt's word(s) first, then the target prompt's."
                    )

    def blend_groups(self, words) -> list[list[str]]:
        """Words per prompt (one list for each prompt) from ``blend_words``-style input.

        Accepts one entry per prompt, or two entries (source, targets) with several targets."""
        if words is None:
            return []
        groups = [[w] if isinstance(w, str) else list(w) for w in words]
        if len(groups) == 2 and len(self.prompts) > 2:
            groups = [groups[0]] + [groups[1]] * (len(self.prompts) - 1)
        if len(groups) != len(self.prompts) or any(not g for g in groups):
            raise EditSpecError(
                f"blend words must give word(s) for each prompt, e.g. (['cat'], ['dog']); got {words!r} "
                f"for {len(self.prompts)} prompts"
            )
        return groups

    @property
    def cross_windows(self) -> dict[str, tuple[float, float]]:
        """Cross-replace (start, end) fractions: key "default_" and one per word given."""
        return dict(self._cross_windows)

    @property
    def self_window(self) -> tuple[float, float]:
        """Self-replace (start, end) fractions."""
        return steps_window(self.self_replace_steps, "self_replace_steps")

    def resolved_mode(self) -> str:
        """"replace" or "refine": ``mode``, with "auto" decided by the word counts."""
        if self.mode != "auto":
            return self.mode
        n = len(self.prompts[0].split(" "))
        return "replace" if all(len(p.split(" ")) == n for p in self.prompts[1:]) else "refine"

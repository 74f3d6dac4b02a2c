"""Numbers users hand us — command-line options, manifest values, ``EditSpec`` fields, ``invert()``
arguments — checked in one place: a number (not a bool, not text), finite (no nan, no inf), whole
where a count is meant, and inside the range that gives it a meaning.

``LIMITS`` holds the ranges of the edit options every entry point shares, so that the command
line, a manifest line, an ``EditSpec`` and ``invert()`` refuse the same values with the same words.
"""

from __future__ import annotations

import math
import numbers


class NumberError(ValueError):
    """A number cannot be used; the message names where it came from and what is accepted."""


# The edit options' ranges (inclusive unless "open_low"/"open_high"), with the reason in "hint".
LIMITS: dict[str, dict] = {
    "steps": dict(low=1, high=1000, integer=True,
                  hint="DDIM steps; the papers use 50 (at most 1000, the model's training timesteps)"),
    "inner_steps": dict(low=0, high=1000, integer=True,
                        hint="null-text Adam steps per DDIM step; the paper uses 10"),
    "guidance": dict(low=0, high=100,
                     hint="classifier-free guidance scale; the papers use 7.5 (1 = no guidance)"),
    "fraction": dict(low=0, high=1, hint="a fraction of the denoising steps such as 0.8"),
    "blend_threshold": dict(low=0, high=1, open_low=True, open_high=True,
                            hint="the local-blend mask threshold; the reference uses 0.3"),
    "reweight": dict(low=-100, high=100,
                     hint="an attention scale; the paper uses -2…2 (larger magnitudes overflow)"),
    "seed": dict(low=0, high=2**64 - 1, integer=True, hint="a random seed"),
    "batch_size": dict(low=1, integer=True, hint="photos inverted together in one UNet batch"),
    "fixed_point_steps": dict(low=0, high=1000, integer=True,
                              hint="fixed-point AdamW steps per DDIM step; SPDInv uses 25, DCI's paper 5"),
    "fixed_point_anchor": dict(low=0, high=100, hint="DCI's anchor strength λ; its paper uses 2 (0: none, SPDInv)"),
    "prox_quantile": dict(low=-100, high=1, hint="the proximal threshold's quantile of |ε_c − ε_u| (the authors "
                                                 "use 0.75 on PIE-Bench); ≤ 0: −Q is a fixed threshold"),
    "latent_guard": dict(low=0, high=1000, integer=True,
                         hint="the timestep below which the latent guard acts; the authors use 400 (0: off)"),
    "early_stop_epsilon": dict(low=0, hint="null-text's loss threshold; the paper uses 1e-5 (a large one "
                                           "stops after one Adam step)"),
}


def describe_range(low=None, high=None, open_low: bool = False, open_high: bool = False,
                   integer: bool = False) -> str:
    """Words for a range: "a whole number from 1 to 1000", "a number in (0, 1)", …"""
    kind = "a whole number" if integer else "a number"
    if low is not None and high is not None:
        if integer:
            return f"{kind} from {low} to {high}"
        return f"{kind} in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    if low is not None:
        return f"{kind} {'>' if open_low else '≥'} {low}"
    if high is not None:
        return f"{kind} {'<' if open_high else '≤'} {high}"
    return f"a finite {kind[2:]}"


def check_number(value, what: str, *, low=None, high=None, open_low: bool = False, open_high: bool = False,
                 integer: bool = False, hint: str = "", error: type[Exception] = NumberError, shown: str | None = None):
    """Return ``value`` (an int when ``integer``) if it is a finite number in the range, else raise.

    Args:
        value: the number given (int, float, or a numpy scalar; not bool, not text).
        what: where it came from, as the user wrote it ("--guidance", "guidance_scale",
            "jobs.jsonl:3: steps"); empty for a message that argparse prefixes itself.
        low, high, open_low, open_high: the accepted range (inclusive bounds unless open).
        integer: a count: whole numbers only (3.0 is accepted as 3).
        hint: what the number means, appended to the message.
        error: the exception type to raise (each entry point has its own).
        shown: the value as the user wrote it, for the message (default: its repr).
    """
    accepted = describe_range(low, high, open_low, open_high, integer)
    where = f"{what} " if what else ""
    tail = f"; {hint}" if hint else ""
    value_text = shown if shown is not None else repr(value)
    if len(value_text) > 40:
        value_text = value_text[:37] + "..."
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{where}{value_text} is not a number: give {accepted}{tail}")
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):  # ints are finite (and may not fit a float)
        raise error(f"{where}{value_text} is not a finite number: give {accepted}{tail}")
    if integer:
        if not isinstance(value, numbers.Integral) and not float(value).is_integer():
            raise error(f"{where}{value_text} is not a whole number: give {accepted}{tail}")
        value = int(value)
    too_low = low is not None and (value <= low if open_low else value < low)
    too_high = high is not None and (value >= high if open_high else value > high)
    if too_low or too_high:
        raise error(f"{where}{value_text} is out of range: give {accepted}{tail}")
    return value


def parse_number(text: str, what: str, **limits):
    """``check_number`` for text (a command-line value): "7.5" → 7.5, "nan" and "" refused."""
    stripped = str(text).strip()
    integer = limits.get("integer", False)
    try:
        value = int(stripped) if integer and stripped.lstrip("+-").isdigit() else float(stripped)
    except (TypeError, ValueError):
        where = f"{what} " if what else ""
        accepted = describe_range(limits.get("low"), limits.get("high"), limits.get("open_low", False),
                                  limits.get("open_high", False), integer)
        hint = f"; {limits['hint']}" if limits.get("hint") else ""
        raise limits.get("error", NumberError)(f"{where}{text!r} is not a number: give {accepted}{hint}") from None
    return check_number(value, what, shown=stripped, **limits)


def limited(name: str, value, what: str, error: type[Exception] = NumberError):
    """``check_number`` with the shared limits of the edit option ``name`` (a key of ``LIMITS``)."""
    return check_number(value, what, **LIMITS[name], error=error)

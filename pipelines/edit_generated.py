"""Edit a generated image with text alone (the Prompt-to-Prompt paper's setting, no inversion):

    python -m pipelines.edit_generated --src "a cat riding a bicycle" \\
        --tgt "a dog riding a bicycle" --seed 8 --out results/

Generates the source image from a seeded noise latent and the edits from the same latent, and
writes source.png, edit_1.png …, grid.png, attention_*.png (with --attention) and run.json.
--size W,H generates at another size (default: the model's native square).
"""

from __future__ import annotations

import argparse
import sys
import time

from pipelines.cli import (
    OneLineParser,
    add_edit_options,
    add_size_options,
    check_edit_args,
    default_out,
    parse_size_option,
    quiet_libraries,
    run_cli,
    spec_from_options,
)
from pipelines.edit_real import RealEdit, fill_outputs

PROG = "python -m pipelines.edit_generated"


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit code."""
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_edit_options(parser)
    add_size_options(parser, original=False)
    args = parser.parse_args(argv)  # numbers are checked here, as they are parsed

    def go() -> int:
        from pipelines.outputs import StagedOutput

        options = check_edit_args(args)  # light imports only: a refusal does not wait for torch
        size = parse_size_option(args.size)
        args.out = args.out or default_out(f"generated-seed{args.seed}")
        with StagedOutput(args.out) as staged:  # an output folder that cannot be written stops here
            quiet_libraries(args.quiet)
            import torch

            from editing import edit
            from models.loading import image_size, load_pipeline, working_size

            spec = spec_from_options([args.src, *args.tgt], options)
            started = time.perf_counter()
            pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
            loaded = time.perf_counter() - started
            native = image_size(pipe)
            wh = working_size(pipe, (native, native), size)  # "auto": the native square
            generator = torch.Generator().manual_seed(args.seed)
            started = time.perf_counter()
            result = edit(pipe, spec, generator=generator, num_steps=args.steps, guidance_scale=args.guidance,
                          return_attention=args.attention, progress=not args.quiet, size=wh)
            seconds = {"load_model": round(loaded, 3), "edit": round(time.perf_counter() - started, 3)}
            fill_outputs(staged, RealEdit(None, None, result), spec, vars(args), seconds, reconstruction=False)
        print(f"wrote {len(staged.published)} files to {args.out}: grid.png shows source | edits")
        return 0

    return run_cli(PROG, go)


if __name__ == "__main__":
    sys.exit(main())

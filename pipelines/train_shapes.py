"""Train the shapes model from scratch, the whole recipe in one command, and write it as a diffusers folder:

    python -m pipelines.train_shapes --out DIR [--resume] [--checkpoint-dir DIR] [--processes 2] [--seed S]

The recipe (``models.shapes_training.RECIPE``): the autoencoder, then the UNet with a 0-layer text
encoder on world 2 of the shapes world, the token grounding and pixel terms joining part-way and
the self-attention locality term (at a fifth of the learning rate) for the last steps, in bfloat16
autocast with the scenes rendered once, data-parallel over two processes (one per core). Any field
can be changed by its option (``--unet-steps``, ``--world``, ...). The run checkpoints every few
minutes into the project's cache folder (``--checkpoint-dir`` to choose); ``--resume`` continues a
stopped run from its last checkpoint with exactly the batches it would have seen, and when the
checkpoint is gone it starts over. ``load_pipeline(DIR)`` loads the result like any SD model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from data.numbers import parse_number
from pipelines.cli import OneLineParser, UsageError, check_folder_option, quiet_libraries, run_cli

PROG = "python -m pipelines.train_shapes"


def _count(text: str, option: str, low: int = 1) -> int:
    return parse_number(text, option, low=low, high=10**7, integer=True, hint="a number of steps", error=UsageError)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the trained diffusers model into")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint, if any")
    parser.add_argument("--vae-steps", default=None, help="VAE training steps (default: the recipe's)")
    parser.add_argument("--unet-steps", default=None, help="UNet + text encoder steps (default: the recipe's)")
    parser.add_argument("--batch-size", default=None, help="scenes per step (default 32)")
    parser.add_argument("--latent-scenes", default=None, help="scenes encoded once for the UNet phase (default 10000)")
    parser.add_argument("--text-layers", default=None,
                        help="transformer layers of the text encoder (default 0: each word stays in its token)")
    parser.add_argument("--world", default=None, help="the shapes world's version, 1 or 2 (default 2)")
    parser.add_argument("--processes", default="2",
                        help="data-parallel training processes, one per core (default 2; the batch must divide)")
    parser.add_argument("--init-from", default=None,
                        help="a trained shapes model folder to start from: its VAE is kept, its UNet fine-tuned")
    parser.add_argument("--grounding-weight", default=None,
                        help="weight of the token grounding loss: each word's attention on its object "
                             "(default: the recipe's, 0.1)")
    parser.add_argument("--pixel-weight", default=None,
                        help="weight of the pixel grounding loss: each word's map even over its object "
                             "(default: the recipe's, 0.03)")
    parser.add_argument("--grounding-from", default=None,
                        help="UNet step at which the grounding and pixel terms join; plain denoising before it "
                             "(default: the recipe's, 1500)")
    parser.add_argument("--locality-weight", default=None,
                        help="weight of the self-attention locality loss: each pixel attends within its object "
                             "or the background (default: the recipe's, 0.3)")
    parser.add_argument("--locality-max-t", default=None,
                        help="the locality loss counts only scenes noised to a timestep below this, 1-1000 "
                             "(default: the recipe's, 500)")
    parser.add_argument("--unet-lr", default=None,
                        help="peak learning rate of the UNet phase (default 5e-4; a fine-tune keeps the model "
                             "closer to where it starts with less, such as 1e-4)")
    parser.add_argument("--vae-guard", default=None,
                        help="the VAE phase goes back to its last healthy snapshot, at half the learning rate, when "
                             "its loss rises past this many times its best (default: the recipe's, 3; 0: off)")
    parser.add_argument("--seed", default="0", help="seed of the weights and of every batch")
    parser.add_argument("--threads", default=None,
                        help="CPU threads for torch in each process (default: 1 with --processes 2 or more, else torch's own)")
    parser.add_argument("--checkpoint-dir", default=None, help="default ~/.cache/promptedit/shapes-training/<config>")
    parser.add_argument("--checkpoint-minutes", default="3", help="minutes between checkpoints")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def run() -> int:
        out = check_folder_option(args.out, "--out")
        overrides = {name: _count(getattr(args, name), f"--{name.replace('_', '-')}")
                     for name in ("vae_steps", "unet_steps", "batch_size", "latent_scenes") if getattr(args, name) is not None}
        seed = _count(args.seed, "--seed", low=0)
        if args.text_layers is not None:
            overrides["text_layers"] = _count(args.text_layers, "--text-layers", low=0)
        if args.world is not None:
            overrides["world"] = parse_number(args.world, "--world", low=1, high=2, integer=True,
                                              hint="a world version, 1 or 2", error=UsageError)
        processes = parse_number(args.processes, "--processes", low=1, high=64, integer=True,
                                 hint="a number of processes such as 2", error=UsageError)
        for name in ("grounding_weight", "pixel_weight", "locality_weight"):
            if getattr(args, name) is not None:
                overrides[name] = parse_number(getattr(args, name), f"--{name.replace('_', '-')}", low=0, high=1e4,
                                               hint="a loss weight such as 0.1", error=UsageError)
        if args.unet_lr is not None:
            overrides["unet_lr"] = parse_number(args.unet_lr, "--unet-lr", low=1e-8, high=1.0,
                                                hint="a learning rate such as 1e-4", error=UsageError)
        if args.vae_guard is not None:
            overrides["vae_guard"] = parse_number(args.vae_guard, "--vae-guard", low=0, high=1e4,
                                                  hint="a loss ratio such as 3, or 0 for no guard", error=UsageError)
        if args.grounding_from is not None:
            overrides["grounding_from"] = _count(args.grounding_from, "--grounding-from", low=0)
        if args.locality_max_t is not None:
            overrides["locality_max_t"] = parse_number(args.locality_max_t, "--locality-max-t", low=1, high=1000,
                                                       integer=True, hint="a timestep", error=UsageError)
        if args.init_from is not None:
            init = Path(args.init_from).expanduser()
            if not (init / "unet" / "config.json").is_file() or not (init / "vae" / "config.json").is_file():
                raise UsageError(f"--init-from {args.init_from}: not a shapes model folder (no unet/ and vae/ "
                                 "configs there); give a folder written by this command, such as models/shapes")
            overrides["init_from"] = str(init.resolve())
        minutes = parse_number(args.checkpoint_minutes, "--checkpoint-minutes", low=0.05, high=10**4,
                               hint="minutes between checkpoints", error=UsageError)
        threads = _count(args.threads, "--threads") if args.threads is not None else None
        checkpoint_dir = check_folder_option(args.checkpoint_dir, "--checkpoint-dir") if args.checkpoint_dir else None
        quiet_libraries(True)

        import torch
        from tqdm.auto import tqdm

        from models import shapes_training

        config = dataclasses.replace(shapes_training.RECIPE, seed=seed, **overrides)
        if config.batch_size % processes:
            raise UsageError(f"--batch-size {config.batch_size} does not split over --processes {processes}: "
                             "give a batch that is a multiple of the processes")
        bars: dict[str, tqdm] = {}

        def progress(phase: str, step: int, total: int, loss: float) -> None:
            if args.quiet:
                return
            if phase not in bars:
                for bar in bars.values():
                    bar.close()
                # into a log file (not a terminal) a line every 30 s rather than every step
                bars[phase] = tqdm(total=total, initial=step - 1, desc=f"training {phase}", file=sys.stderr,
                                   mininterval=0.1 if sys.stderr.isatty() else 30.0)
            bars[phase].n = step - 1  # a VAE roll-back goes back some steps
            bars[phase].update(1)
            bars[phase].set_postfix(loss=f"{loss:.4f}", refresh=False)  # the bar redraws at its own interval

        summary = shapes_training.train_parallel(
            out, config, processes=processes, threads=threads or (1 if processes > 1 else torch.get_num_threads()),
            checkpoint_dir=checkpoint_dir, resume=args.resume, checkpoint_seconds=minutes * 60, progress=progress)
        for bar in bars.values():
            bar.close()
        (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote the shapes model to {out} ({summary['seconds']} s of training)")
        return 0

    return run_cli(PROG, run)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())

"""Speed and memory figures, each against a baseline measured in the same run.

    python -m bench p2p [--models tiny,sd15] [--steps 50] [--sd15-steps 3] [--repeats 40] [--processes 8] [--json]
    python -m bench inversion [--models tiny,sd15] [--steps 50] [--sd15-steps 1] [--inner-steps N] [--json]
    (models: tiny, tiny-xl, and random-weight real architectures sd15, sdxl (512 px), sdxl1024)
    python -m bench dataset [--jobs 8] [--steps 20] [--json]
    python -m bench pooled [--models tiny-xl] [--steps 50] [--inner-steps 10] [--json]
    python -m bench shapes --gate [--model shapes] [--seeds 100] [--photos 5] [--json]
    python -m bench shapes --claims [--model shapes] [--seeds 12] [--photos 6] [--reweight-seeds 6] [--parts bcdefgi] [--out DIR] [--json]
    python -m bench shapes [...]          # both: the gate, then the claims
    python -m bench shapes --blend-sweep [--model DIR] [--seeds 8]   # choose the model's local blend defaults
    python -m bench gpu --out DIR [--budget-s S] [--quick]   # seconds per photo on a GPU, real sizes (issue #32)
    python -m bench train [--seconds 120] [--only NAME,...] [--json]   # the shapes model's training speed levers (#31)
    python -m bench train --step-costs [--json]   # optimizer and EMA kernels of a training step, and which are exact

Tiny-model rows are repeated (interleaved with their baseline) and report median (min–max).
On a CPU that other work shares, add --threads 1 (see bench/measure.py).

"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bench.measure import print_rows, print_tables
from bench.p2p import bench_p2p
from models.loading import DeviceError, pick_device, pick_dtype


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["p2p", "inversion", "dataset", "shapes", "pooled", "gpu", "train"])
    parser.add_argument("--gate", action="store_true",
                        help="shapes: the two checks that gate the shipped weights (generation, inversion)")
    parser.add_argument("--claims", action="store_true",
                        help="shapes: the papers' claims measured on the model (issue #14); plain 'shapes' runs both")
    parser.add_argument("--blend-sweep", action="store_true",
                        help="shapes: local blend over map sides and thresholds, to choose the model's defaults")
    parser.add_argument("--model", default="shapes", help="shapes: the model to check (a name or folder)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="shapes: generations to judge (--gate 100), generated cases (--claims 12, --blend-sweep 8)")
    parser.add_argument("--photos", type=int, default=None,
                        help="shapes: rendered photos to invert (--gate 5, --claims 6); gpu: photos in the batch row (8)")
    parser.add_argument("--reweight-seeds", type=int, default=6, help="shapes --claims: cases for the reweighting curves")
    parser.add_argument("--parts", default="bcdefgi",
                        help="shapes --claims: which claims (letters of issue #14; i: the generated sources "
                             "null-text inverted and swapped again, the inversion's share of (f); t: (b)/(f) on photos "
                             "for every inversion × {p2p, +prox, +guard, +both}, issue #30's table, not in the default)")
    parser.add_argument("--blend-side", type=int, default=None,
                        help="shapes --claims: local blend map side (default: the model's own, else SPEC's)")
    parser.add_argument("--blend-threshold", type=float, default=None,
                        help="shapes --claims: local blend threshold (default: the model's own, else 0.3)")
    parser.add_argument("--out", default=None,
                        help="shapes --claims: folder for the example grids; gpu: folder for bench-gpu.json and .md")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="gpu: seconds the whole run may take; rows estimated not to fit are skipped and listed")
    parser.add_argument("--quick", action="store_true",
                        help="gpu: every row on the tiny models at 3 steps, once (the CPU check of the command)")
    parser.add_argument("--seconds", type=float, default=120.0, help="train: wall seconds per configuration")
    parser.add_argument("--only", default=None,
                        help="train: comma-separated starts of configuration names (default: all of bench/train.py)")
    parser.add_argument("--step-costs", action="store_true",
                        help="train: the optimizer step and EMA update of a UNet step, per-tensor loop against "
                             "torch's foreach and fused kernels, and which give the loop's weights to the bit")
    parser.add_argument("--jobs", type=int, default=8, help="dataset: jobs in the manifest")
    parser.add_argument("--models", default=None,
                        help="comma-separated: tiny, tiny-xl, sd15 (random-weight SD 1.5), sdxl (random-weight SDXL "
                             "base at 512 px), sdxl1024 (at its native 1024 px); default tiny,sd15 (pooled: tiny-xl)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps on the tiny model")
    parser.add_argument("--sd15-steps", type=int, default=None,
                        help="steps on sd15/sdxl (default 3 for p2p, the fewest with self-attention injection; 1 for "
                             "inversion)")
    parser.add_argument("--inner-steps", type=int, default=None,
                        help="null-text Adam steps per DDIM step (default 10 on tiny, 2 on sd15)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved runs per measurement on tiny (default 40 for p2p, 3 for inversion)")
    parser.add_argument("--processes", type=int, default=None,
                        help="p2p on tiny: fresh processes the pairs are spread over (default 8; see bench/p2p.py)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="fp32 (CPU default), fp16 (CUDA default), bf16")
    parser.add_argument("--json", action="store_true", help="print one JSON object {rows: [...]}")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        device = pick_device(args.device)  # a device this torch cannot use is refused before any work
    except DeviceError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    dtype = pick_dtype(device, args.dtype)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows, costs = [], []
    models = [m.strip() for m in (args.models or ("tiny-xl" if args.what == "pooled" else "tiny,sd15")).split(",")
              if m.strip()]
    if args.what == "shapes":
        raise SystemExit(run_shapes(args))
    if args.what == "train":
        from bench.train import bench_train, print_train

        if args.step_costs:
            from bench.train import bench_step_costs, print_step_costs

            rows = bench_step_costs()
            print(json.dumps({"rows": rows}, indent=2) if args.json else print_step_costs(rows), flush=True)
            return
        rows = bench_train(args.seconds, [o.strip() for o in args.only.split(",")] if args.only else None)
        print(json.dumps({"rows": rows}, indent=2) if args.json else print_train(rows), flush=True)
        return
    if args.what == "gpu":
        from bench.gpu import run as run_gpu

        raise SystemExit(run_gpu(args, argv if argv is not None else sys.argv[1:]))
    if args.what == "pooled":  # SDXL's null-text choice: the pooled unconditional embedding optimized or not
        from bench.pooled import bench_pooled

        for model in models:
            rows.extend(bench_pooled(model, args.steps, args.inner_steps or 10, device, dtype))
        print_rows(rows, args.json)
        return
    if args.what == "dataset":
        from bench.dataset import bench_dataset

        steps = args.steps if args.steps != 50 else 20
        print_rows(bench_dataset(args.jobs, steps, args.inner_steps or 5), args.json)
        return
    for model in models:
        sd15_steps = args.sd15_steps or (3 if args.what == "p2p" else 1)
        tiny = model in ("tiny", "tiny-xl")
        steps = args.steps if tiny else sd15_steps
        repeats = (args.repeats or (40 if args.what == "p2p" else 3)) if tiny else 1
        if args.what == "p2p":
            rows.append(bench_p2p(model, steps, repeats, device, dtype, (args.processes or 8) if tiny else 1))
        else:
            from bench.inversion import bench_inversion

            inner = args.inner_steps if args.inner_steps is not None else (10 if tiny else 2)
            # SDXL's trainable baseline would add 10 GB of weight gradients: measured on the others
            methods, cost = bench_inversion(model, steps, device, dtype, inner, repeats, baseline=not model.startswith("sdxl"),
                                            fixed_steps=5 if tiny else inner)
            rows.extend(methods)
            costs.append(cost)
        if not args.json:
            print(f"[done] {model}", flush=True)
    if args.what == "inversion":
        print_tables({"rows": rows, "null_text": costs}, args.json)
    else:
        print_rows(rows, args.json)


def run_shapes(args: argparse.Namespace) -> int:
    """``python -m bench shapes``: the gate, the claims, or both (plain); or the blend sweep.
    Returns the exit code: 1 when a gate or a claim fails."""
    from bench.claims import bench_blend_sweep, bench_shapes_claims, print_claims, print_sweep
    from bench.shapes import bench_shapes_gate, print_gate

    def show(report: dict, text) -> None:
        if args.json:  # NaN (no pixel to measure) and inf (identical pixels) as JSON null
            clean = json.loads(json.dumps(report, default=str), parse_constant=lambda _: None)
            print(json.dumps(clean, indent=2))
        else:
            print(text(report), flush=True)

    if args.blend_sweep:
        show(bench_blend_sweep(args.model, args.seeds or 8, args.steps), print_sweep)
        return 0
    passed = True
    if args.gate or not args.claims:
        report = bench_shapes_gate(args.model, args.seeds or 100, args.photos or 5, args.steps)
        show(report, print_gate)
        passed = report["passed"]
    if args.claims or not args.gate:
        report = bench_shapes_claims(args.model, args.seeds or 12, args.photos or 6, args.reweight_seeds, args.steps,
                                     args.out, args.blend_side, args.blend_threshold, args.parts)
        show(report, print_claims)
        passed = passed and report["passed"]
    return 0 if passed else 1


if __name__ == "__main__":
    main()

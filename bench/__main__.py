"""Speed and memory figures, each against a baseline measured in the same run.

    python -m bench p2p [--models tiny,sd15] [--steps 50] [--sd15-steps 3] [--repeats 9] [--json]
    python -m bench inversion [--models tiny,sd15] [--steps 50] [--sd15-steps 1] [--inner-steps N] [--json]
    (models: tiny, tiny-xl, and random-weight real architectures sd15, sdxl (512 px), sdxl1024)
    python -m bench dataset [--jobs 8] [--steps 20] [--json]
    python -m bench pooled [--models tiny-xl] [--steps 50] [--inner-steps 10] [--json]
    python -m bench shapes --gate [--model shapes] [--seeds 100] [--photos 5] [--json]

Tiny-model rows are repeated (interleaved with their baseline) and report median (min–max).
On a CPU that other work shares, add --threads 1 (see bench/measure.py).

"""

from __future__ import annotations

import argparse
import json
import os

from bench.measure import print_rows, print_tables
from bench.p2p import bench_p2p
from models.loading import pick_device, pick_dtype


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["p2p", "inversion", "dataset", "shapes", "pooled"])
    parser.add_argument("--gate", action="store_true",
                        help="shapes: the two checks that gate the shipped weights (generation, inversion)")
    parser.add_argument("--model", default="shapes", help="shapes: the model to check (a name or folder)")
    parser.add_argument("--seeds", type=int, default=100, help="shapes --gate: generations to judge")
    parser.add_argument("--photos", type=int, default=5, help="shapes --gate: rendered photos to invert")
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
                        help="interleaved runs per measurement on tiny (default 9 for p2p, 3 for inversion)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="fp32 (CPU default), fp16 (CUDA default), bf16")
    parser.add_argument("--json", action="store_true", help="print one JSON object {rows: [...]}")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = pick_device(args.device)
    dtype = pick_dtype(device, args.dtype)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows, costs = [], []
    models = [m.strip() for m in (args.models or ("tiny-xl" if args.what == "pooled" else "tiny,sd15")).split(",")
              if m.strip()]
    if args.what == "shapes":
        from bench.shapes import bench_shapes_gate, print_gate

        if not args.gate:
            parser.error("shapes: add --gate (the gating checks); the claims table comes with a later issue")
        report = bench_shapes_gate(args.model, args.seeds, args.photos, args.steps)
        print(json.dumps(report, indent=2) if args.json else print_gate(report))
        raise SystemExit(0 if report["passed"] else 1)
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
        repeats = (args.repeats or (9 if args.what == "p2p" else 3)) if tiny else 1
        if args.what == "p2p":
            rows.append(bench_p2p(model, steps, repeats, device, dtype))
        else:
            from bench.inversion import bench_inversion

            inner = args.inner_steps if args.inner_steps is not None else (10 if tiny else 2)
            # SDXL's trainable baseline would add 10 GB of weight gradients: measured on the others
            methods, cost = bench_inversion(model, steps, device, dtype, inner, repeats, baseline=not model.startswith("sdxl"))
            rows.extend(methods)
            costs.append(cost)
        if not args.json:
            print(f"[done] {model}", flush=True)
    if args.what == "inversion":
        print_tables({"rows": rows, "null_text": costs}, args.json)
    else:
        print_rows(rows, args.json)


if __name__ == "__main__":
    main()

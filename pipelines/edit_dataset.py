"""Edit many photos, spread over every process accelerate starts:

    accelerate launch -m pipelines.edit_dataset MANIFEST.jsonl --out DIR [edit options]
    accelerate launch -m pipelines.edit_dataset --pie-bench PIE-Bench/ --out DIR
    python -m pipelines.edit_dataset MANIFEST.jsonl --out DIR          # one process

Each job's outputs (as edit_real's) go to DIR/items/<id>/, which is either complete or absent.
DIR/results.jsonl has one line per finished job, DIR/errors.jsonl one per failed job. Running the
same command again skips finished jobs and redoes the rest; changed options are refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from models.names import DEFAULT_MODEL
from pipelines.cli import (
    OneLineParser,
    parse_size_option,
    UsageError,
    add_guidance_options,
    add_inversion_options,
    check_device_option,
    check_file_option,
    check_folder_option,
    check_model_option,
    number_type,
    parse_blend,
    parse_crop,
    parse_cross_replace,
    parse_reweight,
    parse_steps,
    quiet_libraries,
    run_cli,
    spec_from_options,
)
from pipelines.score import check_score_options

log = logging.getLogger(__name__)
PROG = "python -m pipelines.edit_dataset"
DEFAULTS = {"steps": 50, "guidance": 7.5, "mode": "auto", "cross_replace": 0.8, "self_replace": 0.4, "reweight": None,
            "blend": None, "inversion": "null-text", "inner_steps": 10, "crop": "center", "size": "auto", "blend_threshold": None,
            "fixed_point_steps": None, "fixed_point_anchor": 0.0, "prox": None, "prox_quantile": 0.75, "latent_guard": 0}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # paths stay text until checked: argparse's Path("") would quietly mean the current folder
    parser.add_argument("manifest", nargs="?", help="JSONL manifest (id, image, src, tgt, options)")
    parser.add_argument("--pie-bench", metavar="ROOT", help="PIE-Bench root (or its mapping_file.json) instead of a manifest")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local folder or 'tiny'")
    parser.add_argument("--device", default=None, help="default: this process's accelerator device")
    parser.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32", "fp64"])
    parser.add_argument("--seed", type=number_type("seed"), default=0, help="random seed, 0…2**64-1 (default 0)")
    parser.add_argument("--batch-size", type=number_type("batch_size"), default=1,
                        help="at most this many photos inverted together in one UNet batch (≥ 1, default 1)")
    parser.add_argument("--cache-dir", default=None, help="inversion cache (default DIR/inversions)")
    # edit options: None means "not given" so that PIE-Bench's settings and per-job values apply
    parser.add_argument("--steps", type=number_type("steps"))
    parser.add_argument("--guidance", type=number_type("guidance"))
    parser.add_argument("--mode", choices=["auto", "replace", "refine"])
    parser.add_argument("--cross-replace", action="append", metavar="F|S,E|WORD=F")
    parser.add_argument("--self-replace", metavar="F|S,E")
    parser.add_argument("--reweight", action="append", metavar="WORD=SCALE")
    parser.add_argument("--blend", action="append", metavar="SRC:TGT")
    parser.add_argument("--blend-threshold", type=number_type("blend_threshold"))
    add_inversion_options(parser, defaults=False)
    add_guidance_options(parser, defaults=False)
    parser.add_argument("--crop")
    parser.add_argument("--size", metavar="auto|N|W,H", help="working size (default auto: each photo's own ratio)")
    parser.add_argument("--original-size", action="store_true", help="also write each edit at its photo's pixel size")
    parser.add_argument("--score", action="store_true", help="score the results with pipelines.score afterwards")
    parser.add_argument("--clip-model", default=None, help="for --score")
    parser.add_argument("--dino-model", default=None, help="for --score")
    parser.add_argument("--lpips-backbone", default=None, help="for --score")
    parser.add_argument("--metrics", default=None, help="for --score: comma-separated metrics (default all)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def given_options(args) -> dict:
    """The edit options given on the command line, as JSON-native values."""
    parsed = {
        "steps": args.steps, "guidance": args.guidance, "mode": args.mode,
        "cross_replace": parse_cross_replace(args.cross_replace) if args.cross_replace is not None else None,
        "self_replace": parse_steps(args.self_replace, "--self-replace") if args.self_replace is not None else None,
        "reweight": parse_reweight(args.reweight), "blend": parse_blend(args.blend),
        "inversion": args.inversion, "inner_steps": args.inner_steps,
        "crop": parse_crop(args.crop) if args.crop is not None else None, "blend_threshold": args.blend_threshold,
        "size": _json_size(parse_size_option(args.size)) if args.size is not None else None,
        "fixed_point_steps": args.fixed_point_steps, "fixed_point_anchor": args.fixed_point_anchor,
        "prox": args.prox, "prox_quantile": args.prox_quantile, "latent_guard": args.latent_guard,
    }
    return {k: v for k, v in parsed.items() if v is not None}


def _json_size(size):
    """A size request as JSON keeps it: "auto", N, or [W, H]."""
    return list(size) if isinstance(size, tuple) else size


def check_args(args) -> None:
    """Check every option without importing torch (numbers were checked as argparse parsed them);
    paths become ``Path`` objects."""
    if (args.manifest is None) == (args.pie_bench is None):
        raise UsageError("give a manifest file or --pie-bench ROOT (one of them)")
    if args.manifest is not None:
        args.manifest = check_file_option(args.manifest, "the manifest", "JSONL manifest file")
    if args.pie_bench is not None:
        if not str(args.pie_bench).strip():
            raise UsageError("--pie-bench is empty: give the PIE-Bench folder (with mapping_file.json)")
        args.pie_bench = Path(args.pie_bench).expanduser()
    args.out = check_folder_option(args.out, "--out")
    if args.cache_dir is not None:
        args.cache_dir = check_folder_option(args.cache_dir, "--cache-dir")
    check_model_option(args.model)
    check_device_option(args.device)
    if args.crop is not None and not args.crop.strip():
        raise UsageError("--crop is empty: write 'center' or four pixel offsets LEFT,RIGHT,TOP,BOTTOM")
    if args.score:
        check_score_options(args)
    elif any(v is not None for v in (args.metrics, args.clip_model, args.dino_model, args.lpips_backbone)):
        raise UsageError("--metrics, --clip-model, --dino-model and --lpips-backbone are for --score: add --score")


def job_options(job, given: dict) -> dict:
    """A job's options: the defaults, the dataset's settings (PIE-Bench's), the command line,
    then the job's own manifest values, each overriding the one before."""
    return {**DEFAULTS, **job.defaults, **given, **job.options}


def job_spec(job, options: dict):
    """The ``EditSpec`` of a job (raises EditSpecError for a bad prompt or word)."""
    return spec_from_options([job.src, *job.tgts], options)


def run_fingerprint(args, given: dict, jobs) -> dict:
    """What must not change between a run and its resumption: model, options, the job list."""
    listing = json.dumps([[j.id, str(j.image), j.src, list(j.tgts), j.options, j.defaults] for j in jobs],
                         sort_keys=True, default=str)
    return {"model": str(args.model), "dtype": args.dtype, "seed": args.seed, "options": given,
            "jobs_sha256": hashlib.sha256(listing.encode()).hexdigest()}


def check_resume(out: Path, fingerprint: dict) -> None:
    """Refuse to mix a rerun with changed options into an existing output folder."""
    path = out / "run_config.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    changed = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != json.loads(json.dumps(fingerprint.get(k), default=str)))
    if changed:
        raise UsageError(f"{out} holds a run with other settings ({', '.join(changed)} changed): "
                         "rerun with the same options to resume, or use a new --out")


def _complete(items: Path, job_id: str) -> bool:
    return (items / job_id / "run.json").is_file()


def _process_jobs(pipe, jobs, given, args, items: Path, process_index: int, on_done) -> list[dict]:
    """Invert and edit this process's jobs; returns error records. A bad job fails alone."""
    from data.images import parse_size
    from editing import edit
    from editing.edit import check_prompts
    from models.codec import tokenizers
    from inversion import invert
    from pipelines.edit_real import RealEdit, prepare_photo, write_outputs

    errors = []
    ready = []
    for job in jobs:
        options = job_options(job, given)
        try:
            spec = job_spec(job, options)
            check_prompts(tokenizers(pipe), spec)
            crop = options["crop"] if isinstance(options["crop"], str) else tuple(options["crop"])
            image, shown = prepare_photo(pipe, job.image, parse_size(options["size"], "size"), crop)
            ready.append((job, options, spec, image, shown))
        except Exception as exc:  # any failure is this job's alone
            errors.append({"id": job.id, "error": f"{type(exc).__name__}: {exc}", "process_index": process_index})
            on_done(failed=True)

    def key(entry):
        o = entry[1]
        return (o["inversion"], o["steps"], o["guidance"], o["inner_steps"], o["fixed_point_steps"],
                o["fixed_point_anchor"])

    cache = args.cache_dir or args.out / "inversions"
    batch_size = args.batch_size
    while ready:
        first = key(ready[0])
        chosen = set([i for i, e in enumerate(ready) if key(e) == first][:batch_size])
        batch = [e for i, e in enumerate(ready) if i in chosen]
        ready = [e for i, e in enumerate(ready) if i not in chosen]  # by position: == on images compares pixels
        o = batch[0][1]
        started = time.perf_counter()
        try:
            inversions = invert(pipe, [e[3] for e in batch], [e[2].prompts[0] for e in batch], method=o["inversion"],
                                num_steps=o["steps"], guidance_scale=o["guidance"], num_inner_steps=o["inner_steps"],
                                progress=False, cache_dir=cache, size=None, fixed_point_steps=o["fixed_point_steps"],
                                fixed_point_anchor=o["fixed_point_anchor"])
        except Exception as exc:
            if len(batch) > 1:  # retry one by one so that one bad photo does not fail its neighbours
                ready = [*batch, *ready]
                batch_size = 1
                continue
            errors.append({"id": batch[0][0].id, "error": f"{type(exc).__name__}: {exc}", "process_index": process_index})
            on_done(failed=True)
            continue
        inverted = (time.perf_counter() - started) / len(batch)
        for (job, options, spec, image, shown), inv in zip(batch, inversions):
            try:
                started = time.perf_counter()
                result = edit(pipe, spec, inversion=inv)
                seconds = {"inversion": round(inverted, 3), "edit": round(time.perf_counter() - started, 3)}
                parameters = {"id": job.id, "image": str(job.image), **options, "model": str(args.model),
                              "process_index": process_index}
                write_outputs(items / job.id, RealEdit(image, inv, result, original_size=shown), spec, parameters,
                              seconds, extra={"id": job.id, "process_index": process_index},
                              original_size=args.original_size)
                on_done(failed=False)
            except Exception as exc:
                errors.append({"id": job.id, "error": f"{type(exc).__name__}: {exc}", "process_index": process_index})
                on_done(failed=True)
    return errors


def merge_results(out: Path, jobs) -> int:
    """Write DIR/results.jsonl from the complete item folders (one line per finished job, in
    manifest order); returns the number of lines."""
    from eval.report import atomic_write

    lines = []
    for job in jobs:
        run_file = out / "items" / job.id / "run.json"
        if run_file.is_file():
            run = json.loads(run_file.read_text(encoding="utf-8"))
            lines.append(json.dumps({"id": job.id, "process_index": run.get("process_index"), "prompts": run.get("prompts"),
                                     "inversion": run.get("inversion"), "seconds": run.get("seconds"),
                                     "folder": str(run_file.parent)}))
    atomic_write(out / "results.jsonl", "".join(line + "\n" for line in lines))
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    """The command (one accelerate process of it); returns its exit code."""
    args = build_parser().parse_args(argv)  # numbers are checked here, as they are parsed

    def go() -> int:
        from data.manifest import pie_bench_jobs, read_jsonl
        from pipelines.outputs import check_writable

        # everything a user can get wrong is checked first, with light imports only
        check_args(args)
        jobs = pie_bench_jobs(args.pie_bench) if args.pie_bench else read_jsonl(args.manifest)
        given = given_options(args)
        check_writable(args.out)  # by making (and removing) a folder in it

        quiet_libraries(args.quiet)
        import torch
        from accelerate import Accelerator
        from accelerate.utils import gather_object
        from tqdm.auto import tqdm

        from eval.report import atomic_write
        from models.loading import check_device, load_pipeline

        if args.device is not None:
            check_device(args.device)  # before accelerate starts and the model loads
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        rank, world = accelerator.process_index, accelerator.num_processes
        items = args.out / "items"
        fingerprint = run_fingerprint(args, given, jobs)
        try:
            if accelerator.is_main_process:
                check_resume(args.out, fingerprint)
                items.mkdir(parents=True, exist_ok=True)
                atomic_write(args.out / "run_config.json", json.dumps(fingerprint, indent=2, default=str) + "\n")
                for stale in items.glob(".*.partial-*"):  # left by a killed run
                    shutil.rmtree(stale, ignore_errors=True)
            accelerator.wait_for_everyone()
            todo = [j for j in jobs if not _complete(items, j.id)]
            skipped = len(jobs) - len(todo)
            torch.manual_seed(args.seed)
            pipe = load_pipeline(args.model, device=args.device or accelerator.device, dtype=args.dtype)
            bar = tqdm(total=len(jobs), initial=skipped, desc="jobs", disable=args.quiet or not accelerator.is_main_process)
            failed_here = [0]

            def on_done(failed: bool) -> None:
                # every process writes into items/: the main process's bar counts them all
                failed_here[0] += failed
                # one listing, not a stat per job: item folders appear only when complete
                bar.n = sum(1 for e in os.scandir(items) if not e.name.startswith(".")) + failed_here[0]
                bar.set_postfix(failed=failed_here[0], processes=world)
                bar.refresh()

            with accelerator.split_between_processes(todo) as mine:
                errors = _process_jobs(pipe, mine, given, args, items, rank, on_done)
            bar.close()
            all_errors = gather_object(errors) if world > 1 else errors
            accelerator.wait_for_everyone()
            code = 0
            if accelerator.is_main_process:
                all_errors = sorted(all_errors, key=lambda e: e["id"])
                atomic_write(args.out / "errors.jsonl", "".join(json.dumps(e) + "\n" for e in all_errors))
                finished = merge_results(args.out, jobs)
                print(f"{finished} of {len(jobs)} jobs done ({skipped} were already done), {len(all_errors)} failed; "
                      f"results in {args.out / 'results.jsonl'}" + (f", errors in {args.out / 'errors.jsonl'}" if all_errors else ""))
                if args.score:
                    from pipelines.score import main as score_main

                    extra = ["--pie-bench", str(args.pie_bench)] if args.pie_bench else ["--manifest", str(args.manifest)]
                    for flag, value in (("--clip-model", args.clip_model), ("--dino-model", args.dino_model),
                                        ("--lpips-backbone", args.lpips_backbone), ("--metrics", args.metrics)):
                        if value:
                            extra += [flag, value]
                    code = score_main([str(items), *extra, "--out", str(args.out / "report"), "--quiet"])
                code = code or (1 if all_errors else 0)
            accelerator.wait_for_everyone()
            return code
        finally:
            accelerator.end_training()

    return run_cli(PROG, go)


if __name__ == "__main__":
    sys.exit(main())

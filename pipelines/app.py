"""The web app: edit a photo in the browser, watch the attention, turn the faders.

    python -m pipelines.app [--model M] [--host 127.0.0.1] [--port 7860] [--out outputs/app]

Serves a Gradio page on http://HOST:PORT (127.0.0.1 unless --host says otherwise). The default
model is the shipped shapes model when its weights are there, else the tiny offline model, so it
runs offline on a CPU. The edit is also an API ("edit") that gradio_client and other programs call.
Everything the app writes or serves lives under --out: edits/ (each edit's pictures and run.json),
inversions/ (the inversion cache), examples/ (the bundled photos), gradio/ (uploads).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from pathlib import Path

from pipelines.cli import OneLineParser, UsageError, check_device_option, quiet_libraries, run_cli

PROG = "python -m pipelines.app"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLES = ("red_circle.png", "chelsea.png")


def default_model() -> str:
    """"shapes" once its trained weights are in the package, else "tiny"."""
    from models.loading import SHIPPED_MODELS

    return "shapes" if (SHIPPED_MODELS["shapes"] / "model_index.json").is_file() else "tiny"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="hub id, local diffusers folder, 'shapes' or 'tiny' (default: shapes if shipped, else tiny)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--out", default="outputs/app", help="the app's folder: edits, inversion cache, uploads")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32", "fp64"],
                        help="default fp16 on CUDA, fp32 elsewhere")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in megabytes (default 20)")
    parser.add_argument("--max-megapixels", type=float, default=40.0,
                        help="largest photo in millions of pixels, checked before decoding (default 40)")
    parser.add_argument("--quiet", action="store_true", help="log only warnings")
    return parser


def prepare_folder(out: Path) -> Path:
    """Create the app's folder, copy the bundled example photos into it, and point gradio's upload
    and cache folders inside it (before gradio is imported), so that all it serves lives there."""
    out.mkdir(parents=True, exist_ok=True)
    examples = out / "examples"
    examples.mkdir(exist_ok=True)
    for name in EXAMPLES:
        if (ASSETS / name).is_file() and not (examples / name).is_file():
            shutil.copyfile(ASSETS / name, examples / name)
    os.environ["GRADIO_TEMP_DIR"] = str(out / "gradio")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(out / "gradio" / "examples-cache")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    return examples


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit code (2 for a bad option or an unloadable model)."""
    args = build_parser().parse_args(argv)

    def go() -> int:
        # every option is checked before torch is imported (default_model imports it)
        if args.model is not None and not args.model.strip():
            raise UsageError("--model is empty: give a hub id, a local diffusers folder, 'shapes' or 'tiny'")
        check_device_option(args.device)
        if not args.out.strip():
            raise UsageError("--out is empty: give a folder")
        out = Path(args.out).expanduser().resolve()
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {args.out} is a file, not a folder: give a folder")
        if not 0 < args.port < 65536:
            raise UsageError(f"--port {args.port}: give a port from 1 to 65535")
        if not all(0 < v < math.inf for v in (args.max_upload_mb, args.max_megapixels)):
            raise UsageError("--max-upload-mb and --max-megapixels must be positive and finite")
        examples = prepare_folder(out)
        quiet_libraries(args.quiet)
        model = args.model or default_model()
        from models.loading import load_pipeline
        from pipelines.app_session import EditSession

        pipe = load_pipeline(model, device=args.device, dtype=args.dtype)
        max_bytes = int(args.max_upload_mb * 1e6)
        session = EditSession(pipe, out, max_bytes=max_bytes, max_pixels=int(args.max_megapixels * 1e6))

        from pipelines.app_page import build_page, example_rows

        page = build_page(session, example_rows(examples), model)
        page.queue(default_concurrency_limit=1, max_size=32)
        print(f"serving {model} on http://{args.host}:{args.port} (files in {out}); Ctrl+C stops", flush=True)
        page.launch(server_name=args.host, server_port=args.port, max_file_size=max_bytes,
                    allowed_paths=[str(session.edits_dir), str(examples)],
                    blocked_paths=[str(session.cache_dir)], share=False, inbrowser=False,
                    show_error=True, ssr_mode=False, enable_monitoring=False, quiet=args.quiet)
        return 0

    return run_cli(PROG, go)


if __name__ == "__main__":
    sys.exit(main())

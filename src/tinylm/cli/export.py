"""``tinylm export``: a trained run as a Hugging Face checkpoint or an ONNX model
(tinylm.export)."""

from __future__ import annotations

import argparse

from tinylm import export
from tinylm.cli.common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand."""
    p = add_command(
        sub, "export", run,
        help="write a trained run as a Hugging Face checkpoint or an ONNX model",
        description="Read the run in DIR (only read: nothing there changes) and write the "
        "weights it keeps (the best by val with --keep best, else the average with --ema, "
        "else the last) to OUT. --to hf: a transformer run as a GPT-2 checkpoint directory (config.json, model.safetensors, a "
        "character-level tokenizer.json...) that transformers' AutoModelForCausalLM and "
        "pipeline('text-generation') load. --to onnx: any neural model as one .onnx file "
        "(input idx, int64 token ids; output logits). Before it is put in place, every export "
        f"is loaded back and must give the run's logits within {export.TOLERANCE:g}. An existing "
        "OUT is replaced only if it is an earlier tinylm export. Needs: pip install "
        "'tinylm[export]'.")
    p.add_argument("run_dir", metavar="DIR", help="the run directory (the -o of a run)")
    p.add_argument("--to", required=True, choices=export.TARGETS,
                   help="hf: a Hugging Face Transformers checkpoint directory (transformer runs); "
                   "onnx: an ONNX model file (every neural model)")
    p.add_argument("out", metavar="OUT",
                   help="the directory (--to hf) or the file (--to onnx) to write")


def run(args: argparse.Namespace) -> int:
    done = export.export(args.run_dir, args.to, args.out)
    what = "Hugging Face checkpoint" if done.target == "hf" else "ONNX model"
    print(f"wrote {done.path} ({what} of the {done.model} run in {args.run_dir}, step "
          f"{done.step}, {done.weights} weights): {', '.join(done.files)}")
    print(f"checked: its logits are tinylm's within {done.max_error:.1g} (at most "
          f"{export.TOLERANCE:g})")
    return 0

"""Command-line options shared by the top-level scripts."""

from __future__ import annotations

import argparse

from transformers_qf.core.models import BUNDLED, DEFAULT_MODEL, ENV_MODEL


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help=f"bundled name ({', '.join(sorted(BUNDLED))}), local directory, .gguf file or hub id; "
        f"default ${ENV_MODEL} or {DEFAULT_MODEL}",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...; default: cuda if present")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16; default: bf16 on cuda, float32 on cpu")


def parse_layers(text: str) -> list[int]:
    """'20,23,27' or '20-27' or a mix."""
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                layers += list(range(int(lo), int(hi) + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad layer list {text!r}: use e.g. 23 or 20,23,27 or 20-27") from None
    return layers

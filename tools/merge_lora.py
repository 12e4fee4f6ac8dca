"""Fold a LoRA adapter into its base model and write a plain safetensors model file.

    python tools/merge_lora.py ADAPTER OUT [--base FILE] [--weights ema|model] [--overwrite]

TwinFlow (arXiv:2512.05150) Sec. 4 fine-tunes pretrained models; with LoRA (twinflow_min/lora.py)
the result is an adapter beside a base file. This writes W + (alpha / rank) B A into every adapted
layer, keeps the trained TwinFlow embedders, and saves the base file's format: the same keys as a
plain model, each tensor in the base file's dtype for that key (new TwinFlow keys take the base's
most common floating dtype), the base's metadata with the model config, plus a record of the merge.
`load_pretrained` and `sample.py` read the output like any other model file.

The base is `--base FILE`, else the path in the adapter's metadata; its sha256 must equal the
recorded one. `--weights`: ema (the teacher values; the default when the file has them) or model
(the student). OUT is never overwritten without --overwrite, and never the adapter or base file.
Time convention of the models: see twinflow_min/transport.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/merge_lora.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from twinflow_min.checkpoint import read_header  # noqa: E402
from twinflow_min.checks import EXIT_REFUSED, CheckpointError  # noqa: E402
from twinflow_min.lora import (EMA_METADATA_KEY, LORA_METADATA_KEY, file_sha256,  # noqa: E402
                               load_adapter, merge_lora, save_file_atomic)
from twinflow_min.model import config_to_metadata  # noqa: E402
from twinflow_min.train_state import FORMAT_KEY  # noqa: E402

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16}
MERGE_METADATA_KEY = "twinflow_min.merged_lora"
DROPPED_METADATA = (FORMAT_KEY, "twinflow_min.train_state", LORA_METADATA_KEY, EMA_METADATA_KEY)


def merge_to_file(adapter: str, out: str, base: str | None = None, weights: str = "auto",
                  overwrite: bool = False) -> dict:
    """Merge `adapter` into its base and write `out` atomically; return a summary dict.

    Raises CheckpointError (one line) for an existing `out` without `overwrite`, an `out` that is
    the adapter or base file, and every load_adapter error (missing or different base, ...).
    """
    if os.path.exists(out) and not overwrite:
        raise CheckpointError(f"{out!r} exists; pass --overwrite to replace it")
    model, info = load_adapter(adapter, base, weights=weights)
    protected = {os.path.realpath(adapter), os.path.realpath(info.base_path)}
    if os.path.realpath(out) in protected:
        raise CheckpointError(f"{out!r} is the adapter or the base file; write the merged model "
                              f"to a new path")
    merge_lora(model)
    _, base_dtypes, base_metadata = read_header(info.base_path)
    floating = [d for d in base_dtypes.values() if d in SAFETENSORS_DTYPES]
    default_dtype = SAFETENSORS_DTYPES[Counter(floating).most_common(1)[0][0]] if floating \
        else torch.float32
    tensors = {}
    for key, value in model.state_dict().items():
        dtype = SAFETENSORS_DTYPES.get(base_dtypes.get(key), default_dtype)
        value = value.detach().to(dtype) if value.is_floating_point() else value.detach()
        tensors[key] = value.contiguous().clone()
    metadata = {k: v for k, v in base_metadata.items() if k not in DROPPED_METADATA}
    metadata.update(config_to_metadata(model.config))
    settings = info.settings
    metadata[MERGE_METADATA_KEY] = json.dumps(dict(
        adapter=os.path.basename(adapter), adapter_sha256=file_sha256(adapter),
        base=os.path.basename(info.base_path), base_sha256=info.base_sha256, weights=info.used,
        rank=settings.rank, alpha=settings.alpha, layers=len(settings.layers)))
    save_file_atomic(tensors, Path(out), metadata)
    return dict(layers=len(settings.layers), rank=settings.rank, alpha=settings.alpha,
                weights=info.used, base=info.base_path, tensors=len(tensors))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapter", help="adapter .safetensors (lora.save_adapter, LoRA checkpoint)")
    parser.add_argument("output", help="merged model .safetensors to write")
    parser.add_argument("--base", default=None, metavar="FILE",
                        help="base model file (default: the path in the adapter's metadata)")
    parser.add_argument("--weights", default="auto", choices=("ema", "model"),
                        help="ema: the teacher values (default when present); model: the student")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    try:
        summary = merge_to_file(args.adapter, args.output, args.base, args.weights, args.overwrite)
    except (CheckpointError, ValueError, OSError) as error:
        print(f"merge_lora: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"wrote {args.output}: {summary['layers']} layers merged (rank {summary['rank']}, alpha "
          f"{summary['alpha']:g}, {summary['weights']} weights) into {summary['base']}, "
          f"{summary['tensors']} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())

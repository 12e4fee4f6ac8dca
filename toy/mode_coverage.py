"""Paper companion: does the 1-NFE generator cover every mode? 8 Gaussians and a 5x5 Gaussian grid.

TwinFlow (arXiv:2512.05150), Sec. 4 (diversity, no mode collapse of the one-step generator), in 2-D:
each method of --methods (toy/companion.py `METHODS`) is trained on each toy of --toys with the same
budget; its 1-NFE samples z - F(z, 1, 0) (official 1-NFE preset, the evaluation's fixed noise of
seed TOY_EVAL_SEED) are assigned to the nearest mode centre (`twinflow_min.data.toy_mode_centres`,
in units of the mode sd `toy_mode_std`). With N samples and K equally likely modes:
  modes hit     modes holding >= HIT_FRACTION (20%) of their uniform share N / K among the samples
                within RADIUS (3) sd of that centre
  mass error    total variation 1/2 sum_k |m_k - 1/K|, m_k = share of the samples nearest to mode k
                (0: every mode has exactly its share; non-finite samples belong to no mode)
  off-mode      share of the samples farther than 3 sd from every centre (a 2-D Gaussian keeps
                exp(-4.5) = 1.1% of its mass beyond 3 sd)
  1-NFE ED      energy distance to fresh data (train.py's summary)
The row `data (2nd draw)` scores fresh data draws the same way: the floor of each number at this N.
Writes, under --out (a new folder):
  mode_coverage.md    per toy and method: modes hit of every seed, mean ± sd of the rest; every run
  mode_coverage.png   per toy (rows), per method (panels): the first seed's 1-NFE samples and data
  mode_coverage_<toy>.png   one row of that figure: the panels of one toy
  <toy>-<method>-seed<k>/   each train.py run (checkpoint, samples, loss curves)
Default: toys 8gaussians and grid25; twinflow-tutorial, rcgm and flow-matching; 2 seeds of 1,000
steps; one thread: 4.0 min wall on a 2-core CPU (measured with one other script on the second
core). Time convention: see twinflow_min/transport.py.

    python toy/mode_coverage.py
    python toy/mode_coverage.py --toys grid25 --steps 3000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toy.companion import (  # noqa: E402
    DATA_ROW,
    DATA_SEED_OFFSET,
    METHODS,
    QUICK_FLAGS,
    ToyParser,
    fresh_folder,
    markdown_table,
    mean_spread,
    positive_int,
    refuse_extra,
    refuse_repeats,
    run,
    script_settings,
    seed_value,
    stack_rows,
    torch_threads,
    wall_time,
)
from twinflow_min.checkpoint import load_pretrained  # noqa: E402
from twinflow_min.data import MODE_TOYS, sample_toy, toy_mode_centres, toy_mode_std  # noqa: E402
from twinflow_min.evaluate import TOY_EVAL_SEED, generate  # noqa: E402
from twinflow_min.metrics import energy_distance  # noqa: E402
from twinflow_min.plots import scatter_png  # noqa: E402

SCRIPT = "mode_coverage.py"
RADIUS = 3.0  # a sample belongs to a mode within this many sd of its centre
HIT_FRACTION = 0.2  # a mode is hit when it holds >= this fraction of its uniform share N / K
DEFAULT_METHODS = ("twinflow-tutorial", "rcgm", "flow-matching")
DEFAULT_STEPS, QUICK_STEPS = 1000, 3


def mode_statistics(samples: Tensor, centres: Tensor, sd) -> dict:
    """Mode coverage of samples (N, 2) for K equally likely modes: centres (K, 2), sd (sd_x, sd_y).

    Returns {"hit": modes hit, "modes": K, "mass_tv": 1/2 sum_k |m_k - 1/K|, "off_mode": share of
    the samples beyond RADIUS sd of every centre, "mass": m (K,) float64}, as defined in the module
    docstring. Non-finite samples count as off-mode and belong to no mode.
    """
    samples, centres = samples.double(), centres.double()
    assert samples.ndim == 2 and samples.shape[1] == 2 and centres.shape[1:] == (2,)
    num, modes = samples.shape[0], centres.shape[0]
    finite = torch.isfinite(samples).all(1)  # (N,)
    scaled = (samples[finite, None, :] - centres[None]) / torch.tensor(sd, dtype=torch.float64)
    distance = scaled.norm(dim=-1)  # (N_finite, K), in sd units
    nearest, near = distance.argmin(1), distance.min(1).values <= RADIUS  # (N_finite,) each
    mass = torch.bincount(nearest, minlength=modes).double() / num  # (K,)
    close = torch.bincount(nearest[near], minlength=modes)  # (K,) samples within RADIUS sd
    return {"hit": int((close >= HIT_FRACTION * num / modes).sum()), "modes": modes,
            "mass_tv": 0.5 * float((mass - 1 / modes).abs().sum()),
            "off_mode": 1 - float(near.sum()) / num, "mass": mass}


def parse_args(argv):
    parser = ToyParser(SCRIPT, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toys", nargs="+", choices=MODE_TOYS, default=list(MODE_TOYS),
                        help="many-mode toys (default: both)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                        default=list(DEFAULT_METHODS),
                        help=f"methods (default {' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help=f"training steps per run (default {DEFAULT_STEPS}; "
                             f"{QUICK_STEPS} with --quick)")
    parser.add_argument("--seeds", type=seed_value, nargs="+", default=None,
                        help="training seeds (default 0 1; 0 with --quick)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 3 steps, one seed, 200 evaluation samples")
    parser.add_argument("--out", default="outputs/mode-coverage", help="a new output folder")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further train.py flags given to every run")
    args = parser.parse_args(argv)
    args.steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1])
    refuse_repeats(parser, toys=args.toys, seeds=args.seeds, methods=args.methods)
    methods = {f"method {method}": METHODS[method] for method in args.methods}
    settings = script_settings(methods, "choose the methods with --methods", dataset="use --toys")
    refuse_extra(SCRIPT, args.extra, settings)
    return args


@torch.no_grad()
def one_step_samples(run_dir: str, num: int) -> Tensor:
    """num 1-NFE samples (num, 2) of a run's sampled (EMA) model, from the evaluation's noise."""
    model, _ = load_pretrained(Path(run_dir) / "checkpoint.safetensors")
    z = torch.randn(num, 2, generator=torch.Generator().manual_seed(TOY_EVAL_SEED))
    return generate(model, z, 1, generator=torch.Generator().manual_seed(TOY_EVAL_SEED + 2)).float()


def _cells(stats: list[dict]) -> list[str]:
    """Table cells: the modes hit of every seed ("8, 7 of 8"), then mean ± sd of the rest."""
    return [f"{', '.join(str(s['hit']) for s in stats)} of {stats[0]['modes']}",
            mean_spread(s["mass_tv"] for s in stats), mean_spread(s["off_mode"] for s in stats),
            mean_spread(s["ed"] for s in stats)]


def main(argv: list[str] | None = None) -> dict:
    """Train, sample at 1 NFE and score every (toy, method, seed); {(toy, method): [stats]}."""
    args = parse_args(argv)
    out = fresh_folder(SCRIPT, args.out)
    extra = [*(QUICK_FLAGS if args.quick else []), *args.extra]
    results: dict[tuple[str, str], list[dict]] = {}
    first: dict[tuple[str, str], Tensor] = {}  # the first seed's samples, for the figure
    tic = time.time()
    with torch_threads(args.threads):
        for toy in args.toys:
            centres, sd = toy_mode_centres(toy), toy_mode_std(toy)
            for seed in args.seeds:
                for method in args.methods:
                    summary = run(toy, METHODS[method], seed=seed, steps=args.steps, out=out,
                                  name=f"{toy}-{method}-seed{seed}", extra=extra)
                    samples = one_step_samples(summary["run_dir"], summary["num_samples"])
                    stats = {**mode_statistics(samples, centres, sd),
                             "ed": summary["energy_distance_nfe1"]}
                    results.setdefault((toy, method), []).append(stats)
                    first.setdefault((toy, method), samples)
                    print(f"{toy:10s} {method:18s} seed {seed}: {stats['hit']} of "
                          f"{stats['modes']} modes hit, mass error {stats['mass_tv']:.4f}, "
                          f"off-mode {stats['off_mode']:.4f}, 1-NFE ED {stats['ed']:.4f}  "
                          f"({summary['seconds']:.0f} s)", flush=True)
            num = summary["num_samples"]
            reference = sample_toy(toy, num, torch.Generator().manual_seed(TOY_EVAL_SEED + 1))
            for seed in args.seeds:  # the floor: fresh data scored like samples
                data = sample_toy(toy, num, torch.Generator().manual_seed(DATA_SEED_OFFSET + seed))
                results.setdefault((toy, DATA_ROW), []).append(
                    {**mode_statistics(data, centres, sd), "ed": energy_distance(data, reference)})
    seconds = time.time() - tic

    rows = []
    for toy in args.toys:
        reference = sample_toy(toy, num, torch.Generator().manual_seed(TOY_EVAL_SEED + 1))
        panels = [(f"{method}: {results[toy, method][0]['hit']} of "
                   f"{results[toy, method][0]['modes']} hit",
                   {"data": reference, "1 NFE": first[toy, method],
                    "modes": toy_mode_centres(toy)}) for method in args.methods]
        path = scatter_png(out / f"mode_coverage_{toy}.png", panels, limits=(-2.5, 2.5), size=420,
                           title=f"{toy}: 1-NFE samples (seed {args.seeds[0]}) over the data")
        rows.append(Image.open(path).convert("RGB"))
    figure_path = stack_rows(rows, list(args.toys), out / "mode_coverage.png", label_width=100)
    header = ["toy", "method", "modes hit", "mass error (TV)", "off-mode share", "1-NFE ED"]
    table = [[toy, method, *_cells(results[toy, method])]
             for toy in args.toys for method in [*args.methods, DATA_ROW]]
    every = [[toy, method, str(seed), f"{s['hit']} of {s['modes']}", f"{s['mass_tv']:.4f}",
              f"{s['off_mode']:.4f}", f"{s['ed']:.4f}"]
             for toy in args.toys for method in args.methods
             for seed, s in zip(args.seeds, results[toy, method])]
    seeds = ", ".join(map(str, args.seeds))
    batch = summary["batch_size"]  # the last run's; all runs share it
    text = "\n".join([
        f"1-NFE mode coverage ({num:,} samples; modes hit per seed, mean ± sd of the rest over "
        f"{len(args.seeds)} training seed(s) ({seeds}); {args.steps:,} steps of batch {batch} "
        f"per run). "
        f"A mode is hit when >= {HIT_FRACTION:.0%} of its uniform share N/K of the samples lie "
        f"within {RADIUS:g} sd of its centre; mass error = 1/2 sum_k |m_k - 1/K| over the "
        f"nearest-centre shares m_k; off-mode = share beyond {RADIUS:g} sd of every centre. "
        f"Wall time {wall_time(seconds)} in all, {args.threads} thread(s).", "",
        markdown_table(header, table), "", "Every run:", "",
        markdown_table(["toy", "method", "seed", *header[2:]], every)])
    (out / "mode_coverage.md").write_text(text + "\n")
    print(text)
    print(f"wrote {figure_path} and {out / 'mode_coverage.md'}")
    return results


if __name__ == "__main__":
    main()

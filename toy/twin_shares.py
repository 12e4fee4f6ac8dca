"""Paper companion: how much of the batch should train the twin trajectory? Sweep the adv share.

TwinFlow (arXiv:2512.05150), Sec. 4 ablation: the paper varies the fraction of each batch spent on
the twin-trajectory terms and reports about one third as best. Here that fraction is the option
--twin-shares, mapped onto the large recipe's row groups (docs/math.md#large-recipe) as

    share s  ->  twinflow_group_proportions = [(1 - s) / 3, (1 - s) / 3, (1 - s) / 3, s]
                                               e2e          mul          any          adv

i.e. s of the batch are adv rows (L_adv on the fake, negative-time branch) and the rest is split
evenly over the e2e (one-step rows, which also carry L_rectify), mul and any rows. s = 0.25 is the
recipe's default equal split. s = 0 drops the adv rows and turns the adversarial branch off
(twinflow_adversarial_enabled false, so no L_rectify either: without adv rows the fake branch is
never trained). Rows are allotted by `twinflow_large.partition_batch` (largest remainder), e.g.
batch 96 at s = 1/3 gives 22 / 21 / 21 / 32 rows.

Every run: the toy preset with --twinflow_recipe large (l2 loss, no time weight), the same steps and
seeds. Writes, under --out (a new folder):
  twin_shares_<toy>.md    energy distance (mean ± sd over the seeds) per share at 1/2/4 NFE and a
                          50-step ODE, then every run
  twin_shares_<toy>.png   those means against the share, one line per sampler
  <toy>-share<s>-seed<k>/   each train.py run, s with 3 decimals (checkpoint, samples, curves)
Default: 6 shares x 2 seeds x 1,000 steps, one thread: 4.4 min wall on a 2-core CPU (measured with
one other script on the second core).
Time convention: see twinflow_min/transport.py.

    python toy/twin_shares.py                        # moons, shares 0 0.1 0.25 1/3 0.5 0.75
    python toy/twin_shares.py --twin-shares 0.2 1/3 0.4 --seeds 0 1 2   # decimals or p/q
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toy.companion import (  # noqa: E402
    COLUMNS,
    DATA_ROW,
    QUICK_FLAGS,
    ToyParser,
    data_floor,
    fresh_folder,
    markdown_table,
    mean_spread,
    positive_int,
    refuse_extra,
    refuse_repeats,
    run,
    script_settings,
    seed_value,
    share_value,
    torch_threads,
    wall_time,
)
from twinflow_min.data import TOY_DATASETS  # noqa: E402
from twinflow_min.plots import line_plot_png  # noqa: E402

SCRIPT = "twin_shares.py"
DEFAULT_SHARES, QUICK_SHARES = (0.0, 0.1, 0.25, 1 / 3, 0.5, 0.75), (0.0, 1 / 3)
DEFAULT_STEPS, QUICK_STEPS = 1000, 3


def group_proportions(share: float) -> list[float]:
    """[e2e, mul, any, adv] proportions of the large recipe for an adv share in [0, 1)."""
    rest = (1.0 - share) / 3
    return [rest, rest, rest, share]


def share_flags(share: float) -> list[str]:
    """train.py flags of one sweep point (the mapping of the module docstring)."""
    proportions = ",".join(repr(p) for p in group_proportions(share))  # exact: JSON floats
    flags = ["--twinflow_recipe", "large", "--twinflow_group_proportions", proportions]
    return flags + (["--twinflow_adversarial_enabled", "false"] if share == 0 else [])


def parse_args(argv):
    parser = ToyParser(SCRIPT, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--twin-shares", type=share_value, nargs="+", default=None,
                        help="adv shares of the batch, each in [0, 1), decimals or fractions "
                             "p/q (default 0 0.1 0.25 1/3 0.5 0.75)")
    parser.add_argument("--toy", default="moons", choices=TOY_DATASETS)
    parser.add_argument("--steps", type=positive_int, default=None,
                        help=f"training steps per run (default {DEFAULT_STEPS}; "
                             f"{QUICK_STEPS} with --quick)")
    parser.add_argument("--seeds", type=seed_value, nargs="+", default=None,
                        help="training seeds (default 0 1; 0 with --quick)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: shares 0 and 1/3, 3 steps, one seed, 200 eval samples")
    parser.add_argument("--out", default="outputs/twin-shares", help="a new output folder")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further train.py flags given to every run")
    args = parser.parse_args(argv)
    args.twin_shares = sorted(args.twin_shares or (QUICK_SHARES if args.quick else DEFAULT_SHARES))
    args.steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1])
    refuse_repeats(parser, twin_shares=args.twin_shares, seeds=args.seeds)
    # share 0's flags hold every key any share sets
    settings = script_settings({"the adv share": share_flags(0.0)},
                               "use --twin-shares (share 0 turns the adversarial branch off)")
    refuse_extra(SCRIPT, args.extra, settings)
    return args


def main(argv: list[str] | None = None) -> dict:
    """Train the large recipe at every share and seed, write table and figure; {share: [runs]}."""
    args = parse_args(argv)
    out = fresh_folder(SCRIPT, args.out)
    extra = [*(QUICK_FLAGS if args.quick else []), *args.extra]
    results: dict[float, list[dict]] = {share: [] for share in args.twin_shares}
    tic = time.time()
    with torch_threads(args.threads):
        for seed in args.seeds:
            for share in args.twin_shares:
                summary = run(args.toy, share_flags(share), seed=seed, steps=args.steps, out=out,
                              name=f"{args.toy}-share{share:.3f}-seed{seed}", extra=extra)
                results[share].append(summary)
                print(f"share {share:.3f} seed {seed}: "
                      + "  ".join(f"{c} {summary[k]:.4f}" for c, k in COLUMNS)
                      + f"  ({summary['seconds']:.0f} s)", flush=True)
        num = results[args.twin_shares[0]][0]["num_samples"]
        floor = data_floor(args.toy, num, args.seeds)
    seconds = time.time() - tic

    shares = args.twin_shares
    series = {c: (shares, [statistics.fmean(s[k] for s in results[share]) for share in shares])
              for c, k in COLUMNS}
    series[DATA_ROW] = (shares, [statistics.fmean(floor)] * len(shares))
    figure_path = line_plot_png(out / f"twin_shares_{args.toy}.png", series, log_y=True,
                                title=f"{args.toy}: energy distance vs adv share (large recipe)",
                                xlabel="share of the batch in the adv (twin-trajectory) group",
                                ylabel="energy distance (log10)")
    header = ["adv share", "e2e / mul / any / adv", *(c for c, _ in COLUMNS)]
    table = [[f"{share:.3f}", " / ".join(f"{p:.3f}" for p in group_proportions(share)),
              *(mean_spread(s[k] for s in results[share]) for _, k in COLUMNS)]
             for share in shares]
    table.append([DATA_ROW, "-", *[mean_spread(floor)] * len(COLUMNS)])
    every = [[f"{share:.3f}", str(seed), *(f"{s[k]:.4f}" for _, k in COLUMNS)]
             for share in shares for seed, s in zip(args.seeds, results[share])]
    seeds = ", ".join(map(str, args.seeds))
    batch = summary["batch_size"]  # the last run's; all runs share it
    text = "\n".join([
        f"Large recipe on `{args.toy}`, energy distance to fresh data ({num:,} samples, lower is "
        f"better): mean ± sd over {len(args.seeds)} training seed(s) ({seeds}); {args.steps:,} "
        f"steps of batch {batch} per run. Share 0 = adversarial branch off. Wall time "
        f"{wall_time(seconds)} in all, {args.threads} thread(s).", "",
        markdown_table(header, table), "", "Every run:", "",
        markdown_table(["adv share", "seed", *(c for c, _ in COLUMNS)], every)])
    (out / f"twin_shares_{args.toy}.md").write_text(text + "\n")
    print(text)
    print(f"wrote {figure_path} and {out / f'twin_shares_{args.toy}.md'}")
    return results


if __name__ == "__main__":
    main()

"""Paper companion: the real and the fake ("twin") trajectories of one trained TwinFlow network.

TwinFlow (arXiv:2512.05150), Sec. 3.1: one network F(x_t, t, t_tgt) holds two flows. At positive
time it carries noise to the data (the real trajectory); at negative time it carries the same noise
to its own one-step samples (the fake trajectory, trained by L_adv on x_fake = z - F(z, 1, 0)).
This script integrates both ODEs from the same noise with the instantaneous velocity (t_tgt = t):
    real:  x <- x - (t - t') F(x,  t,  t)      t = 1 -> 0
    fake:  x <- x - (t - t') F(x, -t, -t)      (same grid, the network sees negative time)
and draws the paths, the real endpoints against the data, and the fake endpoints against the model's
one-step samples z - F(z, 1, 0). Output: trajectories_paths.png and trajectories_ends.png in the run
folder (or --out), never over earlier ones unless --overwrite. The reference data is the run's own
toy (from its checkpoint.json), or --toy. A run that never trained the network at negative time
(only L_adv does: twinflow_enabled or twinflow_adversarial_enabled false, adversarial weight 0, or
no adv rows) gets a note on stderr: its fake paths are those of an untrained F(x, -t, -t).

Time convention: see twinflow_min/transport.py.

    python train.py --toy moons && python toy/trajectories.py outputs/toy-moons
    python toy/trajectories.py outputs/toy-moons --steps 200 --out outputs/paths-200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toy.companion import ToyParser, fail, positive_int, seed_value  # noqa: E402
from twinflow_min.checkpoint import load_pretrained  # noqa: E402
from twinflow_min.checks import CheckpointError  # noqa: E402
from twinflow_min.data import TOY_DATASETS, sample_toy  # noqa: E402
from twinflow_min.plots import scatter_png, trajectories_png  # noqa: E402
from twinflow_min.run_dir import training_config  # noqa: E402
from twinflow_min.transport import invert  # noqa: E402

SCRIPT = "trajectories.py"
OUTPUTS = ("trajectories_paths.png", "trajectories_ends.png")


@torch.no_grad()
def integrate(model, z: torch.Tensor, steps: int, sign: float) -> torch.Tensor:
    """Euler path (steps + 1, N, 2) of dx/dt = F(x, sign*t, sign*t) from t = 1 to t = 0."""
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    x, path = z.double(), [z.double()]
    for t_cur, t_next in zip(grid[:-1], grid[1:]):
        t = torch.full((z.shape[0],), sign * float(t_cur), dtype=z.dtype)
        x = x - (t_cur - t_next) * model(x.to(z.dtype), t, t, None).double()  # (N, 2)
        path.append(x)
    return torch.stack(path)


def untrained_fake_branch(checkpoint: Path) -> str | None:
    """Why the run that wrote `checkpoint` never trained F(x, -t, -t), read from the
    checkpoint.json next to it: only L_adv trains the network at negative time
    (docs/math.md#adversarial-loss), so "twinflow_enabled false", "twinflow_adversarial_enabled
    false", "twinflow_adversarial_weight 0" or "no adv rows" (large recipe). None when it did, or
    when that file is missing or unreadable (nothing to say then)."""
    config = training_config(checkpoint)
    for key in ("twinflow_enabled", "twinflow_adversarial_enabled"):
        if config.get(key) is False:
            return f"{key} false"
    if config.get("twinflow_adversarial_weight") == 0:
        return "twinflow_adversarial_weight 0"
    large = config.get("twinflow_recipe") == "large"
    if large and config.get("twinflow_group_proportions", [1] * 4)[3] == 0:
        return "no adv rows in twinflow_group_proportions"
    return None


def main(argv: list[str] | None = None) -> Path:
    parser = ToyParser(SCRIPT, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a toy run folder (or its checkpoint.safetensors)")
    parser.add_argument("--num", type=positive_int, default=300, help="paths drawn (default 300)")
    parser.add_argument("--steps", type=positive_int, default=50,
                        help="Euler steps per path (default 50)")
    parser.add_argument("--seed", type=seed_value, default=0)
    parser.add_argument("--toy", default=None, choices=TOY_DATASETS,
                        help="dataset drawn for reference (default: the run's own toy)")
    parser.add_argument("--out", default=None,
                        help="folder for the two PNGs (default: the run folder)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace trajectories PNGs already in that folder")
    args = parser.parse_args(argv)
    run = Path(args.run)
    checkpoint = run / "checkpoint.safetensors" if run.is_dir() else run
    try:
        model, _ = load_pretrained(checkpoint)
    except (CheckpointError, OSError) as error:
        fail(SCRIPT, str(error))
    model.eval()
    if not model.config.data_dim:
        fail(SCRIPT, f"{checkpoint} is not a 2-D toy model; give a run of train.py --toy NAME")
    toy = args.toy or training_config(checkpoint).get("dataset", "").removeprefix("toy:")
    if toy not in TOY_DATASETS:
        fail(SCRIPT, f"{checkpoint} does not say which toy it was trained on; add --toy NAME")
    out_dir = Path(args.out) if args.out else checkpoint.parent
    if out_dir.exists() and not out_dir.is_dir():
        fail(SCRIPT, f"--out {out_dir} is a file; give a folder")
    taken = [name for name in OUTPUTS if (out_dir / name).exists()]
    if taken and not args.overwrite:
        fail(SCRIPT, f"{out_dir} already holds {', '.join(taken)}; pass --overwrite or choose "
                     f"another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    untrained = untrained_fake_branch(checkpoint)
    if untrained:
        print(f"toy/{SCRIPT}: note: this run never trained the fake branch ({untrained}); its "
              f"fake paths show an untrained F(x, -t, -t)", file=sys.stderr)
    z = torch.randn(args.num, 2, generator=torch.Generator().manual_seed(args.seed))
    real, fake = integrate(model, z, args.steps, 1.0), integrate(model, z, args.steps, -1.0)
    ones = torch.ones(args.num)
    with torch.no_grad():
        # x_fake = z - F(z, 1, 0)
        one_step = invert(z, model(z, ones, torch.zeros_like(ones), None), ones)[0]
    paths = trajectories_png(out_dir / OUTPUTS[0],
                             [("real branch: F(x, t, t), t > 0", real.numpy()),
                              ("fake branch: F(x, -t, -t), t < 0", fake.numpy())],
                             title="the two trajectories of one network, from the same noise",
                             limits=(-3, 3))
    data = sample_toy(toy, 2000, torch.Generator().manual_seed(1))
    panels = [(f"real ODE ends vs {toy} data", {"data": data, "real ends": real[-1].float()}),
              ("fake ODE ends vs one-step samples", {"one-step z - F(z,1,0)": one_step,
                                                     "fake ends": fake[-1].float()})]
    ends = scatter_png(out_dir / OUTPUTS[1], panels, title="where each branch lands")
    gap_real = (real[-1].float() - one_step).pow(2).sum(1).mean().item()
    gap_fake = (fake[-1].float() - one_step).pow(2).sum(1).mean().item()
    print(f"mean squared distance to the one-step samples: real-ODE ends {gap_real:.4f}, "
          f"fake-ODE ends {gap_fake:.4f}")
    print(f"wrote {paths} and {ends}")
    return paths


if __name__ == "__main__":
    main()

"""Run the filter on a simulated robot and write an animated GIF (and optionally a PNG per frame).

    python -m modelkernels.kernels.amcl.demo --out run.gif                 # tracking on a generated floor
    python -m modelkernels.kernels.amcl.demo --out run.gif --global        # global localization
    python -m modelkernels.kernels.amcl.demo --map my_map.yaml --out run.gif --steps 300 --particles 5000

Prints the tracking error and the time per filter update at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from modelkernels.kernels.amcl.draw import render, save_gif
from modelkernels.kernels.amcl.filter import ParticleFilter
from modelkernels.kernels.amcl.map_io import load_map
from modelkernels.kernels.amcl.simulator import generate_map, simulate
from modelkernels.kernels.progress import progress_bar


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m modelkernels.kernels.amcl.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="amcl_run.gif", help="GIF to write (default amcl_run.gif)")
    ap.add_argument("--map", help="ROS map YAML (default: a generated floor plan)")
    ap.add_argument("--steps", type=int, default=200, help="simulation steps of 0.1 s (default 200)")
    ap.add_argument("--every", type=int, default=2, help="draw every n-th step (default 2)")
    ap.add_argument("--particles", type=int, default=2000, help="max_particles (default 2000)")
    ap.add_argument("--global", dest="global_loc", action="store_true", help="start from global localization")
    ap.add_argument("--model", default="likelihood_field",
                    choices=["likelihood_field", "likelihood_field_prob", "beam"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=int, default=2, help="pixels per map cell (default 2)")
    ap.add_argument("--png-dir", help="also write each drawn frame as a PNG here")
    ap.add_argument("--no-crop", action="store_true", help="draw the whole map, not just its known part")
    ap.add_argument("--backend", help="force a backend for every op (numba, reference)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (tqdm)")
    args = ap.parse_args(argv)

    occupancy_map = load_map(args.map) if args.map else generate_map(args.seed)
    run = simulate(occupancy_map, args.steps, seed=args.seed)
    params = dict(max_particles=args.particles, min_particles=min(500, args.particles), random_seed=args.seed,
                  laser_model_type=args.model)
    if args.global_loc:
        params.update(recovery_alpha_slow=0.001, recovery_alpha_fast=0.1,
                      max_particles=max(args.particles, 20000), update_min_d=0.1, update_min_a=0.1)
    pf = ParticleFilter(occupancy_map, backend=args.backend, **params)
    if args.global_loc:
        pf.global_localization()
    else:
        pf.initialize(run.truth[0], (0.05, 0.05, 0.02))
    frames, errors, spent = [], [], 0.0
    png_dir = Path(args.png_dir) if args.png_dir else None
    if png_dir:
        png_dir.mkdir(parents=True, exist_ok=True)
    bar = progress_bar(len(run), "tracking" if not args.global_loc else "global localization", not args.no_progress)
    for k in range(len(run)):
        bar.update(1)
        t0 = time.perf_counter()
        pf.update(run.odometry[k], run.scans[k])
        spent += time.perf_counter() - t0
        pose = pf.pose_at(run.odometry[k])
        errors.append(float(np.hypot(*(pose[:2] - run.truth[k, :2]))))
        if k % args.every == 0 or k == len(run) - 1:
            img = render(pf, scan=run.scans[k], truth=run.truth[k], pose=pose, scale=args.scale,
                         title=f"step {k}  particles {len(pf.poses)}  error {errors[-1]:.2f} m",
                         crop=not args.no_crop)
            frames.append(img)
            if png_dir:
                img.save(png_dir / f"frame_{k:04d}.png")
    bar.close()
    save_gif(args.out, frames)
    print(f"wrote {args.out}: {len(frames)} frames; position error median {np.median(errors):.3f} m, "
          f"last {errors[-1]:.3f} m; {pf.updates} filter updates, {1e3 * spent / max(1, pf.updates):.1f} ms each")
    return 0


if __name__ == "__main__":
    sys.exit(main())

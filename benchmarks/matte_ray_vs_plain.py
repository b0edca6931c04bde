"""``mopt matte`` against ``mopt matte --ray`` (a local Ray instance) on the same folder of JPEGs, one machine.

Generates the images when the folder is empty (synthetic composites at the given size, each file shifted so no
two are alike), runs the plain library call and the Ray one with the backend ``mopt matte`` chooses for the
ONNX, and reports for each: images/s over the whole run, the steady rate (images written between the first
tenth and the end, over the time between), and for Ray its start-up (start the instance, choose the backend
on a worker). The outputs of the two runs are compared byte for byte.

    .venv/bin/mopt export checkpoints/cvunet.pth -o engines/cvunet.onnx
    .venv/bin/python benchmarks/matte_ray_vs_plain.py --onnx engines/cvunet.onnx --count 500 --size 1024 \\
        --images /tmp/jpegs --json ray_vs_plain.json
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optimize.backends import ModelSources  # noqa: E402
from optimize.bench import machine_info  # noqa: E402
from optimize.fileio import write_json  # noqa: E402
from optimize.matte import mattes_from_images, select_backend  # noqa: E402
from optimize.matte_ray import backend_loader, backend_on_cluster, mattes_from_images_on_ray, ray_cluster  # noqa: E402
from optimize.synthetic import synthetic_sample  # noqa: E402

DISTINCT = 20  # composites rendered (about 1.6 s each at 1024 px); the files are shifted copies of them


def make_images(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    bases = [synthetic_sample(i, size, size, seed=11)[0] for i in range(min(DISTINCT, count))]
    for index in range(count):
        rgb = np.roll(bases[index % len(bases)], shift=(index // len(bases)) * 7, axis=1)
        Image.fromarray(rgb).save(folder / f"{index:04d}.jpg", quality=92)


class Clock:
    """Timestamps of the "matte" progress calls: the steady rate leaves out the start (model loading, workers)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase == "matte" and done:
            self.marks.append((time.perf_counter(), done))

    def steady(self) -> float:
        if len(self.marks) < 2:
            return float("nan")
        last_t, last_n = self.marks[-1]
        first_t, first_n = next((t, n) for t, n in self.marks if n >= last_n / 10)
        return (last_n - first_n) / (last_t - first_t) if last_t > first_t else float("nan")


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=Path("/tmp/mopt-ray-bench/jpegs"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/mopt-ray-bench/out"))
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads for both (default: each one's own)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not any(args.images.glob("*.jpg")):
        began = time.perf_counter()
        make_images(args.images, args.count, args.size)
        print(f"generated {args.count} JPEGs of {args.size}x{args.size} in {time.perf_counter() - began:.0f} s")
    shutil.rmtree(args.out, ignore_errors=True)
    results: dict[str, dict] = {"load_before": os.getloadavg()}
    sources = ModelSources(onnx=[args.onnx], threads=args.threads)

    choice = select_backend(sources)
    clock = Clock()
    with choice.backend:
        report = mattes_from_images([args.images], args.out / "plain", backend=choice.backend,
                                    normalization=choice.normalization, progress=clock)  # fmt: skip
    results["plain"] = {"report": report.to_dict(), "steady_images_per_s": clock.steady()}
    print(f"plain: {report.processed} in {report.wall_s:.1f} s, {report.images_per_s:.2f} images/s, "
          f"steady {clock.steady():.2f} images/s ({report.backend})")  # fmt: skip

    clock = Clock()
    load = backend_loader(sources)
    with ray_cluster() as cluster:
        ray_choice = backend_on_cluster(cluster, load)
        ray_report = mattes_from_images_on_ray([args.images], args.out / "ray", cluster=cluster, load=load,
                                               choice=ray_choice, progress=clock)  # fmt: skip
    results["ray"] = {"report": ray_report.to_dict(), "steady_images_per_s": clock.steady(),
                      "ray_start_s": cluster.startup_s, "backend_choice_s": cluster.backend_s}  # fmt: skip
    print(f"ray:   {ray_report.processed} in {ray_report.wall_s:.1f} s, {ray_report.images_per_s:.2f} images/s, "
          f"steady {clock.steady():.2f} images/s; Ray started in {cluster.startup_s:.1f} s, backend chosen on a "
          f"worker in {cluster.backend_s:.1f} s ({ray_report.actors} actor(s) of {ray_report.actor_cpus:g} CPU)")
    results["identical_outputs"] = digest(args.out / "plain") == digest(args.out / "ray")
    results["load_after"] = os.getloadavg()
    results["machine"] = machine_info()
    ratio = results["ray"]["steady_images_per_s"] / results["plain"]["steady_images_per_s"]
    print(f"steady ratio ray/plain {ratio:.2f}; outputs identical: {results['identical_outputs']}; "
          f"load average before {results['load_before'][0]:.1f}, after {results['load_after'][0]:.1f}")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

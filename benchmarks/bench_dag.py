"""Benchmark: DAG build + dry run time of the workflow (``snakemake -n``).

Two studies:

* ``paper``: ``configs/paper.yaml`` as shipped (3 hub models, 5 adapters each, 12 checkpoints,
  the sweeps of Tables 3-4, a per-(layer, role) sweep and the boundary search);
* ``synthetic``: a generated grid of tiny models (their shape is known from the config, so
  every ablation spec is checked at DAG-build time, as for a real study) x ranks x
  checkpoint steps x sweeps, one of them ``each_layer_role`` (one ablation per layer and
  role); sized to at least ``--min-jobs`` jobs (default 10,000).

Each is timed as the user runs it: ``snakemake -n --quiet rules`` in a fresh, empty working
directory (nothing exists, so every job is planned), wall time of the whole command (Python
start-up, parsing the Snakefile, loading and checking the study, building the DAG, the dry
run); best and median of ``--repeats`` runs, and the median CPU time (user + system) of the
process, which other load on the machine changes less than the wall time. ``--profile`` also
runs each once under cProfile and prints the top functions by cumulative time
(``--profile-filter``: a regular expression on their file paths; by default lorascope's
modules and the workflow's rule files).

    python benchmarks/bench_dag.py                    # both studies, 3 repeats each
    python benchmarks/bench_dag.py --study synthetic --profile
    python benchmarks/bench_dag.py --models 80 --min-jobs 20000
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_dag")

ARCHITECTURES = ("llama", "mistral", "gpt_neox")


def synthetic_study(models: int, layers: int = 24) -> dict[str, Any]:
    """A study of ``models`` tiny models x 5 ranks x 10 checkpoints x 3 sweeps on the
    embedded data (about 167 jobs per model)."""
    return {
        "study": "synthetic",
        "seed": 1,
        "data": {
            "train": {"source": "embedded", "dataset": "dl21", "group_size": 8},
            "splits": {
                "validation": {"source": "embedded", "dataset": "dl21", "queries": 12, "depth": 10},
                "dl19": {"source": "embedded", "dataset": "dl19", "depth": 20},
                "dl20": {"source": "embedded", "dataset": "dl20", "depth": 20},
            },
        },
        "evaluation": {"splits": ["validation", "dl19"]},
        "models": {
            f"m{i:03d}": {
                "mechanics_only": True,
                "tiny": {
                    "architecture": ARCHITECTURES[i % len(ARCHITECTURES)],
                    "layers": layers,
                    "width": 64,
                    "heads": 4,
                },
            }
            for i in range(models)
        },
        "training": {
            "adapters": [{"targets": "all", "ranks": [1, 2, 4, 8, 16]}],
            "steps": [10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
            "queries_per_step": 4,
            "micro_batch_queries": 4,
        },
        "sweeps": {
            "components": {
                "splits": ["dl19", "dl20"],
                "ablations": {
                    "no_lora": {"drop": "all"},
                    "mlp_only": {"keep": {"component": "mlp"}},
                    "mha_only": {"keep": {"component": "attn"}},
                },
            },
            "per_layer_role": {"splits": ["validation"], "generate": "each_layer_role"},
            "boundary": {"adapters": ["r8-all"], "splits": ["validation"], "generate": "boundary"},
        },
    }


def jobs_per_model() -> int:
    """Jobs one synthetic model adds: base, 5 trainings, 50 extractions, 100 checkpoint
    evaluations (2 splits), 10 components + 5 per-layer-role + 1 boundary evaluations."""
    return 1 + 5 + 50 + 100 + 10 + 5 + 1


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dry_run(config: Path, workdir: Path, profile: Path | None = None) -> tuple[float, float, int]:
    """Wall and CPU seconds of one ``snakemake -n --quiet rules``, and its job count."""
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    cmd = [snakemake]
    if profile is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), snakemake]
    cmd += [
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "-n",
        "--quiet",
        "rules",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-4000:]}")
    found = re.search(r"^total\s+(\d+)$", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no job count in the dry run's output:\n{text[-2000:]}")
    return seconds, cpu, int(found.group(1))


def top_functions(profile: Path, needle: str, limit: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(profile), stream=out)
    stats.sort_stats("cumulative").print_stats(needle, limit)
    return out.getvalue()


def bench(name: str, config: Path, repeats: int, profile: bool, needle: str) -> dict[str, Any]:
    times, cpus = [], []
    jobs = 0
    for i in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench_dag-") as tmp:
            seconds, cpu, jobs = dry_run(config, Path(tmp))
        times.append(seconds)
        cpus.append(cpu)
        log.info("%s: run %d: %d jobs in %.2f s (%.2f CPU s)", name, i + 1, jobs, seconds, cpu)
    if profile:
        with tempfile.TemporaryDirectory(prefix="bench_dag-") as tmp:
            prof = Path(tmp) / "dag.prof"
            dry_run(config, Path(tmp) / "work", profile=prof)
            print(f"\n### cProfile of `snakemake -n` for {name} (cumulative, filter {needle!r})\n")
            print(top_functions(prof, needle))
    return {
        "study": name,
        "jobs": jobs,
        "best": min(times),
        "median": statistics.median(times),
        "cpu": statistics.median(cpus),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", choices=["paper", "synthetic", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-jobs", type=int, default=10_000, help="size of the synthetic grid")
    parser.add_argument(
        "--models", type=int, default=None, help="synthetic models (overrides --min-jobs)"
    )
    parser.add_argument("--profile", action="store_true", help="also run each once under cProfile")
    parser.add_argument(
        "--profile-filter",
        default="lorascope|rules|Snakefile",
        help="regex on file paths of the profiled functions to show",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_dag-config-") as tmp:
        if args.study in ("paper", "both"):
            rows.append(
                bench(
                    "configs/paper.yaml",
                    REPO / "configs" / "paper.yaml",
                    args.repeats,
                    args.profile,
                    args.profile_filter,
                )
            )
        if args.study in ("synthetic", "both"):
            models = args.models or -(-max(args.min_jobs - 20, 0) // jobs_per_model())
            config = Path(tmp) / "synthetic.yaml"
            config.write_text(yaml.safe_dump(synthetic_study(models), sort_keys=False))
            rows.append(
                bench(
                    f"synthetic ({models} tiny models)",
                    config,
                    args.repeats,
                    args.profile,
                    args.profile_filter,
                )
            )
    print(f"\nload average before: {load[0]:.2f}, after: {os.getloadavg()[0]:.2f}\n")
    print("| study | jobs | best s | median s | median CPU s | goal |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        goal = 5 if row["study"].startswith("configs/") else 30
        status = "met" if row["median"] <= goal else "NOT met"
        print(
            f"| {row['study']} | {row['jobs']:,} | {row['best']:.2f} | {row['median']:.2f} | "
            f"{row['cpu']:.2f} | <= {goal} s: {status} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

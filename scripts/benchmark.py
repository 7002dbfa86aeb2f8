"""Benchmarks of the Vox2Vox bundle: training throughput, FLOP utilisation, inference, data pipeline, memory.

Prints a table and appends it, with the machine, versions and date, as a new section of docs/benchmarks.md
(earlier sections are never changed). The defaults are the paper's sizes for a GPU; on a CPU pass small ones:

    python scripts/benchmark.py --device cuda                                   # features 64, 128^3, batch 2
    python scripts/benchmark.py --features 8 --patch 64 --batch 2 --inference-spacing 2 --data-spacing 2 \\
        --num-workers 0 --matmul-size 2048                                      # a CPU, in a few minutes

Every measurement runs in a process of its own (``python -m bundle.benchmark``), see ``bundle/benchmark.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import monai  # noqa: E402
import torch  # noqa: E402

from bundle.benchmark import OPTIONS, append_section, machine, report  # noqa: E402
from bundle.demo_data import make_dataset, output_grid  # noqa: E402
from bundle.networks import Vox2VoxDiscriminator, Vox2VoxGenerator  # noqa: E402

DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nSections appended by `scripts/benchmark.py`, newest last.\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--features", type=int, default=64, help="generator features (64: the paper's 150.5 M parameters)")
    p.add_argument("--discriminator-channels", type=int, default=None, help="default: --features")
    p.add_argument("--patch", type=int, default=128, help="training patch edge (a multiple of 16)")
    p.add_argument("--batch", type=int, default=2, help="training batch size")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (compile: the compilation)")
    p.add_argument("--steps", type=int, default=10, help="timed training iterations per repeat")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the interleaved bundle / plain-loop timing")
    p.add_argument("--matmul-size", type=int, default=None, help="matmul edge for the peak rate (GPU 8192, CPU 2048)")
    p.add_argument(
        "--options",
        default=",".join(OPTIONS),
        help=f"comma-separated options to measure, of {','.join(OPTIONS)} ('' for none)",
    )
    p.add_argument(
        "--inference-spacing",
        type=float,
        default=1.0,
        help="mm per voxel of the inference case: 1 is BraTS' 240x240x155, 2 gives 120x120x78",
    )
    p.add_argument("--inference-patch", type=int, default=None, help="sliding-window roi edge (default: --patch)")
    p.add_argument("--inference-repeats", type=int, default=2, help="timed inference runs after the first")
    p.add_argument("--inference-workers", type=int, default=None, help="inference num_workers (default: the config's)")
    p.add_argument("--data-spacing", type=float, default=1.0, help="mm per voxel of the demo training cases")
    p.add_argument("--data-cases", type=int, default=6, help="demo cases (2/3 train, 1/3 validate)")
    p.add_argument("--data-batches", type=int, default=20, help="batches timed from the data pipeline")
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers (default: the config's)")
    p.add_argument("--work-dir", default=None, help="keeps demo data between runs (default: a temporary folder)")
    p.add_argument("--row-timeout", type=int, default=3600, help="seconds before a measurement is abandoned")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="markdown file the section is appended to")
    p.add_argument("--note", default="", help="free text added under the section heading")
    return p.parse_args(argv)


def config_default(key: str) -> object:
    import yaml

    return yaml.safe_load((ROOT / "configs" / "train.yaml").read_text())[key]


def demo_data(folder: Path, num_cases: int, spacing: float) -> Path:
    """Demo cases in ``folder`` (made once, reused by later runs with the same --work-dir)."""
    done = folder / ".complete"
    if not done.exists():
        make_dataset(folder, num_cases=num_cases, seed=0, spacing=spacing, quiet=True)
        done.touch()
    return folder


def run_measurement(name: str, spec: dict, work: Path, timeout: int) -> dict:
    """One measurement in its own process; its error (the last lines it printed) instead of a result if it fails."""
    spec_file, result_file = work / f"{name.replace(':', '_')}.json", work / f"{name.replace(':', '_')}.result.json"
    result_file.unlink(missing_ok=True)
    spec_file.write_text(json.dumps({**spec, "work": str(work), "result_file": str(result_file)}))
    log = work / f"{name.replace(':', '_')}.log"
    start = time.monotonic()
    print(f"benchmark: {name} ...", end=" ", flush=True)
    try:
        with open(log, "w") as out:
            code = subprocess.run([sys.executable, "-m", "bundle.benchmark", str(spec_file)], cwd=ROOT, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"}).returncode  # fmt: skip
    except subprocess.TimeoutExpired:
        print(f"timed out after {timeout} s", flush=True)
        return {"error": f"timed out after {timeout} s"}
    print(f"{time.monotonic() - start:.0f} s", flush=True)
    if code != 0 or not result_file.exists():
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:]
        return {"error": f"exit status {code}: {' '.join(tail)[:200]} (log: {log})"}
    return json.loads(result_file.read_text())


def section(args: argparse.Namespace, settings: dict, table: str, seconds: float, loads: tuple) -> str:
    device = torch.device(args.device)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    g_params = sum(p.numel() for p in Vox2VoxGenerator(features=args.features).parameters())
    d_params = sum(p.numel() for p in Vox2VoxDiscriminator(channels=settings["discriminator_channels"]).parameters())
    argv = shlex.join(["python", "scripts/benchmark.py", *sys.argv[1:]])
    lines = [
        f"## {now}: {device.type.upper()}, {machine(device)}",
        "",
        f"- `{argv}`" + (f" ({args.note})" if args.note else ""),
        f"- torch {torch.__version__}, monai {monai.__version__}, Python {sys.version.split()[0]}"
        + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else "")
        + f"; load average (1 min) {loads[0]:.1f} at the start, {loads[1]:.1f} at the end; took {seconds:.0f} s",
        f"- generator features {args.features} ({g_params / 1e6:.2f} M parameters), discriminator channels "
        f"{settings['discriminator_channels']} ({d_params / 1e6:.2f} M), patch {args.patch}^3, batch {args.batch}; "
        f"{args.steps} timed iterations after {args.warmup} warm-up ones, best of {args.repeats} interleaved repeats "
        f"for row a; inference case {'x'.join(map(str, settings['inference_shape']))} at "
        f"{args.inference_spacing:g} mm; demo training data at {args.data_spacing:g} mm",
        "",
        table,
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark: --device cuda but CUDA is not available")
    options = [o for o in args.options.split(",") if o]
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SystemExit(f"benchmark: unknown --options {unknown}; choose from {list(OPTIONS)}")
    if device.type != "cuda" and "cudnn_benchmark" in options:
        options.remove("cudnn_benchmark")  # cuDNN only
    start, load_start = time.monotonic(), os.getloadavg()[0]
    work_context = tempfile.TemporaryDirectory(prefix="vox2vox-benchmark-") if args.work_dir is None else None
    work = Path(args.work_dir or work_context.name).resolve()  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    print(f"benchmark: working in {work}", flush=True)
    train_data = demo_data(work / f"data_{args.data_cases}x{args.data_spacing:g}mm", args.data_cases, args.data_spacing)
    infer_data = demo_data(work / f"case_{args.inference_spacing:g}mm", 1, args.inference_spacing)
    num_workers = args.num_workers if args.num_workers is not None else config_default("num_workers")
    settings = {
        "device": args.device, "features": args.features, "patch": args.patch, "batch": args.batch,
        "discriminator_channels": args.discriminator_channels or args.features, "warmup": args.warmup,
        "steps": args.steps, "repeats": args.repeats,
        "matmul_size": args.matmul_size or (8192 if device.type == "cuda" else 2048),
        "data_dir": str(train_data), "num_folds": 3, "inference_data_dir": str(infer_data),
        "inference_spacing": args.inference_spacing, "inference_patch": args.inference_patch or args.patch,
        "inference_repeats": args.inference_repeats,
        "inference_workers": args.inference_workers, "inference_shape": list(output_grid(args.inference_spacing)[0]),
        "data_batches": args.data_batches,
    }  # fmt: skip
    results = {"compare": run_measurement("compare", {**settings, "kind": "compare"}, work, args.row_timeout)}
    for option in ("default", *options):
        spec = {**settings, "kind": "option", "option": option}
        results[f"option:{option}"] = run_measurement(f"option:{option}", spec, work, args.row_timeout)
    results["inference"] = run_measurement("inference", {**settings, "kind": "inference"}, work, args.row_timeout)
    data_spec = {**settings, "kind": "data", "num_workers": num_workers}
    results["data"] = run_measurement("data", data_spec, work, args.row_timeout)
    no_cache = {**data_spec, "cache_rate": 0.0}  # the cache's effect: the same pipeline reading every sample anew
    results["data:no_cache"] = run_measurement("data:no_cache", no_cache, work, args.row_timeout)
    if device.type == "cuda":  # the augmentation on the GPU instead of in CPU workers (on a CPU: the same thing)
        gpu_spec = {**settings, "kind": "data", "num_workers": 0, "augment_on_device": True}
        results["data:on_device"] = run_measurement("data:on_device", gpu_spec, work, args.row_timeout)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    loads = (load_start, os.getloadavg()[0])
    text = section(args, settings, report(settings, results), time.monotonic() - start, loads)
    print("\n" + text)
    append_section(Path(args.output), text, HEADER)
    print(f"benchmark: appended to {args.output}")
    if work_context is not None:
        work_context.cleanup()
    return text


if __name__ == "__main__":
    main()

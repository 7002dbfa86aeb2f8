"""Measurements behind ``scripts/benchmark.py``: training throughput, FLOP utilisation, inference, data, memory.

Each measurement runs in a process of its own (``python -m bundle.benchmark SPEC.json``) so that its peak memory
(``resource.getrusage`` on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU) is its own, and a
``torch.compile`` cache or an allocator state never leaks from one row into the next. The bundle's trainer is built
from ``configs/train.yaml`` by ``monai.bundle.ConfigWorkflow`` and run through the ``training`` run id, exactly as
``python -m monai.bundle run training`` runs it; only its data loader is replaced by batches in memory.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
NEVER = 10**9  # an epoch interval never reached: no validation during a timed run

#: the speed and memory options of configs/train.yaml, each measured as one row against the configured default
OPTIONS = ("amp", "compile", "channels_last", "cudnn_benchmark", "activation_checkpointing")
OPTION_TITLES = {
    "default": "configured default",
    "amp": "AMP (bf16 autocast)",
    "compile": "torch.compile (both networks)",
    "channels_last": "channels-last (NDHWC)",
    "cudnn_benchmark": "cudnn.benchmark",
    "activation_checkpointing": "activation checkpointing (generator)",
}


# ---- helpers -------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_bytes() -> int:
    """This process's peak resident set size since :func:`reset_peak_rss` (``ru_maxrss``: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = int(peak if sys.platform == "darwin" else peak * 1024)
    with contextlib.suppress(OSError, ValueError):  # the kernel's own high-water mark, never above ru_maxrss
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = min(peak, int(line.split()[1]) * 1024)
    return peak


def reset_peak_rss() -> bool:
    """Resets the peak RSS to the current RSS (Linux: ``/proc/self/clear_refs``), so that the peak of one phase
    can be read; False where it cannot be reset (the peak is then the whole process's)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def machine(device: torch.device) -> str:
    """CPU model (and GPU name on CUDA), as the section heading of a benchmark run."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cpu = f"{cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB); host {cpu}"
    return cpu


def append_section(output: Path, text: str, header: str) -> None:
    """Appends ``text`` to ``output`` (made with ``header`` if missing); what is there already is left as it was."""
    output.parent.mkdir(parents=True, exist_ok=True)
    if not output.exists():
        output.write_text(header)
    before = output.read_text()
    with open(output, "a") as f:
        f.write(("" if before.endswith("\n\n") else "\n" if before.endswith("\n") else "\n\n") + text)


def compute_dtype(device: torch.device, amp: bool) -> torch.dtype:
    return torch.bfloat16 if amp else torch.float32


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Measured dense matmul rate (FLOP/s) of ``size`` x ``size`` matrices in ``dtype``: the best of ``repeats``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    inner = 10 if device.type == "cuda" else 1
    best = float("inf")
    for i in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        synchronize(device)
        if i:  # the first is a warm-up
            best = min(best, (time.perf_counter() - start) / inner)
    return 2 * size**3 / best


def random_batches(count: int, batch: int, patch: int, classes: int = 4, seed: int = 0) -> list[dict]:
    """Two distinct in-memory batches (image z-scores, label classes), repeated ``count`` times in all."""
    generator = torch.Generator().manual_seed(seed)
    distinct = []
    for _ in range(2):
        label = torch.randint(0, classes, (batch, 1, patch, patch, patch), generator=generator)
        distinct.append({"image": torch.randn(batch, 4, patch, patch, patch, generator=generator), "label": label})
    return [distinct[i % 2] for i in range(count)]


def train_overrides(spec: dict, bundle_root: Path) -> dict[str, Any]:
    """The command-line overrides of configs/train.yaml for a benchmark run of ``spec``."""
    overrides = {
        "bundle_root": str(bundle_root),
        "dataset_dir": spec["data_dir"],
        "num_folds": spec["num_folds"],
        "device": f"$torch.device({spec['device']!r})",
        "features": spec["features"],
        "discriminator_channels": spec["discriminator_channels"],
        "patch_size": [spec["patch"]] * 3,
        "batch_size": spec["batch"],
        "max_epochs": 1,
        "val_interval": NEVER,
        "checkpoint_interval": NEVER,  # no checkpoint at the end of a timed epoch
        "quiet": True,  # no progress bars; the iteration log lines stay, as under CI
        "num_workers": spec.get("num_workers", 0),
        "augment_on_device": spec.get("augment_on_device", False),
    }
    if "cache_rate" in spec:  # row d without the cache: what caching the deterministic preprocessing saves
        overrides["cache_rate"] = spec["cache_rate"]
    option = spec.get("option", "default")
    cuda = spec["device"].startswith("cuda")
    if option == "amp":  # the configured default is bf16 AMP on a GPU and none on the CPU: measure the other one
        if cuda:
            overrides["amp"] = False
        else:
            overrides["train#trainer#amp"] = True  # train.yaml keeps AMP off on the CPU; forced on here
    elif option == "cudnn_benchmark":
        overrides["cudnn_benchmark"] = False  # on by default on a GPU
    elif option != "default":
        overrides[option] = True
    return overrides


def training_workflow(spec: dict, bundle_root: Path, batches: list[dict] | None = None):
    from monai.bundle import ConfigWorkflow

    shutil.rmtree(bundle_root, ignore_errors=True)  # a fresh run: the training run id never overwrites one
    overrides = train_overrides(spec, bundle_root)
    if batches is not None:
        overrides["train#trainer#train_data_loader"] = batches
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        run_id="training",
        **overrides,
    )
    # no validation at the end of a timed epoch, whatever the ValidationHandler's interval is made of
    for index, handler in enumerate(workflow.parser["train#handlers"]):
        if str(handler.get("_target_", "")).endswith("ValidationHandler"):
            workflow.parser[f"train#handlers#{index}#interval"] = NEVER
    workflow.initialize()
    return workflow


class IterationClock:
    """Times a trainer's iterations after ``warmup`` of them: attached last, so every handler's work is counted."""

    def __init__(self, trainer, device: torch.device, warmup: int) -> None:
        from ignite.engine import Events

        self.device, self.warmup = device, warmup
        self.start = self.end = 0.0
        self.count = 0
        trainer.add_event_handler(Events.EPOCH_STARTED, self._reset)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._tick)

    def _reset(self, engine) -> None:
        self.count = 0

    def _tick(self, engine) -> None:
        self.count += 1
        if self.count == self.warmup:
            synchronize(self.device)
            self.start = time.perf_counter()
        elif self.count > self.warmup:
            synchronize(self.device)
            self.end = time.perf_counter()

    def seconds_per_step(self) -> float:
        return (self.end - self.start) / (self.count - self.warmup)


def plain_step_fn(generator, discriminator, loss, device: torch.device, amp: bool) -> Callable[[dict], None]:
    """A minimal hand-written training step of the same networks and losses as the bundle's trainer."""
    from monai.networks import one_hot

    g_opt = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    g_params, d_params = list(generator.parameters()), list(discriminator.parameters())
    generator.train()
    discriminator.train()

    def step(batch: dict) -> None:
        image, label = batch["image"].to(device), batch["label"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = generator(image)
            real = discriminator(torch.cat([image, one_hot(label, pred.shape[1], dtype=pred.dtype)], 1))[-1]
            fake = discriminator(torch.cat([image, pred], 1))[-1]
            g_loss = loss.generator(fake.float(), pred.float(), label)[0]
            d_loss = loss.discriminator(real.float(), fake.float())
        g_opt.zero_grad(set_to_none=True)
        d_opt.zero_grad(set_to_none=True)
        g_loss.backward(inputs=g_params, retain_graph=True)
        d_loss.backward(inputs=d_params)
        g_opt.step()
        d_opt.step()

    return step


def time_steps(step: Callable[[dict], None], batches: list[dict], device: torch.device, warmup: int) -> float:
    for batch in batches[:warmup]:
        step(batch)
    synchronize(device)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    synchronize(device)
    return (time.perf_counter() - start) / (len(batches) - warmup)


def training_flops(step: Callable[[dict], None], batch: dict) -> int:
    """FLOPs of one training step, counted by ``torch.utils.flop_counter.FlopCounterMode`` while it runs."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(batch)
    return int(counter.get_total_flops())


def start_memory_window(device: torch.device) -> dict[str, Any]:
    """Starts measuring one phase's peak memory; returns what was held before it."""
    fields: dict[str, Any] = {"rss_before": current_rss_bytes(), "peak_reset": reset_peak_rss()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        fields["cuda_before"] = torch.cuda.memory_allocated(device)
    return fields


def memory_fields(device: torch.device, before: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {"peak_rss": peak_rss_bytes(), **before}
    if device.type == "cuda":
        fields["peak_cuda"] = torch.cuda.max_memory_allocated(device)
    return fields


# ---- the measurements, one per process ------------------------------------------------------------------------
def measure_compare(spec: dict, work: Path) -> dict:
    """Row a (bundle trainer against a plain loop, interleaved, best of repeats) and row b (FLOPs, matmul rate)."""
    device = torch.device(spec["device"])
    warmup, steps = spec["warmup"], spec["steps"]
    batches = random_batches(warmup + steps, spec["batch"], spec["patch"])
    workflow = training_workflow(spec, work / "bundle_compare", batches)
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")
    clock = IterationClock(trainer, device, warmup)
    # the same networks (copied before any update) and losses, in a loop with nothing else
    plain = plain_step_fn(
        copy.deepcopy(parser.get_parsed_content("network")), copy.deepcopy(parser.get_parsed_content("discriminator")),
        copy.deepcopy(parser.get_parsed_content("loss")), device, amp=bool(trainer.amp),
    )  # fmt: skip
    flops = training_flops(plain, batches[0])
    plain_s, bundle_s = [], []
    for repeat in range(spec["repeats"]):
        plain_s.append(time_steps(plain, batches, device, warmup))
        if repeat == 0:
            workflow.run()  # the `training` run id: prepare the output folders, attach the saver, run the trainer
        else:
            trainer.run()  # the same trainer and handlers again
        bundle_s.append(clock.seconds_per_step())
    dtype = compute_dtype(device, bool(trainer.amp))
    size = spec["matmul_size"]
    rates = {str(d).removeprefix("torch."): matmul_rate(device, d, size) for d in (torch.float32, torch.bfloat16)}
    return {
        "plain_s": plain_s, "bundle_s": bundle_s, "flops_per_step": flops, "matmul_rate": rates,
        "dtype": str(dtype).removeprefix("torch."),
    }  # fmt: skip


def measure_option(spec: dict, work: Path) -> dict:
    """A row of the options table (row e for the default): the bundle trainer with one option changed.

    Its speed is compared with the configured default's in the same process, the two trainers' runs interleaved
    (a shared machine's load changes from minute to minute); its memory is that of its first run, the first
    training in this process, so that no memory freed by the other trainer is reused unseen.
    """
    device = torch.device(spec["device"])
    warmup, steps, option = spec["warmup"], spec["steps"], spec["option"]
    batches = random_batches(warmup + steps, spec["batch"], spec["patch"])
    runs: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys([option, "default"]):  # the measured option first
        workflow = training_workflow({**spec, "option": name}, work / f"bundle_{option}_{name}", batches)
        trainer = workflow.parser.get_parsed_content("train#trainer")
        cudnn = bool(workflow.parser.get_parsed_content("cudnn_benchmark")) and device.type == "cuda"
        runs[name] = {"workflow": workflow, "trainer": trainer, "clock": IterationClock(trainer, device, warmup),
                      "cudnn": cudnn, "step_s": []}  # fmt: skip
    memory: dict[str, Any] = {}
    for repeat in range(spec["repeats"]):
        for name, run in runs.items():
            torch.backends.cudnn.benchmark = run["cudnn"]  # a global flag: each trainer's own setting
            first = repeat == 0 and name == option
            before = start_memory_window(device) if first else None
            run["workflow"].run() if repeat == 0 else run["trainer"].run()  # `training` first, then the trainer
            if first:
                memory = memory_fields(device, before)
            run["step_s"].append(run["clock"].seconds_per_step())
    trainer = runs[option]["trainer"]
    return {
        "step_s": runs[option]["step_s"], "default_step_s": runs["default"]["step_s"], "amp": bool(trainer.amp),
        "dtype": str(compute_dtype(device, bool(trainer.amp))).removeprefix("torch."), **memory,
    }  # fmt: skip


def measure_inference(spec: dict, work: Path) -> dict:
    """Row c: one case end to end through configs/inference.yaml (read, sliding window, invert, write)."""
    from monai.bundle import ConfigWorkflow

    from bundle.networks import Vox2VoxGenerator

    device = torch.device(spec["device"])
    root = work / "bundle_inference"
    for folder in (root, work / "predictions"):
        shutil.rmtree(folder, ignore_errors=True)
    (root / "models").mkdir(parents=True)
    torch.save(Vox2VoxGenerator(features=spec["features"]).state_dict(), root / "models" / "model.pt")
    overrides: dict[str, Any] = {
        "bundle_root": str(root), "dataset_dir": spec["inference_data_dir"], "output_dir": str(work / "predictions"),
        "device": f"$torch.device({spec['device']!r})", "features": spec["features"],
        "patch_size": [spec["inference_patch"]] * 3,
    }  # fmt: skip
    if spec.get("inference_workers") is not None:
        overrides["num_workers"] = spec["inference_workers"]
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.yaml"), meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="infer", **overrides,
    )  # fmt: skip
    if "target_spacing" in workflow.parser:  # a case at another spacing is inferred at its own, not resampled
        workflow.parser["target_spacing"] = [spec["inference_spacing"]] * 3
    workflow.initialize()
    workflow.parser.get_parsed_content("evaluator")
    before = start_memory_window(device)
    times = []
    for _ in range(1 + spec["inference_repeats"]):  # the first includes one-off start-up costs
        synchronize(device)
        start = time.perf_counter()
        workflow.run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    written = sorted((work / "predictions").glob("*.nii.gz"))
    return {"cold_s": times[0], "warm_s": times[1:], "written": [p.name for p in written],
            **memory_fields(device, before)}  # fmt: skip


def measure_data(spec: dict, work: Path) -> dict:
    """Row d: the configured train#dataloader (cache, crop, augmentation, workers) over the demo data alone."""
    device = torch.device(spec["device"])
    workflow = training_workflow(spec, work / "bundle_data")
    start = time.perf_counter()
    loader = workflow.parser.get_parsed_content("train#dataloader")  # builds the cache
    cache_s = time.perf_counter() - start

    def forever() -> Iterator[dict]:
        while True:
            yield from loader

    batches = forever()
    next(batches)  # worker start-up
    samples = 0
    start = time.perf_counter()
    for _ in range(spec["data_batches"]):
        samples += len(next(batches)["image"])
    synchronize(device)  # augmentation on a GPU runs asynchronously
    seconds = time.perf_counter() - start
    return {"cache_s": cache_s, "samples": samples, "seconds": seconds, "cases": len(loader.dataset),
            "num_workers": loader.num_workers}  # fmt: skip


KINDS = {"compare": measure_compare, "option": measure_option, "inference": measure_inference, "data": measure_data}


def worker(spec_file: str) -> None:
    """Entry point of a measurement process: reads its spec, writes its result next to it as JSON."""
    spec = json.loads(Path(spec_file).read_text())
    torch.manual_seed(0)
    work = Path(spec["work"])
    result = KINDS[spec["kind"]](spec, work)
    Path(spec["result_file"]).write_text(json.dumps(result))


# ---- the report ---------------------------------------------------------------------------------------------------
def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _bytes(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def _memory(result: dict) -> str:
    text = f"peak RSS {_bytes(result['peak_rss'])}" + ("" if result.get("peak_reset") else " (whole process)")
    if result.get("rss_before") is not None:
        text += f" ({_bytes(result['rss_before'])} before the run)"
    if result.get("peak_cuda") is not None:
        text += f"; peak CUDA allocated {_bytes(result['peak_cuda'])}"
    return text


def verdict(option: str, speed: float, memory: float) -> str:
    """An option is worth switching to only if it measures faster (activation checkpointing: smaller)."""
    if option == "activation_checkpointing":
        if memory < 0.97:
            return f"smaller ({memory:.2f}x memory) at {speed:.2f}x speed: an option for memory, off by default"
        return f"no memory saving measured ({memory:.2f}x): keep the default"
    if speed >= 1.03:
        return f"faster ({speed:.2f}x): switch to it"
    if speed > 0.97:
        return "no measurable difference: keep the default"
    return f"slower ({speed:.2f}x): keep the default"


def best(values: list[float]) -> float:
    """The shortest of repeated timings: the least disturbed by other work on a shared machine."""
    return min(values)


def training_memory(result: dict) -> int:
    """Memory a training run added to what the process held before it: CUDA allocations, or on the CPU the RSS
    (activations, gradients, optimizer states; not the weights)."""
    if result.get("peak_cuda") is not None:
        return int(result["peak_cuda"] - result.get("cuda_before", 0))
    return int(result["peak_rss"] - (result.get("rss_before") or 0))


def report(settings: dict, results: dict[str, Any]) -> str:
    """The markdown section of one benchmark run (rows a to e and the options table)."""
    device = settings["device"]
    lines = []
    compare = results.get("compare")
    if compare and "error" not in compare:
        batch = settings["batch"]
        plain, bundle = batch / best(compare["plain_s"]), batch / best(compare["bundle_s"])
        ratio = bundle / plain
        flops = compare["flops_per_step"]
        rate = compare["matmul_rate"][compare["dtype"]]
        achieved = flops / best(compare["bundle_s"])
        consumption = bundle
        lines += [
            "| row | measurement | result | compared with | ratio |",
            "| --- | --- | --- | --- | --- |",
            f"| a | training throughput, plain PyTorch loop | {plain:.3g} samples/s "
            f"({1e3 * best(compare['plain_s']):.0f} ms/step) | | |",
            f"| a | training throughput, bundle trainer (train.yaml, `training`) | {bundle:.3g} samples/s "
            f"({1e3 * best(compare['bundle_s']):.0f} ms/step) | plain loop | {ratio:.3f} (target >= 0.95) |",
            f"| b | FLOPs of one training step (FlopCounterMode) | {_si(flops, 'FLOP')} "
            f"({_si(flops / batch, 'FLOP')} per sample) | | |",
            f"| b | dense matmul rate, {compare['dtype']} ({settings['matmul_size']}^2) | {_si(rate, 'FLOP/s')} | | |",
            f"| b | achieved FLOP/s of the bundle trainer, {compare['dtype']} | {_si(achieved, 'FLOP/s')} | "
            f"matmul rate | MFU {100 * achieved / rate:.1f} % (GPU target >= 35 % bf16) |",
        ]
    else:
        consumption = None
        lines += ["| row | measurement | result | compared with | ratio |", "| --- | --- | --- | --- | --- |",
                  f"| a | training throughput | failed: {(compare or {}).get('error', 'not run')} | | |"]  # fmt: skip
    inference = results.get("inference")
    shape = "x".join(str(s) for s in settings["inference_shape"])
    if inference and "error" not in inference:
        warm = min(inference["warm_s"]) if inference["warm_s"] else inference["cold_s"]
        lines.append(
            f"| c | inference of one {shape} case (inference.yaml: read, sliding window "
            f"{settings['inference_patch']}^3, invert, write) | {warm:.2f} s (first run {inference['cold_s']:.2f} s) "
            f"| target < 1.5 s on a GPU at 240x240x155 | {_memory(inference)} |"
        )
    else:
        lines.append(f"| c | inference of one {shape} case | failed: {(inference or {}).get('error', 'not run')} | | |")
    data_rows = (("data", ""), ("data:no_cache", ", no cache (--cache_rate 0: every sample read and preprocessed)"),
                 ("data:on_device", ", augmentation on the device (--augment_on_device true)"))  # fmt: skip
    for key, where in data_rows:
        data = results.get(key)
        if key != "data" and data is None:
            continue  # not measured in this run (on_device: on a GPU only)
        if data and "error" not in data:
            rate = data["samples"] / data["seconds"]
            versus = (f"trainer consumption {consumption:.3g} samples/s", f"{rate / consumption:.2f}x (>= 1: not "
                      "the bottleneck)") if consumption else ("", "")  # fmt: skip
            cases = (f"{data['cases']} cases" if key == "data:no_cache" else
                     f"{data['cases']} cached cases (cache built in {data['cache_s']:.1f} s)")  # fmt: skip
            lines.append(
                f"| d | data pipeline alone: train#dataloader, {data['num_workers']} workers{where}, {cases} | "
                f"{rate:.3g} samples/s | {versus[0]} | {versus[1]} |"
            )
        else:
            lines.append(f"| d | data pipeline{where} | failed: {(data or {}).get('error', 'not run')} | | |")
    default = results.get("option:default")
    if default and "error" not in default:
        lines.append(
            f"| e | peak memory of training (configured default) | {_memory(default)} | memory of the run "
            f"(activations, gradients, optimizer states) | {_bytes(training_memory(default))} |"
        )
    else:
        lines.append(f"| e | peak memory of training | failed: {(default or {}).get('error', 'not run')} | | |")

    lines += ["", "| option | setting measured | samples/s | speed vs default | MFU | memory of the run | verdict |",
              "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    flops = compare.get("flops_per_step") if compare else None
    rates = compare.get("matmul_rate", {}) if compare else {}
    base = results.get("option:default")
    for option in ("default", *OPTIONS):
        title = OPTION_TITLES[option]
        result = results.get(f"option:{option}")
        setting = option_setting(option, device)
        if result is None:
            reason = "n/a on the CPU (cuDNN only)" if option == "cudnn_benchmark" and device == "cpu" else "not run"
            lines.append(f"| {title} | {setting} | - | - | - | - | {reason} |")
            continue
        if "error" in result:
            lines.append(f"| {title} | {setting} | - | - | - | - | failed: {result['error']} |")
            continue
        step_s = best(result["step_s"])
        if option == "default":  # timed in its own process and, interleaved, in every option's: the best of all
            others = [results[f"option:{o}"] for o in OPTIONS if f"option:{o}" in results]
            step_s = min([step_s] + [best(r["default_step_s"]) for r in others if "default_step_s" in r])
        mfu = f"{100 * flops / step_s / rates[result['dtype']]:.1f} % of {result['dtype']}" if flops and result[
            "dtype"] in rates else "-"  # fmt: skip
        memory = _bytes(training_memory(result))
        if option == "default":
            speed_text, judgement = "1.00x", "the reference"
        else:  # against the default trainer timed in the same process, interleaved
            speed = best(result["default_step_s"]) / step_s
            has_base = base is not None and "error" not in base
            memory_ratio = training_memory(result) / max(training_memory(base), 1) if has_base else 1.0
            speed_text, judgement = f"{speed:.2f}x", verdict(option, speed, memory_ratio)
        lines.append(f"| {title} | {setting} | {settings['batch'] / step_s:.3g} | {speed_text} | {mfu} | {memory} | "
                     f"{judgement} |")  # fmt: skip
    return "\n".join(lines)


def option_setting(option: str, device: str) -> str:
    cuda = device.startswith("cuda")
    return {
        "default": "train.yaml as is: " + ("bf16 AMP, cudnn.benchmark" if cuda else "fp32 (AMP is GPU-only)"),
        "amp": "fp32 (--amp false)" if cuda else "bf16 autocast forced on the CPU (train#trainer#amp true)",
        "compile": "--compile true",
        "channels_last": "--channels_last true",
        "cudnn_benchmark": "--cudnn_benchmark false",
        "activation_checkpointing": "--activation_checkpointing true",
    }[option]


if __name__ == "__main__":
    worker(sys.argv[1])

"""Distillation throughput on one GPU, with the time split and a GPU-vs-CPU correctness check.

Two cases on synthetic uint8 data: (a) cifar_resnet34 → cifar_resnet18 at 32², (b) resnet50 → mobilenet_v3_small
at 224², both through the package's own training step (teacher online, bf16 autocast + channels_last). Prints
the tables and writes gpu.json + gpu.md to $OUT (when set) or benchmarks/results/. Needs nothing outside the
repository (no download, no data set).

    python -m benchmarks.gpu                          # about 4 minutes on one H200
    python -m benchmarks.gpu --compile                # adds a torch.compile row per case
    python -m benchmarks.gpu --device cpu --quick     # tiny sizes, every code path, seconds (the test runs it)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, machine
from benchmarks.gpu_cases import CASES, Bench, Case, case_recipe_overrides, load_case_teacher, sized, teacher_on
from benchmarks.gpu_parity import Tolerance, check_case
from benchmarks.gpu_report import render, write_outputs
from benchmarks.gpu_timing import QUICK_PLAN, Plan, measure, reset_peak_memory
from eikd_edge.config import load_recipe
from eikd_edge.errors import EikdError
from eikd_edge.models.teacher import TeacherModel


class UsageError(Exception):
    """A problem with the command line or the machine, reported as one line."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --quick: the test's mode)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and step counts: checks the code, not speed")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--batch", action="append", default=[], metavar="[CASE=]N",
                        help="batch size for one case (cifar32=2048) or, without a name, for every case")  # fmt: skip
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of timed steps per case and mode")
    parser.add_argument("--steps", type=int, default=400, help="at most this many timed steps per case and mode")
    parser.add_argument("--warmup", type=int, default=10, help="steps run before timing (excluded)")
    parser.add_argument("--compile", action="store_true", help="also measure the student under torch.compile")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--check-steps", type=int, default=None,
                        help="steps of the GPU-vs-CPU check (default 3, 2 with --quick; 0: skip it)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override, as distill's --set")  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=None, help="default: $OUT if set, else benchmarks/results")
    return parser.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use cuda, cuda:N or cpu") from None
    if device.type not in ("cuda", "cpu"):
        raise UsageError(f"--device {name!r}: this benchmark runs on cuda (or cpu with --quick)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"no CUDA device is visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}); "
                "run this on a GPU host, or pass --device cpu --quick to check the code path"
            )
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return device


def batch_sizes(values: list[str], cases: list[str]) -> dict[str, int]:
    """`--batch N` for every case, `--batch CASE=N` for one; later values win."""
    sizes: dict[str, int] = {}
    for value in values:
        name, _, number = value.rpartition("=")
        targets = [name] if name else cases
        if name and name not in CASES:
            raise UsageError(f"--batch {value}: unknown case {name!r}; cases are {', '.join(CASES)}")
        if not number.isdigit() or int(number) < 2:
            raise UsageError(f"--batch {value}: the batch size must be a whole number of at least 2")
        sizes.update(dict.fromkeys(targets, int(number)))
    return sizes


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "CUDA out of memory: lower the batch with --batch CASE=N"
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:200]}"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def throughput_row(
    case: Case, teacher: TeacherModel, device: torch.device, mode: str, plan: Plan, args: argparse.Namespace
) -> dict[str, Any]:
    row: dict[str, Any] = {"case": case.key, "title": case.title, "mode": mode, "batch": case.batch,
                           "target_img_s": case.target_img_s}  # fmt: skip
    bench = None
    try:
        _free(device)
        reset_peak_memory(device)
        with tempfile.TemporaryDirectory() as folder:
            bench = Bench(case, teacher_on(teacher, device), device, args.seed, args.overrides, Path(folder))
            if mode == "compile":
                bench.compile(args.compile_backend)
            row["measurement"] = measure(bench.step, bench.teacher.module, device, case.batch, plan).to_json()
    except Exception as exc:  # one case failing must not cost the others their figures
        row["error"] = _error_line(exc)
        row["traceback"] = traceback.format_exc(limit=-8)
        print(f"error: {case.key} ({mode}): {row['error']}", file=sys.stderr)
    finally:
        del bench
        _free(device)
    return row


def parity_row(case: Case, teacher: TeacherModel, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"case": case.key, "title": case.title}
    try:
        small = dataclasses.replace(case, batch=case.check_batch)
        row["parity"] = check_case(small, teacher, device, args.check_steps, args.seed, Tolerance()).to_json()
        if not row["parity"]["passed"]:
            print(f"error: {case.key}: GPU and CPU disagree: {'; '.join(row['parity']['reasons'])}", file=sys.stderr)
    except Exception as exc:
        row["error"] = _error_line(exc)
        row["traceback"] = traceback.format_exc(limit=-8)
        print(f"error: {case.key} (correctness check): {row['error']}", file=sys.stderr)
    finally:
        _free(device)
    return row


def run(args: argparse.Namespace, argv: list[str]) -> tuple[dict[str, Any], int]:
    device = resolve_device(args.device)
    batches = batch_sizes(args.batch, args.cases)
    for key in args.cases:  # a mistyped --set is a usage error, found before anything runs
        try:
            load_recipe(None, case_recipe_overrides(CASES[key], 2, device, args.overrides))
        except EikdError as exc:
            raise UsageError(f"--set: {exc}") from None
    plan = QUICK_PLAN if args.quick else Plan(args.warmup, 5, min(10, args.steps), args.steps, args.budget)
    modes = ["eager", "compile"] if args.compile else ["eager"]
    if args.check_steps is None:
        args.check_steps = 2 if args.quick else 3
    record: dict[str, Any] = {"machine": machine(), "device": str(device), "torch": torch.__version__,
                              "cuda": torch.version.cuda, "quick": args.quick,
                              "command": " ".join(["python -m benchmarks.gpu", *argv]),
                              "plan": dataclasses.asdict(plan), "throughput": [], "parity": []}  # fmt: skip
    if device.type == "cuda":
        record["bf16_supported"] = torch.cuda.is_bf16_supported()
        if not record["bf16_supported"]:
            print(
                "warning: this GPU has no native bf16; the training step's bf16 autocast is emulated", file=sys.stderr
            )
    started = time.perf_counter()
    for key in args.cases:
        case = sized(CASES[key], args.quick)
        if key in batches:
            case = dataclasses.replace(case, batch=batches[key])
        print(f"{case.key}: {case.title}, batch {case.batch} ...", file=sys.stderr, flush=True)
        try:
            teacher = load_case_teacher(case, args.seed)
        except Exception as exc:
            line = _error_line(exc)
            print(f"error: {case.key}: cannot build the teacher: {line}", file=sys.stderr)
            record["throughput"] += [{"case": key, "title": case.title, "mode": m, "batch": case.batch,
                                      "target_img_s": case.target_img_s, "error": line} for m in modes]  # fmt: skip
            record["parity"].append({"case": key, "title": case.title, "error": line})
            continue
        for mode in modes:
            record["throughput"].append(throughput_row(case, teacher, device, mode, plan, args))
        if args.check_steps > 0:
            record["parity"].append(parity_row(case, teacher, device, args))
    record["wall_s"] = round(time.perf_counter() - started, 1)
    failed = any("error" in row for row in record["throughput"] + record["parity"])
    disagree = any(not row["parity"]["passed"] for row in record["parity"] if "parity" in row)
    return record, 1 if failed else 2 if disagree else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.environ.setdefault("EIKD_NO_PROGRESS", "1")
    out_dir = args.out_dir or (Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS)
    try:
        record, code = run(args, argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 3
    data, table = write_outputs(record, out_dir)
    print(render(record))
    print(f"\nwritten: {data} and {table} ({record['wall_s']:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())

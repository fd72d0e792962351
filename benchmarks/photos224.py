"""photos224: distil real-photo teachers at ImageNet-style sizes through the command line, as a user would.

    python -m benchmarks.photos224 [--size 224|128] [--seeds 0] [--threads 1] [--students mobilenet_v3_small
                                   resnet18] [--inits scratch pretrained] [--flip] [--out JSON] [--quick]

The task (benchmarks/task_photos224.py) is built once into benchmarks/.data/photos224-<size>-v1/: camera JPEGs
of ten bundled photographs, a resnet18 teacher (state_dict + sidecar) and a stand-in "pretrained" student per
architecture, trained on ten other photos. Each row is `eikd-edge distill` at the defaults (only the seed,
device and threads set; `--student-weights` for the pretrained init) and `eikd-edge export RUN --onnx --int8`,
each in a child process whose peak RSS is read from its own rusage. `--flip` adds mobilenet_v3_small from
scratch with `--set train.augment.flip=false` (the default is flip on above 64 px; distilled only, not
exported: it compares accuracy; `--inits` with no value runs that row alone). `--quick` builds a tiny task at
64 px and runs a few steps per row (a smoke test of every path, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, machine, mean_std
from benchmarks.quality import dig
from benchmarks.task_common import log, score_teacher
from benchmarks.task_photos224 import build

VERSION = "v1"
DATA = Path(__file__).resolve().parent / ".data"
STUDENTS = ("mobilenet_v3_small", "resnet18")
INITS = ("scratch", "pretrained")
QUICK = {"size": 64, "scale": 0.04, "epochs": {"teacher": 1, "pretrain": 1}}
QUICK_DISTILL = ["--set", "train.steps=4", "--set", "train.precise_bn=64"]
QUICK_EXPORT = ["--qad", "never", "--calib-images", "32"]


def load_task(size: int, students: list[str], cache: Path, quick: bool = False) -> tuple[Path, dict[str, Any]]:
    """The task folder, built first if missing or lacking a pretrained student (built aside, then renamed, so an
    interrupted build never looks complete)."""
    folder = cache / (f"photos224-quick-{VERSION}" if quick else f"photos224-{size}-{VERSION}")
    manifest = folder / "manifest.json"
    if manifest.is_file() and all((folder / f"pretrained-{a}.pt").is_file() for a in students):
        return folder, json.loads(manifest.read_text())
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.perf_counter()
    log(f"building photos224 ({size} px) into {partial}")
    extra = {"scale": QUICK["scale"], "epochs": QUICK["epochs"]} if quick else {}
    facts = build(partial, size, students, **extra)
    scores = score_teacher(partial / "teacher.pt", partial / "val", partial / "field", partial / "field_truth.csv")
    facts = {**facts, "teacher": scores, "build_s": round(time.perf_counter() - started, 1)}
    (partial / "manifest.json").write_text(json.dumps(facts, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    log(f"built in {facts['build_s']:.0f}s: teacher top-1 {scores['val_top1']:.1%} val, "
        f"{scores['field_in_class_top1']:.1%} field in-class")  # fmt: skip
    return folder, facts


def run_child(args: list[str], log_path: Path) -> dict[str, Any]:
    """`eikd-edge ARGS` in a child process: exit code, wall seconds and the child's own peak RSS (wait4's
    rusage is this child's alone, unlike RUSAGE_CHILDREN, which keeps the largest of all children so far)."""
    env = {**os.environ, "EIKD_NO_PROGRESS": "1"}
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "eikd_edge", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": child.returncode, "wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "log": str(log_path)}  # fmt: skip


def rows_to_run(students: list[str], inits: list[str], flip: bool) -> list[tuple[str, str, list[str]]]:
    """(student, init, extra distill args) per row; the flip-off row is mobilenet_v3_small from scratch."""
    rows = [(s, i, []) for s in students for i in inits]
    if flip:
        rows.append(("mobilenet_v3_small", "scratch, flip off", ["--set", "train.augment.flip=false"]))
    return rows


def distill_args(task: Path, run: Path, student: str, init: str, seed: int, threads: int) -> list[str]:
    """The defaults, with only the seed, device and threads set (and the pretrained file for that init)."""
    args = ["distill", "-t", str(task / "teacher.pt"), "-u", str(task / "field"), "--val", str(task / "val"),
            "--student", student, "-o", str(run), "--overwrite", "--device", "cpu", "--threads", str(threads),
            "--cache-dir", str(task / "score-cache"), "--set", f"train.seed={seed}"]  # fmt: skip
    if init.startswith("pretrained"):
        args += ["--student-weights", str(task / f"pretrained-{student}.pt")]
    return args


def int8_facts(export: dict[str, Any]) -> dict[str, Any]:
    """From export.json: the INT8 model's gate status, agreement with the FP32 student (and its sample size),
    whether it is recommended, and FP32 / INT8 ORT latency at the batch the quantizer timed."""
    int8 = dig(export, "artifacts.onnx-int8") or {}
    quant = int8.get("quantization") or {}
    return {
        "int8_status": int8.get("status"),
        "int8_agreement": dig(int8, "parity.agree_student"),
        "int8_gate_images": dig(int8, "parity.n_images"),
        "int8_recommended": int8.get("recommended"),
        "int8_method": quant.get("method"),
        "fp32_ms": dig(quant, "fp32.latency_ms_batch"),
        "int8_ms": dig(quant, "chosen.latency_ms_batch"),
        "latency_batch": dig(quant, "chosen.batch"),
    }


def one_row(task: Path, work: Path, row: tuple[str, str, list[str]], seed: int, args: argparse.Namespace) -> dict:
    """Distil, export and read back one row's figures."""
    student, init, extra = row
    run = work / f"{student}-{init.replace(', ', '-').replace(' ', '-')}-{seed}"
    work.mkdir(parents=True, exist_ok=True)  # logs beside the run: distill refuses a folder it did not write
    quick = QUICK_DISTILL if args.quick else []
    dist = run_child(
        [*distill_args(task, run, student, init, seed, args.threads), *extra, *quick], run.with_suffix(".distill.log")
    )
    result: dict[str, Any] = {"student": student, "init": init, "seed": seed, "overrides": extra, "distill": dist}
    if dist["rc"] != 0:
        return result
    metrics = json.loads((run / "metrics.json").read_text())
    result.update(top1=dig(metrics, "student.top1"), teacher_top1=dig(metrics, "teacher.top1"),
                  agreement=dig(metrics, "agreement.top1"), train_images_per_s=dig(metrics, "train.images_per_s"),
                  train_s=dig(metrics, "train.wall_s"), steps=dig(metrics, "train.steps"),
                  kept_epoch=dig(metrics, "epochs.picked.epoch"), epochs=dig(metrics, "train.epochs"),
                  last_top1=dig(metrics, "epochs.last.val_top1"), last_agreement=dig(metrics, "epochs.last.agreement"),
                  loaded_tensors=dig(metrics, "student.weights.loaded_tensors"),
                  warnings=metrics.get("warnings"))  # fmt: skip
    if extra:  # the flip-off row compares accuracy only: its export would be the scratch row's again
        return result
    export_args = ["export", str(run), "--onnx", "--int8", "--threads", str(args.threads)]
    exp = run_child([*export_args, *(QUICK_EXPORT if args.quick else [])], run.with_suffix(".export.log"))
    result["export"] = exp
    export_json = run / "export" / "export.json"
    if export_json.is_file():
        result.update(int8_facts(json.loads(export_json.read_text())))
    return result


def fmt(value: Any, spec: str = ".1%") -> str:
    return "—" if value is None else format(value, spec)


HEADER = (
    "| student | init | top-1 (kept epoch) | gap to teacher | agreement (kept epoch) | top-1 / agreement, last epoch "
    "| train img/s | train s | distill wall s | distill peak RSS | export wall s | export peak RSS | INT8 gate (agree "
    "with FP32, N images) | INT8 recommended | ORT FP32 / INT8 ms, batch B |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"
)


def markdown_table(summary: dict[str, Any]) -> str:
    """The teacher's line, then one line per (student, init): mean ± std over seeds where there are several."""
    teacher = summary["teacher"]
    lines = [f"teacher resnet18 at {summary['size']} px: top-1 {fmt(teacher['val_top1'])} val, "
             f"{fmt(teacher['field_in_class_top1'])} field in-class\n", HEADER]  # fmt: skip
    for key in dict.fromkeys((r["student"], r["init"]) for r in summary["runs"]):
        runs = [r for r in summary["runs"] if (r["student"], r["init"]) == key and r.get("top1") is not None]
        lines.append(table_line(runs, teacher["val_top1"]) if runs else f"| {key[0]} | {key[1]} | failed |" + " |" * 12)
    return "\n".join(lines)


def table_line(runs: list[dict[str, Any]], teacher_top1: float) -> str:
    """Accuracy as mean (± std) over the runs; time, memory and INT8 from the last run."""
    top1, top1_sd = mean_std([r["top1"] for r in runs])
    agree, _ = mean_std([r["agreement"] for r in runs])
    last = runs[-1]
    sd = f" ± {top1_sd:.1%}" if len(runs) > 1 else ""
    status, agreement, images = last.get("int8_status"), last.get("int8_agreement"), last.get("int8_gate_images")
    gate = "—" if status is None else f"{status} ({fmt(agreement)}, {images})"
    ms = (
        "—"
        if last.get("fp32_ms") is None
        else f"{last['fp32_ms']:.2f} / {last['int8_ms']:.2f} ({last['latency_batch']})"
    )
    gap = f"{(top1 - teacher_top1) * 100:+.1f} pts"
    export_rss = "—" if not last.get("export") else f"{last['export']['peak_rss_mb']:.0f} MB"
    cells = [last["student"], last["init"], f"{top1:.1%}{sd}", gap, f"{agree:.1%}",
             f"{fmt(last.get('last_top1'))} / {fmt(last.get('last_agreement'))}",
             fmt(last.get("train_images_per_s"), ".1f"), fmt(last.get("train_s"), ".0f"),
             fmt(last["distill"]["wall_s"], ".0f"), f"{last['distill']['peak_rss_mb']:.0f} MB",
             fmt(dig(last, "export.wall_s"), ".0f"), export_rss, gate,
             str(last.get("int8_recommended", "—")), ms]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, choices=(224, 128), default=224, help="teacher input size")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for every child process")
    parser.add_argument("--students", nargs="+", choices=STUDENTS, default=list(STUDENTS))
    parser.add_argument("--inits", nargs="*", choices=INITS, default=list(INITS), help="none: only the --flip row")
    parser.add_argument("--flip", action="store_true", help="add mobilenet_v3_small from scratch with flip off")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/photos224-SIZE.json)")
    parser.add_argument("--cache", type=Path, default=DATA, help=f"task cache folder (default {DATA})")
    parser.add_argument("--workdir", type=Path, default=None, help="run folders (default: CACHE/photos224-runs)")
    parser.add_argument("--quick", action="store_true", help="tiny task at 64 px, a few steps: a smoke test")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    size = QUICK["size"] if args.quick else args.size
    started = time.perf_counter()
    task, facts = load_task(size, args.students, args.cache, args.quick)
    out_json = args.out or RESULTS / f"photos224-{'quick' if args.quick else size}.json"
    work = args.workdir or args.cache / f"photos224-runs-{'quick' if args.quick else size}"
    runs: list[dict[str, Any]] = []
    summary = {"command": " ".join(["python -m benchmarks.photos224", *(argv if argv is not None else sys.argv[1:])]),
               "machine": machine(), "size": size, "seeds": args.seeds, "threads": args.threads,
               "teacher": facts["teacher"], "task": facts, "runs": runs}  # fmt: skip
    for seed in args.seeds:
        for row in rows_to_run(args.students, args.inits, args.flip):
            runs.append(one_row(task, work, row, seed, args))
            last = runs[-1]
            log(f"{row[0]} [{row[1]}] seed {seed}: top-1 {fmt(last.get('top1'))}, agreement "
                f"{fmt(last.get('agreement'))}, distill {last['distill']['wall_s']:.0f}s, INT8 "
                f"{last.get('int8_status')} (recommended {last.get('int8_recommended')})")  # fmt: skip
            summary["wall_s"] = round(time.perf_counter() - started, 1)
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown_table(summary))
    print(f"\n{summary['machine']}; {summary['wall_s']:.0f}s in all; wrote {out_json}")
    # exit 1 when a command failed; a failed INT8 gate (export's exit code 2) is a result, recorded in the table
    return 0 if all(r["distill"]["rc"] == 0 and dig(r, "export.rc") in (0, 2, None) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

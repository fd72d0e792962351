"""report.md, number by number: a fixed Report, built from literals, rendered and compared with a golden file.

tests/test_report.py runs every stage for real and checks that the sections exist; it cannot pin the numbers the
tables print, because a real run's numbers move. Here every figure is a literal chosen to be recognisable and
distinct (the ONNX artifact agrees 98.7% with the student and 91.2% with the teacher), so a renderer that swaps
columns, rounds differently or shows a failed gate as passed no longer matches tests/golden/report.md.

After a deliberate change of the report's layout, regenerate the golden file and read its diff before committing:

    EIKD_UPDATE_GOLDEN=1 python -m pytest tests/test_report_golden.py

Without EIKD_UPDATE_GOLDEN=1 a mismatch fails, showing a unified diff.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from eikd_edge.bench_result import BenchResult, BenchRow, PreprocessTiming
from eikd_edge.latency import LatencyStats
from eikd_edge.report.confusion import Confusion, ConfusionSection
from eikd_edge.report.model import (
    NOVEL_TITLE,
    SECTIONS,
    ClassRow,
    Headline,
    NovelCluster,
    NovelSection,
    QualityRow,
    Report,
    SelectionSection,
    SizeRow,
    SpeedRow,
    Thumb,
    TrainingSection,
)
from eikd_edge.report.render_markdown import render_markdown

GOLDEN = Path(__file__).parent / "golden" / "report.md"
UPDATE = "EIKD_UPDATE_GOLDEN"
STAMP = "2024-05-01T12:00:00+00:00"
VERSION = "0.0.0-golden"
TEACHER_BYTES = 98_000_000
SIZES = {"pytorch": 4_900_000, "onnx": 4_000_000, "onnx-int8": 1_400_000}  # 20×, 24.5× and 70× smaller
PRECISION = {"teacher": "fp32", "pytorch": "fp32", "onnx": "fp32", "onnx-int8": "int8"}
BACKEND = {"teacher": "torch", "pytorch": "torch", "onnx": "ort", "onnx-int8": "ort-int8"}
# (model, batch): p50 ms, images/s, speed-up over pytorch at that batch; the teacher's 8 iterations are too few
TIMES = {
    ("teacher", 1): (15.0, 66.0, 0.2),
    ("pytorch", 1): (3.0, 330.0, 1.0),
    ("onnx", 1): (1.2, 820.0, 2.5),
    ("onnx-int8", 1): (0.8, 1310.0, 3.75),
    ("pytorch", 8): (16.0, 495.0, 1.0),
    ("onnx", 8): (5.0, 1580.0, 3.2),
    ("onnx-int8", 8): (3.2, 2450.0, 5.0),
}
ITERS = {"teacher": 8}
# model: agree with teacher, agree with student, top-1 on labels, gate passed, status
QUALITY: dict[str, tuple[float, float | None, float, bool | None, str]] = {
    "teacher": (1.0, None, 0.953, None, "reference"),
    "pytorch": (0.924, 1.0, 0.901, None, "reference"),
    "onnx": (0.912, 0.987, 0.897, True, "ok"),
    "onnx-int8": (0.868, 0.934, 0.861, False, "failed_gate"),
}
GATE = 0.95


def _latency(p50: float) -> LatencyStats:
    """p90 = 1.2×, p99 = 1.5×, mean = 1.1× ± 0.1× the median."""
    return LatencyStats(
        p50=p50, p90=p50 * 1.2, p99=p50 * 1.5, mean=p50 * 1.1, std=p50 * 0.1, min=p50 * 0.9, max=p50 * 2
    )


def _bench() -> BenchResult:
    rows = []
    for (model, batch), (p50, rate, _) in TIMES.items():
        agree_t, agree_s, top1, passed, _ = QUALITY[model]
        iters = ITERS.get(model, 200)
        rows.append(
            BenchRow(
                model=model, backend=BACKEND[model], precision=PRECISION[model], batch=batch, status="ok", threads=4,
                warmup=20, iters=iters, iters_requested=200, budget_exhausted=iters < 200, latency_ms=_latency(p50),
                images_per_s=rate, size_bytes=SIZES.get(model, TEACHER_BYTES), agree_teacher=agree_t,
                agree_student=agree_s, top1=top1, gate_passed=passed,
            )
        )  # fmt: skip
    rows.append(BenchRow(model="trt-fp16", backend="trt", precision="fp16", batch=None, status="skipped: no TensorRT"))
    preprocess = [
        PreprocessTiming(
            policy="resize 36, centre crop 32", batch=b, iters=200, latency_ms=_latency(ms), images_per_s=r
        )
        for b, ms, r in ((1, 0.42, 2300.0), (8, 2.6, 3050.0))
    ]
    machine = {"cpu": "Golden CPU 3000", "cpu_count": 8, "torch": "2.4.0", "onnxruntime": "1.18.0"}
    return BenchResult(
        created_with=VERSION, created_at=STAMP, machine=machine, settings={"batches": [1, 8], "iters": 200},
        images={"n": 64, "source": "holdout"}, rows=rows, preprocess=preprocess,
    )  # fmt: skip


def _headline() -> Headline:
    compression = [SizeRow(model="teacher", params=25_557_032, macs=4_089_184_256, size_bytes=TEACHER_BYTES,
                           size_ratio=None)]  # fmt: skip
    compression += [
        SizeRow(model=m, params=1_234_567, macs=56_781_000, size_bytes=b, size_ratio=TEACHER_BYTES / b)
        for m, b in SIZES.items()
    ]
    speed = [
        SpeedRow(model=m, backend=BACKEND[m], precision=PRECISION[m], batch=b, p50_ms=p50, images_per_s=rate,
                 speedup=up, iters=ITERS.get(m, 200), reliable=m not in ITERS)
        for (m, b), (p50, rate, up) in TIMES.items()
    ]  # fmt: skip
    quality = [
        QualityRow(model=m, precision=PRECISION[m], status=status, agree_teacher=agree_t, agree_student=agree_s,
                   top1=top1, gate=None if passed is None else GATE, gate_passed=passed)
        for m, (agree_t, agree_s, top1, passed, status) in QUALITY.items()
    ]  # fmt: skip
    return Headline(compression=compression, speed=speed, quality=quality, validation_passed=False, gate=GATE)


def _validation() -> dict[str, Any]:
    artifacts: dict[str, Any] = {}
    for name, dprob, dlogit in (("onnx", 4.2e-4, 3.1e-3), ("onnx-int8", 0.071, 0.58)):
        agree_t, agree_s, top1, passed, status = QUALITY[name]
        assert agree_s is not None
        parity = {"agree_student": agree_s, "agree_teacher": agree_t, "flip_rate": round(1 - agree_s, 3),
                  "max_abs_dprob": dprob, "max_abs_dlogit": dlogit, "n_images": 1000, "gate": GATE,
                  "passed": passed, "top1": top1}  # fmt: skip
        artifacts[name] = {"status": status, "parity": parity}
    artifacts["onnx-int8"]["reason"] = "agreement 93.4% below the 95.0% gate"
    return {
        "images": {"n": 1000, "source": "holdout"},
        "gate": GATE,
        "student": {"agree_teacher": 0.924, "top1": 0.901},
        "teacher": {"top1": 0.953},
        "artifacts": artifacts,
        "notes": [],
        "passed": False,
    }


def golden_report() -> Report:
    """A run with every section filled: teacher, PyTorch student, ONNX (passes its 95% gate), ONNX INT8 (fails
    it), two bench batch sizes and a skipped backend, two epochs, three classes (one below its fair share), two
    novel-sample clusters and two confusion matrices."""
    history = [
        {"epoch": 1, "step": 30, "wall_s": 20.1, "loss": {"total": 1.2345, "kd": 0.9876}, "agreement": 0.846,
         "val_top1": 0.812},
        {"epoch": 2, "step": 60, "wall_s": 42.3, "loss": {"total": 0.6543, "kd": 0.4321}, "agreement": 0.924,
         "val_top1": 0.901},
    ]  # fmt: skip
    train = {"epochs": 2, "steps": 60, "wall_s": 42.3, "device": "cpu", "images_per_s": 456.7}
    classes = ["cat", "dog", "fox"]
    selection = SelectionSection(
        method="eikd",
        pool={"root": "field/pool", "files": 1200, "decoded": 1180,
              "skipped": {"count": 20, "by_reason": {"unreadable": 12, "too small": 8}}},
        selected=600, train=480, holdout=120, fair_share=200,
        classes=[
            ClassRow(name="cat", candidates=540, quota=215, selected=215, deficit=0),
            ClassRow(name="dog", candidates=470, quota=215, selected=215, deficit=0),
            ClassRow(name="fox", candidates=170, quota=170, selected=170, deficit=30),
        ],
        below_quota=["fox"],
        thumbnails=[
            Thumb(group="most_confident", path="cat/0001.jpg", predicted="cat", confidence=0.991),
            Thumb(group="most_confident", path="dog/0007.jpg", predicted="dog", confidence=0.962),
            Thumb(group="least_confident", path="fox/0042.jpg", predicted="fox", confidence=0.413),
            Thumb(group="rejected", path="dog/0077.jpg", predicted="dog", confidence=0.371),
        ],
    )  # fmt: skip
    novel = NovelSection(
        count=14, pool_size=1180, rule="density + distance from the pool's bulk", score_threshold=0.35,
        clusters=[
            NovelCluster(id=0, size=9, nearest_class="fox", nearest_cosine=0.612, mean_confidence=0.44,
                         examples=["unknown/a.jpg", "unknown/b.jpg"]),
            NovelCluster(id=1, size=5, nearest_class="dog", nearest_cosine=0.547, mean_confidence=0.52, examples=[]),
        ],
    )  # fmt: skip
    confusion = ConfusionSection(
        matrices=[
            Confusion(title="Student vs teacher", reference="teacher", images="1000 holdout field images",
                      classes=classes, counts=[[400, 20, 6], [25, 380, 5], [10, 10, 144]], n=1000, agreement=0.924),
            Confusion(title="Student vs labels", reference="label", images="300 labeled images (val)",
                      classes=classes, counts=[[95, 4, 1], [6, 92, 2], [8, 9, 83]], n=300, agreement=0.9),
        ],
    )  # fmt: skip
    export = {name: {"path": path, "size_bytes": SIZES[name], "precision": PRECISION[name], "status": QUALITY[name][4]}
              for name, path in (("onnx", "student.onnx"), ("onnx-int8", "student.int8.onnx"))}  # fmt: skip
    return Report(
        created_with=VERSION,
        created_at=STAMP,
        run="runs/golden",
        sections={**SECTIONS, "novel": NOVEL_TITLE},
        headline=_headline(),
        metrics={"method": "eikd", "student": {"best_epoch": 2}, "train": train, "history": history},
        selection=selection,
        novel=novel,
        training=TrainingSection(method="eikd", summary=train, best_epoch=2, history=history),
        validation=_validation(),
        export={"artifacts": export, "created_with": VERSION},
        bench=_bench(),
        confusion=confusion,
        notes=["onnx-int8 failed its 95.0% gate on 1000 holdout images: deploy student.onnx"],
    )


def test_markdown_matches_the_golden_file() -> None:
    rendered = render_markdown(golden_report())
    if os.environ.get(UPDATE) == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(rendered, encoding="utf-8", newline="\n")
    golden = GOLDEN.read_text(encoding="utf-8")
    diff = "".join(difflib.unified_diff(golden.splitlines(True), rendered.splitlines(True), GOLDEN.name, "rendered"))
    assert rendered == golden, f"report.md differs from tests/golden/{GOLDEN.name} (if intended: {UPDATE}=1):\n{diff}"


def _table(markdown: str, title: str) -> list[dict[str, str]]:
    """The rows of the Markdown table under the first heading that starts with `### title`, keyed by column."""
    lines = markdown.split(f"\n### {title}", 1)[1].split("\n\n")[1].splitlines()
    header, _, *rows = ([cell.strip() for cell in line[2:-2].split(" | ")] for line in lines)
    return [dict(zip(header, row, strict=True)) for row in rows]


def _row(table: list[dict[str, str]], **match: str) -> dict[str, str]:
    (row,) = (r for r in table if match.items() <= r.items())
    return row


def test_the_numbers_that_matter_are_in_their_columns() -> None:
    """What the golden file pins, said cell by cell: agree T is the teacher's figure, agree S the student's."""
    markdown = render_markdown(golden_report())
    quality = _table(markdown, "Agreement, accuracy and gates")
    assert _row(quality, model="onnx") == {
        "model": "onnx", "precision": "fp32", "agree T": "91.2%", "agree S": "98.7%", "top-1": "89.7%",
        "gate": "pass", "status": "ok",
    }  # fmt: skip
    assert _row(quality, model="onnx-int8")["gate"] == "FAIL"
    parity = _table(markdown, "Parity on 1000 holdout images, gate 95.0%")
    onnx = _row(parity, artifact="onnx")
    assert (onnx["agree S"], onnx["agree T"], onnx["flips"]) == ("98.7%", "91.2%", "1.3%")
    assert _row(parity, artifact="onnx-int8")["status"].startswith("failed_gate")
    speed = _table(markdown, "Speed-up vs the PyTorch eager student")
    assert [_row(speed, model="onnx", batch=b)["speed-up"] for b in ("1", "8")] == ["2.50×", "3.20×"]
    assert _row(speed, model="teacher")["speed-up"] == "unreliable"
    bench = _table(markdown, "Latency")
    assert [(r["p50"], r["agree T"], r["status"]) for r in bench if r["model"] == "onnx-int8"] == [
        ("0.800", "86.8%", "failed gate"),
        ("3.20", "86.8%", "failed gate"),
    ]
    assert _row(_table(markdown, "Compression"), model="onnx-int8")["smaller than teacher"] == "70.00×"
    assert "Validation: FAILED (gate 95.0% top-1 agreement with the FP32 student)." in markdown

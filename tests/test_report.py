"""report: a real tiny run (distil -> export -> validate -> bench) gathered into report.json, report.md, report.html."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from run_fixture import fresh_run
from typer.testing import CliRunner

from eikd_edge.cli import app
from eikd_edge.report import Report
from eikd_edge.report.model import SECTIONS

runner = CliRunner()
FAST = ["train.epochs=2", "train.batch_size=16", "student.width=0.5", "selection.batch_size=64"]
CHROMIUM = Path("/usr/bin/chromium")


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args, terminal_width=120)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, script_teacher: Path, digit_images: Path, digit_val: Path) -> Path:
    """Every stage for real, so the report sees the files the commands write (no hand-made JSON)."""
    out = tmp_path_factory.mktemp("report") / "run"
    sets = [arg for item in FAST for arg in ("--set", item)]
    _ok(["distill", "-t", str(script_teacher), "-u", str(digit_images), "--val", str(digit_val), "-o", str(out), *sets])
    _ok(["export", str(out), "--onnx", "--threads", "1", "--gate", "0.9"])
    _ok(["validate", str(out), "--threads", "1", "--gate", "0.9"])
    _ok(["bench", str(out), "--batch", "1,4", "--iters", "5", "--warmup", "1", "--threads", "1"])
    return out


@pytest.fixture(scope="module")
def reported(run: Path) -> tuple[Path, str]:
    return run, _ok(["report", str(run)])


def test_report_writes_three_files_with_every_section(reported: tuple[Path, str]) -> None:
    run, output = reported
    assert "Compression" in output and "Speed-up" in output and "gate" in output  # headline tables in the terminal
    markdown = (run / "report.md").read_text()
    html = (run / "report.html").read_text()
    for key, title in SECTIONS.items():
        assert f"## {title}" in markdown
        assert f'<section id="{key}">' in html
    for text in ("### Compression", "### Speed-up vs the PyTorch eager student", "### Agreement, accuracy and gates"):
        assert text in markdown
    assert "| onnx |" in markdown and "Student vs teacher" in markdown and "Student vs labels" in markdown
    assert "_not benchmarked_" not in markdown and "_not validated_" not in markdown


def test_report_json_is_a_validated_superset_of_metrics(reported: tuple[Path, str]) -> None:
    run, _ = reported
    text = (run / "report.json").read_text()
    report = Report.model_validate_json(text)
    assert report.model_dump(mode="json") == json.loads(text)  # round trip
    assert report.metrics == json.loads((run / "metrics.json").read_text())
    assert report.validation == json.loads((run / "validate.json").read_text())
    assert report.bench is not None and any(r.model == "onnx" and r.ok for r in report.bench.rows)
    headline = report.headline
    assert [r.model for r in headline.compression] == ["teacher", "pytorch", "onnx"]
    assert all(r.params and r.macs and r.size_bytes for r in headline.compression)
    assert {(r.model, r.batch) for r in headline.speed} >= {("pytorch", 1), ("onnx", 1), ("onnx", 4)}
    assert next(r for r in headline.speed if r.model == "pytorch").speedup == pytest.approx(1.0)
    onnx = next(r for r in headline.quality if r.model == "onnx")
    assert onnx.gate == 0.9 and onnx.gate_passed is True and onnx.agree_student == 1.0
    assert headline.validation_passed is True
    kinds = [m.reference for m in report.confusion.matrices]
    assert kinds == ["teacher", "label"]
    for matrix in report.confusion.matrices:
        assert sum(map(sum, matrix.counts)) == matrix.n > 0 and len(matrix.counts) == len(matrix.classes) == 10
    assert report.training is not None and [h["epoch"] for h in report.training.history] == [1, 2]
    assert report.selection is not None and report.selection.pool["skipped"]["count"] == 1
    groups = {t.group for t in report.selection.thumbnails}
    assert groups == {"most_confident", "least_confident", "rejected"}


def test_html_is_self_contained(reported: tuple[Path, str]) -> None:
    run, _ = reported
    html = (run / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "http://" not in html and "https://" not in html
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", html)
    assert len(sources) == len(re.findall(r"<img\b", html)) >= 6  # histogram, curves, Pareto, 2 confusions, thumbs
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_on_a_bare_run_still_has_every_section(run: Path, tmp_path: Path) -> None:
    """Only distil has run: export, validate and bench sections say what to run; nothing crashes."""
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("export", "validate.json", "bench.json", "report.*"))
    _ok(["report", str(bare), "--no-confusion"])
    markdown = (bare / "report.md").read_text()
    assert all(f"## {title}" in markdown for title in SECTIONS.values())
    assert "_not benchmarked_" in markdown and "eikd-edge bench" in markdown and "eikd-edge validate" in markdown
    report = Report.model_validate_json((bare / "report.json").read_text())
    assert report.bench is None and report.validation is None and report.confusion is None


def test_report_without_metrics_json(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A run folder with a student and a selection but no metrics.json (e.g. hand-assembled): sizes from student.pt."""
    fixture = fresh_run(tmp_path_factory, "report-no-metrics")
    _ok(["report", str(fixture.root), "--no-confusion"])
    report = Report.model_validate_json((fixture.root / "report.json").read_text())
    assert report.metrics is None and report.training is None
    assert any("metrics.json not found" in note for note in report.notes)
    student = next(r for r in report.headline.compression if r.model == "pytorch")
    assert student.params and student.macs and student.size_bytes
    assert report.selection is not None and sum(c.selected for c in report.selection.classes) == 40
    assert "<h2>Training</h2>" in (fixture.root / "report.html").read_text()


def test_missing_thumbnails_are_skipped(run: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("report.*"))
    selection = json.loads((moved / "selection.json").read_text())
    selection["pool"]["root"] = str(tmp_path / "gone")
    (moved / "selection.json").write_text(json.dumps(selection))
    _ok(["report", str(moved)])
    html = (moved / "report.html").read_text()
    assert "no field images available" in html and "confusion matrices skipped" in html


NOVEL = {  # the shape of eikd_edge.novel.NovelReport.to_json(), as `select` writes it into selection.json
    "count": 5,
    "pool_size": 48,
    "max_confidence": 0.5,
    "cosine_threshold": 0.9091,
    "clusters": [
        {
            "id": 0,
            "size": 3,
            "nearest_class": "7",
            "nearest_cosine": 0.8123,
            "mean_confidence": 0.3141,
            "examples": ["1500.png", "1501.png", "gone.png"],
        },
        {
            "id": 1,
            "size": 2,
            "nearest_class": "4",
            "nearest_cosine": 0.7,
            "mean_confidence": 0.42,
            "examples": ["1502.png", "1503.png"],
        },
    ],
}


def test_novel_section_appears_only_with_a_novel_entry(tmp_path_factory: pytest.TempPathFactory) -> None:
    """selection.json without "novel": the page as before; with it: summary, cluster table, one thumbnail row each."""
    root = fresh_run(tmp_path_factory, "report-novel").root
    _ok(["report", str(root), "--no-confusion"])
    plain_md, plain_html = (root / "report.md").read_text(), (root / "report.html").read_text()
    for page in (plain_md, plain_html):
        assert "Novel field samples" not in page and "novel-sample" not in page and "#novel" not in page
    assert 'id="novel"' not in plain_html
    plain = Report.model_validate_json((root / "report.json").read_text())
    assert plain.novel is None and plain.sections == SECTIONS

    selection = json.loads((root / "selection.json").read_text())
    (root / "selection.json").write_text(json.dumps({**selection, "novel": NOVEL}))
    output = _ok(["report", str(root), "--no-confusion"])
    markdown, html = (root / "report.md").read_text(), (root / "report.html").read_text()
    assert "novel: 5 of 48 field images" in output
    assert markdown.index("## Selection") < markdown.index("## Novel field samples") < markdown.index("## Training")
    assert "5 of 48 field images (10.4%) the teacher cannot place" in markdown and "below 0.909" in markdown
    assert "| 0 | 3 | 7 | 0.812 | 0.31 |" in markdown and "| 1 | 2 | 4 | 0.700 | 0.42 |" in markdown
    assert "- cluster 0 (nearest 7): `1500.png`, `1501.png`, `gone.png`" in markdown
    novel_block = markdown[markdown.index("## Novel field samples") : markdown.index("## Training")]
    meta = re.compile(r"^eikd-edge .*$", re.MULTILINE)  # the creation time line differs between the two runs
    assert meta.sub("", markdown.replace(novel_block, "")) == meta.sub("", plain_md)
    assert '<section id="novel"><h2>Novel field samples</h2>' in html and '<a href="#novel">' in html
    assert "<td>0.812</td>" in html and '<td class="l">7</td>' in html
    figure = re.search(r'<img alt="(Examples per novel-sample cluster[^"]*)" src="data:image/png;base64,', html)
    assert figure and "(1 image(s) missing from the pool)" in figure.group(1)
    assert html.count("<img") == plain_html.count("<img") + 1
    report = Report.model_validate_json((root / "report.json").read_text())
    assert report.novel is not None and report.novel.model_dump() == NOVEL
    assert list(report.sections).index("novel") == list(report.sections).index("selection") + 1

    (root / "selection.json").write_text(json.dumps({**selection, "novel": {"count": "many"}}))
    _ok(["report", str(root), "--no-confusion"])  # an unreadable entry is a note, not a crash
    assert "novel-sample entry is from another eikd-edge version" in (root / "report.md").read_text()


def test_missing_run_folder_is_one_line_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "run folder not found" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")
def test_html_renders_in_headless_chromium(reported: tuple[Path, str], tmp_path: Path) -> None:
    """Every image decodes in a real browser and the page logs no console error, loaded from disk, offline."""
    run, _ = reported
    shot = tmp_path / "report.png"
    flags = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,2000",
    ]
    url = (run / "report.html").resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body and 'data-images-loaded="true"' in body.group(0), body
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    assert total and int(total.group(1)) >= 6
    snap = subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert snap.returncode == 0 and shot.stat().st_size > 10_000, snap.stderr[-2000:]
    for log in (dom.stderr, snap.stderr):  # the page logs nothing: any console line (error or not) is a finding
        assert "Uncaught" not in log and ":CONSOLE" not in log, log[-2000:]

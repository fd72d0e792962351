"""report: a real tiny run (distil -> export -> validate -> bench) gathered into report.json, report.md, report.html."""

from __future__ import annotations

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
from eikd_edge.report.confusion import Confusion
from eikd_edge.report.model import SECTIONS, TrainingSection
from eikd_edge.report.render_html import render_html
from eikd_edge.report.render_markdown import render_markdown
from eikd_edge.run_files import SelectionFile

runner = CliRunner()
FAST = ["train.epochs=2", "train.batch_size=16", "student.width=0.5", "selection.batch_size=64"]
CHROMIUM = next((Path(p) for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"


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
    """Plots are inline SVG (sharp at any zoom), the page references nothing outside itself and runs no script."""
    run, _ = reported
    html = (run / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "<img" not in html and "data:" not in re.sub(r"<image [^>]*>", "", html)  # thumbnails: inside the SVG
    svgs = re.findall(r"<figure[^>]*><svg\b.*?</svg>", html, re.S)
    assert len(svgs) >= 6  # histogram, curves, Pareto, 2 confusions, thumbnails
    for svg in svgs:
        assert "<path" in svg and 'viewBox="' in svg
    assert len(set(re.findall(r'\bid="([^"]+)"', html))) == len(re.findall(r'\bid="([^"]+)"', html))  # no clashes


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


def test_the_fixture_writes_selection_json_in_the_shape_distill_writes(
    run: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """tests/run_fixture.py builds its selection.json from run_files.SelectionFile: the keys `distill` writes, nested
    the same way, so the export, validate and report tests read the real format; the model reads a real file back
    field for field, in the order it was written."""
    real = json.loads((run / "selection.json").read_text())
    made = json.loads(fresh_run(tmp_path_factory, "fixture-shape").run.selection.read_text())

    def keys(data: dict) -> tuple[list[str], ...]:
        pool, row, entry = data["pool"], data["classes"][0], data["manifest"][0]
        return list(data), list(pool), list(pool["skipped"]), list(row), list(entry), list(data["settings"])

    assert keys(made) == keys(real)
    assert SelectionFile.model_validate(real).model_dump(mode="json", exclude_unset=True) == real


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
    "rule": "density + distance from the pool's bulk",
    "score_threshold": 2.0,
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
    assert "5 of 48 field images (10.4%) unlike the bulk of the pool" in markdown and "above 2.00" in markdown
    assert "| 0 | 3 | 7 | 0.812 | 0.31 |" in markdown and "| 1 | 2 | 4 | 0.700 | 0.42 |" in markdown
    assert "- cluster 0 (nearest 7): `1500.png`, `1501.png`, `gone.png`" in markdown
    novel_block = markdown[markdown.index("## Novel field samples") : markdown.index("## Training")]
    meta = re.compile(r"^eikd-edge .*$", re.MULTILINE)  # the creation time line differs between the two runs
    assert meta.sub("", markdown.replace(novel_block, "")) == meta.sub("", plain_md)
    assert '<section id="novel"><h2>Novel field samples</h2>' in html and '<a href="#novel">' in html
    assert "<td>0.812</td>" in html and '<td class="l">7</td>' in html
    figure = re.search(r'<figure role="img" aria-label="(Examples per novel-sample cluster[^"]*)"><svg', html)
    assert figure and "(1 image(s) missing from the pool)" in figure.group(1)
    assert html.count("<svg") == plain_html.count("<svg") + 1
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


def test_report_on_a_selection_only_folder_shows_cluster_thumbnails(tmp_path: Path, digit_images: Path) -> None:
    """`select --novel` promises that `report RUN` shows thumbnails of each cluster: it does, without a student."""
    out = tmp_path / "sel"
    select = ["select", "-t", str(EXAMPLE / "teacher.pt"), "-u", str(digit_images), "-o", str(out), "--novel"]
    assert "eikd-edge report RUN` shows thumbnails" in " ".join(_ok([*select, "--novel-clusters", "2"]).split())
    output = _ok(["report", str(out)])
    assert "Traceback" not in output and "no student.pt" in output
    report = Report.model_validate_json((out / "report.json").read_text())
    assert report.selection is not None and report.novel is not None and report.novel.clusters
    assert report.training is None and report.bench is None and report.confusion is None
    assert [r.model for r in report.headline.compression] == ["teacher"] and report.headline.quality == []
    html = (out / "report.html").read_text()
    assert 'aria-label="Examples per novel-sample cluster' in html and "<image " in html.split('id="novel"')[1]
    assert 'aria-label="Selection per class' in html and 'id="images"' in html
    assert sum("not validated" in n or "no benchmark" in n for n in report.notes) == 0  # one note, not one per stage


def test_report_refuses_a_folder_that_is_not_a_run(digit_images: Path) -> None:
    before = sorted(p.name for p in digit_images.iterdir())
    result = runner.invoke(app, ["report", str(digit_images)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "not a run folder" in result.output
    assert sorted(p.name for p in digit_images.iterdir()) == before


def _report(run: Path) -> Report:
    return Report.model_validate_json((run / "report.json").read_text())


def _overlap(a: object, b: object) -> float:
    """Area shared by two matplotlib Bbox extents (display units)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)  # type: ignore[attr-defined]
    height = min(a.y1, b.y1) - max(a.y0, b.y0)  # type: ignore[attr-defined]
    return max(width, 0) * max(height, 0)


def _drawn(fig: object) -> object:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # type: ignore[arg-type]
    canvas.draw()
    return canvas.get_renderer()


def test_selection_chart_legend_clear_of_the_bars_and_fair_share_in_the_table(reported: tuple[Path, str]) -> None:
    from eikd_edge.report.plots import selection_histogram

    run, _ = reported
    report = _report(run)
    sel = report.selection
    assert sel is not None and sel.fair_share == 4  # 45 selected (30 of 120 in the agreement slice) over 10 classes
    fig = selection_histogram(sel)
    renderer = _drawn(fig)
    (ax,) = fig.axes
    assert ax.get_xlabel() and ax.get_ylabel()
    (legend,) = fig.legends
    assert _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer)) == 0
    assert not ax.get_legend()
    markdown = (run / "report.md").read_text()
    assert "| class | candidates | fair share | quota | selected | deficit |" in markdown
    for c in sel.classes:  # the deficit is measured against the fair share the table shows
        assert c.deficit == max(0, sel.fair_share - c.candidates)
        assert f"| {c.name} | {c.candidates} | 4 | {c.quota} | {c.selected} | {c.deficit} |" in markdown


def test_training_curves_give_each_loss_term_its_own_scale() -> None:
    """KD falling 18 -> 4 beside feature ~0.05 and relation ~0.08: every term fills its own panel; same epoch ticks."""
    from eikd_edge.report.plots import training_curves

    kd = [18.0, 11.0, 7.0, 5.0, 4.0]
    history = [
        {"epoch": e + 1, "loss": {"kd": kd[e], "feature": 0.05 + 0.002 * e, "relation": 0.08 - 0.003 * e},
         "agreement": 0.5 + 0.1 * e, "val_top1": None}
        for e in range(5)
    ]  # fmt: skip
    fig = training_curves(TrainingSection(method="eikd", summary={}, best_epoch=5, history=history))
    _drawn(fig)
    loss_axes = {ax.get_title(): ax for ax in fig.axes if "loss" in ax.get_title()}
    assert set(loss_axes) == {"KD loss", "feature loss", "relation loss"}
    for title, values in (("KD loss", kd), ("feature loss", [h["loss"]["feature"] for h in history])):
        low, high = loss_axes[title].get_ylim()
        assert (max(values) - min(values)) / (high - low) > 0.5, title  # the curve spans most of its panel
    visible = [ax for ax in fig.axes if ax.axison]
    ticks = {tuple(ax.get_xticks()) for ax in visible}
    assert len(visible) == 4 and len(ticks) == 1 and all(float(t).is_integer() for t in ticks.pop())
    for ax in visible:
        assert not ax.get_legend()


def test_confusion_colour_bar_counts_are_whole_numbers() -> None:
    from eikd_edge.report.plots import confusion_plot

    matrix = Confusion(
        title="Student vs teacher", reference="teacher", images="6 field images",
        classes=["a", "b", "c"], counts=[[3, 0, 0], [1, 1, 0], [0, 0, 1]], n=6, agreement=5 / 6,
    )  # fmt: skip
    fig = confusion_plot(matrix)
    _drawn(fig)
    colour_bar = next(ax for ax in fig.axes if ax.get_ylabel() == "images")
    ticks = [t for t in colour_bar.get_yticks() if 0 <= t <= 3]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)


def _failed_onnx(run: Path, tmp_path: Path) -> Path:
    """A copy of the run whose latest validation failed the ONNX artifact's gate."""
    copy = tmp_path / "failed"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report.*"))
    validated = json.loads((copy / "validate.json").read_text())
    validated["artifacts"]["onnx"]["status"] = "failed_gate"
    validated["artifacts"]["onnx"]["parity"]["passed"] = False
    validated["passed"] = False
    (copy / "validate.json").write_text(json.dumps(validated))
    return copy


def test_failed_artifact_is_never_ok_and_is_drawn_apart(run: Path, tmp_path: Path) -> None:
    from eikd_edge.report.plots import pareto_chart

    failed = _failed_onnx(run, tmp_path)
    _ok(["report", str(failed), "--no-confusion"])
    markdown = (failed / "report.md").read_text()
    bench = markdown[markdown.index("## Benchmark") : markdown.index("## Confusion")]
    onnx_rows = [line for line in bench.splitlines() if line.startswith("| ort | onnx |")]
    assert len(onnx_rows) == 2 and all(row.endswith("| failed gate |") for row in onnx_rows)
    assert "onnx: failed its validation gate" in bench
    html = (failed / "report.html").read_text()
    assert '<td class="l fail">failed gate</td>' in html
    fig = pareto_chart(_report(failed))
    assert fig is not None
    _drawn(fig)
    (ax,) = fig.axes
    assert not ax.texts  # points are named in the legend: no free labels to overlap
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    onnx = next(c for c in ax.collections if c.get_label().startswith("onnx"))
    assert "FAILED gate" in onnx.get_label() and not onnx.get_facecolors()[:, 3].any()  # hollow
    front = next(line for line in ax.lines if line.get_label().startswith("Pareto front"))
    assert any(label.startswith("Pareto front") for label in labels)
    assert onnx.get_offsets()[0][0] not in list(front.get_xdata())  # a failed artifact is never on the front


def test_one_point_front_has_a_visible_legend_entry(reported: tuple[Path, str]) -> None:
    from eikd_edge.report.plots import pareto_chart

    run, _ = reported
    fig = pareto_chart(_report(run))
    assert fig is not None
    renderer = _drawn(fig)
    (ax,) = fig.axes
    (legend,) = fig.legends
    assert _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer)) == 0 and not ax.texts
    labels = [t.get_text() for t in legend.get_texts()]
    front = legend.legend_handles[next(i for i, label in enumerate(labels) if label.startswith("Pareto front"))]
    assert front.get_marker() not in (None, "", "None", " ")  # one point: a line alone would draw nothing
    assert all("n=5: latency unreliable" in label for label in labels if not label.startswith("Pareto"))


def test_speedups_from_too_few_iterations_are_not_headlined(run: Path, tmp_path: Path) -> None:
    """A real bench of one timed call per row: no speed-up figure, no `± 0.000`, "n=1" instead."""
    once = tmp_path / "once"
    shutil.copytree(run, once, ignore=shutil.ignore_patterns("report.*"))
    _ok(["bench", str(once), "--batch", "1", "--iters", "1", "--warmup", "0", "--threads", "1"])
    output = _ok(["report", str(once), "--no-confusion"])
    markdown = (once / "report.md").read_text()
    speed = markdown[markdown.index("### Speed-up") : markdown.index("### Agreement")]
    rows = [line for line in speed.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows and all(row.endswith("| 1 | unreliable |") is False for row in rows)
    assert all(row.split("|")[5].strip() == "1" and row.rstrip(" |").endswith("unreliable") for row in rows)
    assert "×" not in "".join(rows) and "unreliable: fewer than 10 timed iterations" in speed
    bench = [line for line in markdown.split("## Benchmark")[1].splitlines() if line.startswith("| torch |")]
    assert "unreliable" in output and "± 0.000" not in markdown and bench
    assert all(" ± " not in row and "(n=1)" in row for row in bench)
    report = _report(once)
    assert report.headline.speed and not any(r.reliable for r in report.headline.speed)


def test_reliable_speedups_are_headlined(reported: tuple[Path, str]) -> None:
    run, _ = reported
    report = _report(run).model_copy(deep=True)
    for row in report.headline.speed:
        row.iters, row.reliable = 200, True
    markdown = render_markdown(report)
    speed = markdown[markdown.index("### Speed-up") : markdown.index("### Agreement")]
    assert "unreliable" not in speed and "| 1.00× |" in speed


def test_thumbnail_captions_are_explained(reported: tuple[Path, str]) -> None:
    run, _ = reported
    html = render_html(_report(run))
    images = html[html.index('<section id="images">') :]
    assert "the class the teacher predicts and its confidence" in images
    assert re.search(r">class \d</tspan>|>class \d<", images) and re.search(r"conf 0\.\d\d", images)
    assert "(class " in (run / "report.md").read_text() and "teacher confidence 0." in (run / "report.md").read_text()


PROBE = """<script>
window.addEventListener("load", function () {
  var width = document.documentElement.clientWidth, out = {figures: [], overflow: [], overlaps: []};
  document.querySelectorAll("figure").forEach(function (f) {
    var svg = f.querySelector("svg"), box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    out.figures.push({label: f.getAttribute("aria-label"), w: box.width, h: box.height,
                      paths: svg ? svg.querySelectorAll("path").length : 0});
    if (!svg) return;
    var legends = svg.querySelectorAll('[id$="-legend"]'), axes = svg.querySelectorAll('[id*="-axes"]');
    legends.forEach(function (l) { var a = l.getBoundingClientRect();
      axes.forEach(function (x) { var b = x.getBoundingClientRect();
        var w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
        var h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
        if (w > 1 && h > 1) out.overlaps.push(l.id + " over " + x.id); }); });
  });
  document.querySelectorAll("body *").forEach(function (e) {
    if (e.closest(".wide") || e.closest("svg") && e.tagName.toLowerCase() !== "svg") return;
    if (e.getBoundingClientRect().right > width + 1) out.overflow.push(e.tagName + "." + e.className);
  });
  out.scrollWidth = document.documentElement.scrollWidth; out.width = width;
  var pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--enable-logging=stderr",
             "--v=0"]  # fmt: skip
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH: apt-get install chromium (.ci/run installs it where it may)"
)
@pytest.mark.parametrize("width", [1280, 800])
def test_html_renders_in_headless_chromium(reported: tuple[Path, str], tmp_path: Path, width: int) -> None:
    """In a real browser, offline: a screenshot is taken, every plot draws (an SVG with paths, rendered size > 0),
    no legend sits on a plot's axes, nothing is wider than the window, and the page logs nothing."""
    run, _ = reported
    page = tmp_path / "report.html"
    page.write_text((run / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(f"--window-size={width},2000", "--dump-dom", page.as_uri(), profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    probe = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert probe, dom.stdout[-2000:]
    found = json.loads(probe.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(found["figures"]) >= 6
    for fig in found["figures"]:
        assert fig["w"] > 100 and fig["h"] > 50 and fig["paths"] > 0, fig
    assert found["overlaps"] == [] and found["overflow"] == [] and found["scrollWidth"] <= found["width"], found
    shot = tmp_path / "report.png"
    snap = _chromium(f"--window-size={width},4000", f"--screenshot={shot}", (run / "report.html").as_uri(),
                     profile=tmp_path / "profile2")  # fmt: skip
    assert snap.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", snap.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    for log in (dom.stderr, snap.stderr):  # the page logs nothing: any console line (error or not) is a finding
        assert "Uncaught" not in log and ":CONSOLE" not in log, log[-2000:]


def test_an_int8_model_slower_than_fp32_is_never_recommended(reported: tuple[Path, str], tmp_path: Path) -> None:
    """On the exporting machine (export.json says so) and in the run's own benchmark (an INT8 row slower than the
    FP32 ONNX row at the same batch), the report says to deploy FP32 instead."""
    run, _ = reported
    copy = tmp_path / "slow-int8"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report.*"))
    exported = json.loads((copy / "export" / "export.json").read_text())
    exported["artifacts"]["onnx-int8"] = {**exported["artifacts"]["onnx"], "precision": "int8", "recommended": False}
    (copy / "export" / "export.json").write_text(json.dumps(exported))
    bench = json.loads((copy / "bench.json").read_text())
    onnx_row = next(r for r in bench["rows"] if r["model"] == "onnx" and r["batch"] == 4)
    slow = {**onnx_row, "model": "onnx-int8", "backend": "ort-int8", "precision": "int8"}
    slow["latency_ms"] = {k: v * 2 for k, v in onnx_row["latency_ms"].items()}
    fast = {**slow, "batch": 1, "latency_ms": {k: v / 100 for k, v in onnx_row["latency_ms"].items()}}
    bench["rows"] += [slow, fast]
    (copy / "bench.json").write_text(json.dumps(bench))
    output = _ok(["report", str(copy), "--no-confusion"])
    notes = _report(copy).notes
    assert "not recommended" in output
    assert any(n.startswith("onnx-int8 was not faster than FP32 on the machine that exported it") for n in notes)
    slower = [n for n in notes if n.startswith("onnx-int8 is not faster than onnx (FP32) in this benchmark")]
    assert len(slower) == 1 and "at batch 4" in slower[0], notes  # batch 1 is faster: no note for it
    assert not any("onnx-int8" in n for n in _report(run).notes)

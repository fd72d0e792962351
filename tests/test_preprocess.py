"""The resize policy on real photographs at 224: every policy checked pixel for pixel against Pillow done by hand,
the reduced-size JPEG decode against a full decode, EXIF rotation, defaults, records and the places the policy shows.

The photos are scikit-learn's bundled samples (china.jpg, flower.jpg) brought to camera sizes here: a 640x480
landscape, a portrait stored sideways with an EXIF rotation, and a 1920x1440 for the reduced-size decode.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from eikd_edge import preprocess
from eikd_edge.checkpoint import load_student, save_student
from eikd_edge.cli import app
from eikd_edge.data import DecodeReport, decode_image, iter_decoded, resize_center_crop
from eikd_edge.errors import EikdError
from eikd_edge.export.onnx import export_onnx, read_metadata
from eikd_edge.models.spec import InputSpec, parse_resize_flag
from eikd_edge.models.zoo import build_model

runner = CliRunner()
BILINEAR, BICUBIC, NEAREST = Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.NEAREST
ROTATE_90_CW = 6  # EXIF orientation: the stored pixels are shown turned 90 degrees clockwise


def _photo(name: str, size: tuple[int, int]) -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(name)).resize(size, Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    china = _photo("china.jpg", (640, 480))
    china.save(folder / "landscape.png")
    china.save(folder / "landscape.jpg", quality=92)
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90_CW
    flower = _photo("flower.jpg", (640, 480))  # stored landscape, shown as a 480x640 portrait
    flower.save(folder / "portrait.jpg", quality=92, exif=exif.tobytes())
    big = _photo("china.jpg", (1920, 1440))
    big.save(folder / "big.jpg", quality=92)
    big.save(folder / "big_portrait.jpg", quality=92, exif=exif.tobytes())
    return {p.name: p for p in folder.iterdir()}


def _shown(path: Path) -> Image.Image:
    """The photo as a viewer shows it: full decode, EXIF rotation applied, RGB."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


# ----------------------------------------------------------------------------- each policy against Pillow by hand


def test_default_at_224_is_resize_256_then_centre_crop_224(photos: dict[str, Path]) -> None:
    spec = InputSpec((224, 224))
    assert (spec.resize, spec.crop_pct, spec.interpolation) == ("center_crop", 0.875, "bilinear")
    # 640x480: shorter side 480 -> 256, longer 640 -> round(341.3) = 341; crop offsets (341-224)//2, (256-224)//2
    for name in ("landscape.png", "landscape.jpg"):  # lossless, and a JPEG too small for a reduced-size decode
        expected = _shown(photos[name]).resize((341, 256), BILINEAR).crop((58, 16, 58 + 224, 16 + 224))
        assert np.array_equal(decode_image(photos[name], spec), _pixels(expected))


def test_resize_size_256_is_crop_pct_0875_and_non_square_inputs_cover_the_box(photos: dict[str, Path]) -> None:
    by_size = InputSpec.from_dict({"input_size": 224, "resize_size": 256})
    assert by_size == InputSpec((224, 224)) and preprocess.resize_box(by_size) == (256, 256)
    assert preprocess.resize_box(InputSpec.from_dict({"input_size": 224, "resize_size": 255})) == (255, 255)
    wide = InputSpec((224, 320), crop_pct=0.875)  # box 256x365; 640x480 is scaled by max(256/480, 365/640)
    assert preprocess.resize_box(wide) == (256, 365)
    scale = max(256 / 480, 365 / 640)
    new_w, new_h = round(640 * scale), round(480 * scale)
    left, top = (new_w - 320) // 2, (new_h - 224) // 2
    expected = _shown(photos["landscape.png"]).resize((new_w, new_h), BILINEAR).crop((left, top, left + 320, top + 224))
    assert np.array_equal(decode_image(photos["landscape.png"], wide), _pixels(expected))


def test_squash_resizes_both_sides_and_ignores_the_aspect(photos: dict[str, Path]) -> None:
    spec = InputSpec((224, 224), resize="squash")
    assert spec.crop_pct == 1.0  # squash means the whole image, unless a crop is asked for
    expected = _shown(photos["landscape.png"]).resize((224, 224), BILINEAR)
    assert np.array_equal(decode_image(photos["landscape.png"], spec), _pixels(expected))
    cropped = InputSpec((224, 224), resize="squash", crop_pct=0.875)  # timm's squash: 256x256, then the centre
    expected = _shown(photos["landscape.png"]).resize((256, 256), BILINEAR).crop((16, 16, 240, 240))
    assert np.array_equal(decode_image(photos["landscape.png"], cropped), _pixels(expected))


def test_letterbox_fits_inside_and_pads_evenly_with_the_pad_value(photos: dict[str, Path]) -> None:
    spec = InputSpec((224, 224), resize="letterbox", pad_value=(114, 114, 114))
    array = decode_image(photos["landscape.png"], spec)
    # 640x480 fits as 224x168: 28 rows of padding above and below, nothing cut off
    assert (array[:28] == 114).all() and (array[196:] == 114).all()
    inside = _shown(photos["landscape.png"]).resize((224, 168), BILINEAR)
    assert np.array_equal(array[28:196], _pixels(inside))
    # the portrait (shown 480x640) fits as 168x224: the padding is on the left and right, black by default
    portrait = decode_image(photos["portrait.jpg"], InputSpec((224, 224), resize="letterbox"))
    assert (portrait[:, :28] == 0).all() and (portrait[:, 196:] == 0).all()
    with Image.open(photos["portrait.jpg"]) as stored:  # 168x224 is needed: the JPEG is decoded at half size
        stored.draft(None, (224, 168))
        assert stored.size == (320, 240)
        inside = ImageOps.exif_transpose(stored).convert("RGB").resize((168, 224), BILINEAR)
    assert np.array_equal(portrait[:, 28:196], _pixels(inside))


@pytest.mark.parametrize(("name", "resample"), [("bicubic", BICUBIC), ("nearest", NEAREST)])
def test_interpolation_is_the_one_named(photos: dict[str, Path], name: str, resample: Image.Resampling) -> None:
    spec = InputSpec((224, 224), interpolation=name)
    expected = _shown(photos["landscape.png"]).resize((341, 256), resample).crop((58, 16, 282, 240))
    got = decode_image(photos["landscape.png"], spec)
    assert np.array_equal(got, _pixels(expected))
    assert not np.array_equal(got, decode_image(photos["landscape.png"], InputSpec((224, 224))))  # not bilinear


def test_portrait_with_exif_rotation_is_cropped_as_shown(photos: dict[str, Path]) -> None:
    with Image.open(photos["portrait.jpg"]) as stored:
        assert stored.size == (640, 480) and stored.getexif()[0x0112] == ROTATE_90_CW
    shown = _shown(photos["portrait.jpg"])
    assert shown.size == (480, 640)
    expected = shown.resize((256, 341), BILINEAR).crop((16, 58, 240, 282))  # shorter side (width) to 256
    assert np.array_equal(decode_image(photos["portrait.jpg"], InputSpec((224, 224))), _pixels(expected))


# ----------------------------------------------------------------------------- small inputs keep what they had


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (16, 24)])
def test_small_inputs_keep_the_whole_image_exactly_as_before(photos: dict[str, Path], size: tuple[int, int]) -> None:
    spec = InputSpec(size)
    assert spec.crop_pct == 1.0 and spec.interpolation == "bilinear"
    for name in ("landscape.png", "portrait.jpg", "big.jpg"):
        got = decode_image(photos[name], spec)
        assert np.array_equal(got, decode_image(photos[name], size))  # a plain size means the same
        if name == "landscape.png":
            assert np.array_equal(got, _pixels(resize_center_crop(_shown(photos[name]), size)))
    assert InputSpec((65, 65)).crop_pct == 0.875 and InputSpec((224, 224), resize="letterbox").crop_pct == 1.0


def test_the_legacy_centre_crop_is_unchanged_by_hand(photos: dict[str, Path]) -> None:
    """What every 32-px run decoded before the policy existed: shorter side to 32, floor-centred crop, bilinear."""
    shown = _shown(photos["landscape.png"])
    expected = shown.resize((43, 32), BILINEAR).crop((5, 0, 37, 32))  # 640x480 -> round(42.67) x 32
    assert np.array_equal(_pixels(resize_center_crop(shown, (32, 32))), _pixels(expected))


# ----------------------------------------------------------------------------- reduced-size JPEG decode


@pytest.mark.parametrize(
    ("spec", "scaled"),
    [
        (InputSpec((224, 224)), (480, 360)),  # needs 341x256: 1/4 scale is the smallest that covers it
        (InputSpec((224, 224), resize="squash"), (480, 360)),  # needs 224x224
        (InputSpec((224, 224), resize="letterbox"), (240, 180)),  # needs 224x168: 1/8
        (InputSpec((32, 32)), (240, 180)),  # as before: the shorter side at least 32
    ],
)
def test_draft_decode_matches_a_full_decode(photos: dict[str, Path], spec: InputSpec, scaled: tuple[int, int]) -> None:
    path = photos["big.jpg"]
    with Image.open(path) as image:
        image.draft(None, preprocess.draft_request(spec, *image.size))
        assert image.size == scaled
        by_hand = _pixels(preprocess.apply(image.convert("RGB"), spec))
    got = decode_image(path, spec)
    assert np.array_equal(got, by_hand)  # decode_image really decodes at the reduced size
    full = _pixels(preprocess.apply(_shown(path), spec)).astype(int)
    diff = np.abs(got.astype(int) - full)
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 16, (diff.mean(), np.percentile(diff, 99))


def test_draft_size_follows_the_exif_rotation(photos: dict[str, Path]) -> None:
    """A portrait input (320x224) letterboxed from a sideways-stored portrait: the need is turned back to the stored
    orientation, or the decoder would hand over too few pixels along the image's long side."""
    spec = InputSpec((320, 224), resize="letterbox")
    assert preprocess.draft_request(spec, 1920, 1440, ROTATE_90_CW) == (298, 224)
    assert preprocess.draft_request(spec, 1920, 1440, 1) == (224, 168)
    path = photos["big_portrait.jpg"]
    got = decode_image(path, spec).astype(int)
    full = _pixels(preprocess.apply(_shown(path), spec)).astype(int)
    assert got.shape == (320, 224, 3) and np.abs(got - full).mean() < 2.0
    # as shown (1440x1920) it fits as 224x299 between two rows of padding
    assert (got[:10] == 0).all() and not (got[20:300] == 0).all()


# ----------------------------------------------------------------------------- the spec: sidecar keys and records


def test_sidecar_keys_and_the_resize_flag() -> None:
    spec = InputSpec.from_dict(
        {"input_size": 224, "resize": "Letterbox", "interpolation": "BICUBIC", "pad_value": [1, 2, 3]}
    )
    assert (spec.resize, spec.interpolation, spec.pad_value, spec.crop_pct) == ("letterbox", "bicubic", (1, 2, 3), 1.0)
    assert parse_resize_flag("256,bicubic") == {"resize_size": 256, "interpolation": "bicubic"}
    assert parse_resize_flag("squash, 0.9") == {"resize": "squash", "crop_pct": 0.9}
    for bad in ("stretch", "256,0.9", "bicubic,bilinear", "", "0.9.1"):
        with pytest.raises(EikdError, match="--resize: cannot read"):
            parse_resize_flag(bad)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"resize": "stretch"}, "resize: expected one of center_crop, squash, letterbox"),
        ({"interpolation": "lanczos"}, "interpolation: expected one of bilinear, bicubic, nearest"),
        ({"crop_pct": 1.5}, "crop_pct must be a fraction between 0.25 and 1"),
        ({"crop_pct": float("nan")}, "crop_pct must be a fraction"),
        ({"crop_pct": 0.9, "resize_size": 256}, "give crop_pct or resize_size, not both"),
        ({"resize_size": 100}, "resize_size is the shorter side"),
        ({"resize": "letterbox", "crop_pct": 0.9}, "letterbox keeps the whole image"),
        ({"pad_value": 300}, "pad_value must be a grey level 0-255"),
    ],
)
def test_bad_policy_keys_are_one_clear_error(data: dict, message: str) -> None:
    with pytest.raises(EikdError, match=message):
        InputSpec.from_dict({"input_size": 224, **data}, source="t.yaml")


def _student(tmp_path: Path, spec: InputSpec) -> Path:
    torch.manual_seed(0)
    model = build_model("cifar_resnet8", len(spec.classes), width=0.5).eval()
    return save_student(tmp_path / "student.pt", model, "cifar_resnet8", {"width": 0.5}, spec)


def test_student_pt_records_the_policy_and_old_files_load_with_the_one_they_were_made_with(tmp_path: Path) -> None:
    spec = InputSpec((224, 224), classes=("a", "b"), resize="squash", interpolation="bicubic")
    path = _student(tmp_path, spec)
    assert load_student(path).spec == spec
    payload = torch.load(path, weights_only=True)
    assert payload["spec"]["resize"] == "squash" and payload["spec"]["crop_pct"] == 1.0
    for key in ("resize", "crop_pct", "interpolation", "pad_value"):  # as written before the policy existed
        del payload["spec"][key]
    torch.save(payload, path)
    old = load_student(path).spec
    assert old.input_size == (224, 224) and old.classes == ("a", "b")
    assert (old.resize, old.crop_pct, old.interpolation) == ("center_crop", 1.0, "bilinear")


def test_onnx_metadata_carries_the_policy(tmp_path: Path) -> None:
    spec = InputSpec((32, 32), classes=("a", "b"), resize="letterbox", interpolation="bicubic", pad_value=(114,) * 3)
    built = export_onnx(load_student(_student(tmp_path, spec)), tmp_path / "student.onnx")
    meta = read_metadata(built.path)
    assert meta["resize"] == "letterbox" and meta["interpolation"] == "bicubic" and meta["crop_pct"] == "1"
    assert meta["resize_size"] == "[32, 32]" and meta["pad_value"] == "[114, 114, 114]"
    assert meta["preprocess"] == "letterbox: fit inside 32x32, pad 114, bicubic"
    default = InputSpec((224, 224), classes=("a", "b"))
    assert preprocess.metadata(default)["resize_size"] == "[256, 256]"
    assert preprocess.metadata(default)["preprocess"] == "shorter side to 256, centre crop 224x224, bilinear"


def test_iter_decoded_uses_the_spec_policy(photos: dict[str, Path]) -> None:
    spec = InputSpec((224, 224), resize="letterbox", pad_value=(7, 7, 7))
    (batch,) = list(iter_decoded([photos["landscape.png"], photos["portrait.jpg"]], spec, 8, DecodeReport()))
    assert batch.images.shape == (2, 3, 224, 224)
    assert (batch.images[0, :, :28] == 7).all() and (batch.images[1, :, :, :28] == 7).all()


# ----------------------------------------------------------------------------- inspect


def test_inspect_shows_the_policy_and_takes_the_resize_flag(script_teacher: Path) -> None:
    plain = runner.invoke(app, ["inspect", str(script_teacher)], terminal_width=200)
    assert plain.exit_code == 0, plain.output
    assert "shorter side to 32, centre crop 32x32, bilinear" in plain.output
    big = runner.invoke(app, ["inspect", str(script_teacher), "--input-size", "224"], terminal_width=200)
    assert "shorter side to 256, centre crop 224x224, bilinear" in big.output, big.output
    args = ["inspect", str(script_teacher), "--input-size", "224", "--resize", "letterbox,bicubic"]
    flagged = runner.invoke(app, args, terminal_width=200)
    assert "letterbox: fit inside 224x224, pad 0, bicubic" in flagged.output, flagged.output
    bad = runner.invoke(app, ["inspect", str(script_teacher), "--resize", "stretch"])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert [line for line in bad.output.splitlines() if line.startswith("error:")] == [
        line for line in bad.output.splitlines() if "--resize: cannot read" in line
    ]


# ----------------------------------------------------------------------------- a run: scored, trained and recorded


def test_a_run_scores_with_the_policy_and_records_it(tmp_path: Path, script_teacher: Path) -> None:
    """Wide field images (a digit beside blank space): letterboxed, the teacher sees the digit; centre-cropped, it
    would see the blank middle. The confidences in selection.json are the letterboxed ones, and student.pt and the
    recipe keep the policy."""
    import yaml
    from sklearn.datasets import load_digits

    from eikd_edge.data import normalize
    from eikd_edge.models.teacher import load_teacher

    pool = tmp_path / "pool"
    pool.mkdir()
    digits = load_digits().images[:30]
    for i, digit in enumerate(digits):
        wide = np.zeros((8, 24), dtype=np.uint8)
        wide[:, :8] = np.round(digit * 255 / 16)
        Image.fromarray(wide, mode="L").save(pool / f"{i:02d}.png")
    out = tmp_path / "run"
    sets = ["train.epochs=1", "train.batch_size=16", "student.width=0.5", "selection.batch_size=64"]
    args = ["distill", "-t", str(script_teacher), "-u", str(pool), "-o", str(out), "--resize", "letterbox,nearest"]
    result = runner.invoke(app, [*args, *(a for s in sets for a in ("--set", s))], terminal_width=200)
    assert result.exit_code == 0, result.output

    payload = torch.load(out / "student.pt", weights_only=True)
    assert payload["spec"]["resize"] == "letterbox" and payload["spec"]["interpolation"] == "nearest"
    resolved = yaml.safe_load((out / "recipe.resolved.yaml").read_text())
    assert resolved["inputs"]["spec_overrides"] == {"resize": "letterbox", "interpolation": "nearest"}

    teacher = load_teacher(script_teacher)
    letterboxed = InputSpec.from_record(payload["spec"])
    entry = next(e for e in json.loads((out / "selection.json").read_text())["manifest"] if e["path"] == "00.png")

    def confidence(spec: InputSpec) -> float:
        image = torch.from_numpy(np.array(decode_image(pool / "00.png", spec))).permute(2, 0, 1)[None]
        logits, _ = teacher.predict(normalize(image, spec))
        return float(logits.softmax(1).max())

    assert entry["confidence"] == pytest.approx(confidence(letterboxed), abs=1e-4)
    assert entry["confidence"] != pytest.approx(confidence(teacher.spec), abs=1e-3)

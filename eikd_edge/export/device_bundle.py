"""What goes to the device with build_engine.sh, and what must not stay behind when the target changes.

The export folder is the unit a user copies to the device. For on-device validation it carries the run's parity
images (uint8, as decoded here), the FP32 student's logits on them, the normalisation (parity.json) and
eikd_device.py, which validates the engines there and writes device-result.json. One export folder states one target:
re-exporting for another target removes the previous target's script, caches, engines and device-side ONNX files.
"""

from __future__ import annotations

import hashlib
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from eikd_edge.atomic import write_atomic, write_json_atomic
from eikd_edge.backends import device_bound_formats
from eikd_edge.export.record import read_record
from eikd_edge.export.targets import Target
from eikd_edge.formats import (
    DEVICE_SCRIPT,
    PARITY_IMAGES,
    PARITY_JSON,
    PARITY_REFERENCE,
    TARGET_FILES,
    build_record_path,
)
from eikd_edge.models.spec import InputSpec
from eikd_edge.run import RunPaths

PARITY_FORMAT = "eikd-edge/parity-set"


def device_script_source() -> Path | None:
    """The on-device helper shipped inside the package (eikd_edge/resources/device), or None if a broken install
    lacks it."""
    path = Path(str(resources.files("eikd_edge") / "resources" / "device" / DEVICE_SCRIPT))
    return path if path.is_file() else None


def copy_device_script(export_dir: Path) -> Path | None:
    source = device_script_source()
    if source is None:
        return None
    target = export_dir / DEVICE_SCRIPT
    write_atomic(target, lambda tmp: shutil.copyfile(source, tmp))
    target.chmod(0o755)
    return target


def write_parity_set(export_dir: Path, images: np.ndarray, student: np.ndarray, spec: InputSpec, **meta: Any) -> str:
    """parity.images.npy (uint8 NCHW), parity.reference.npy (FP32 student logits), parity.json; returns the sha256
    of the reference file, which a device result must name to be imported into this run."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    reference = np.ascontiguousarray(student, dtype=np.float32)
    write_atomic(export_dir / PARITY_IMAGES, lambda tmp: _save(tmp, images))
    write_atomic(export_dir / PARITY_REFERENCE, lambda tmp: _save(tmp, reference))
    digest = hashlib.sha256((export_dir / PARITY_REFERENCE).read_bytes()).hexdigest()
    data = {
        "format": PARITY_FORMAT,
        "n": len(images),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "input_name": "images",
        "classes": len(spec.classes),
        "reference_sha256": digest,
        **meta,
    }
    write_json_atomic(export_dir / PARITY_JSON, data)
    return digest


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save on a path would append .npy to the temporary name
        np.save(handle, array, allow_pickle=False)


def clear_other_target(run: RunPaths, target: Target) -> list[str]:
    """When export.json names another target, remove that target's files and its TensorRT entries (notes say so)."""
    record = read_record(run)
    previous = record.get("target")
    if not previous or previous == target.name:
        return []
    engines = [f.file for f in device_bound_formats()]
    names = [
        *TARGET_FILES,
        *(n + ".refused" for n in TARGET_FILES),
        *engines,
        *(build_record_path(Path(e)).name for e in engines),
    ]
    removed = []
    for name in names:
        path = run.export_dir / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    bound = {f.name for f in device_bound_formats()}
    record["artifacts"] = {k: v for k, v in record["artifacts"].items() if k not in bound}
    for key in ("on_device", "device_results"):
        record.pop(key, None)
    record["target"] = target.name
    if run.export_record.is_file():
        write_json_atomic(run.export_record, record)
    if not removed:
        return []
    return [f"export folder was for {previous}: removed its {', '.join(removed)}"]

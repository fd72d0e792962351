"""Read a torch.export `.pt2` archive as data before `torch.export.load` sees it.

`torch.export.load` is not a safe loader: it unpickles weights and constants flagged `use_pickle` (with
`weights_only=False`), opaque and custom (torchbind) objects, legacy weight files and sample inputs that the
weights-only unpickler refuses, loads AOTInductor shared libraries, passes the program's symbolic shape
expressions to `sympy.sympify` (which evaluates Python), and calls any `torch.*`, `operator.*` or `math.*`
attribute a graph node names. A teacher exported from an ordinary classifier needs none of this, so without
`--trust-pickle` any of it refuses the file with the reason, before a single byte is unpickled.
"""

from __future__ import annotations

import io
import json
import keyword
import math
import operator
import re
import tokenize
import zipfile
from collections.abc import Iterator
from typing import Any

from eikd_edge.errors import EikdError

WEIGHTS_CONFIG = re.compile(r"^data/weights/[^/]+_weights_config\.json$")
CONSTANTS_CONFIG = re.compile(r"^data/constants/[^/]+_constants_config\.json$")
MODEL_JSON = re.compile(r"^models/[^/]+\.json$")
SAMPLE_INPUTS = re.compile(r"^data/sample_inputs/[^/]+\.pt$")
LEGACY_PAYLOAD = re.compile(r"^data/(weights|constants)/[^/]+\.pt$")
CODE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")
# the files of the pre-2.6 format, which torch.export.load falls back to (and unpickles) when the new one fails
OLD_FORMAT = {"serialized_exported_program.json", "serialized_state_dict.json", "serialized_constants.json"}

_ALLOWED_NAMESPACES = {"aten", "prims"}
_ALLOWED_HIGHER_ORDER = {
    "cond",
    "while_loop",
    "map_impl",
    "scan",
    "invoke_subgraph",
    "wrap_with_set_grad_enabled",
    "wrap_with_autocast",
}
_SAFE_OPERATOR = {
    "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pos", "pow", "abs",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_", "xor",
}  # fmt: skip
_SAFE_MATH = {"ceil", "floor", "trunc", "sqrt"}
_SAFE_TORCH = {"sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sqrt", "sym_sum"}

# what sympy.srepr writes for shape expressions, and the functions torch's deserializer adds to sympify's namespace
_SYMPY_NAMES = {
    "Symbol", "Dummy", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "floor",
    "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan",
    "Equality", "Unequality", "And", "Or", "Not", "Xor", "true", "false", "Piecewise", "ExprCondPair", "ITE", "oo",
    "zoo", "nan", "Infinity", "NegativeInfinity", "IntInfinity", "NegativeIntInfinity", "int_oo", "Half", "One",
    "Zero", "NegativeOne", "sqrt", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat",
    "Identity", "integer", "positive", "negative", "nonnegative", "nonpositive", "real", "finite", "infinite",
    "zero", "nonzero", "even", "odd", "precision", "evaluate", "True", "False", "None",
}  # fmt: skip
_SYMBOL = re.compile(r"^[a-z]+[0-9]+$")  # s0, s77, u3, zuf0: the shape symbols torch names
_EXPR_OPS = {"(", ")", ",", "=", "+", "-", "*", "/", "//", "**", "%", "<", ">", "<=", ">=", "==", "!=", "~", "&", "|"}
MAX_EXPR_CHARS = 2000


def check_pt2(data: bytes, name: str) -> None:
    """Refuse the archive (EikdError naming the reason) if loading it could run code from the file."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = {info.filename: info for info in archive.infolist() if not info.is_dir()}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise EikdError(f"{name} is not a readable .pt2 archive ({exc})") from None
    root, files = _split_root(entries, name)
    reasons = list(_reasons(archive, root, files, name))
    if reasons:
        raise EikdError(
            f"{name} is a torch.export archive that would run code from the file when loaded ({reasons[0]}"
            f"{f', and {len(reasons) - 1} more' if len(reasons) > 1 else ''}); re-run with --trust-pickle only if "
            "you trust its author, or re-export it with plain tensors"
        )


def _split_root(entries: dict[str, zipfile.ZipInfo], name: str) -> tuple[str, set[str]]:
    """Every entry of a .pt2 sits under one folder; files outside it feed torch's fallback to the old format."""
    roots = {filename.split("/", 1)[0] for filename in entries}
    if len(roots) != 1 or any("/" not in filename for filename in entries):
        raise EikdError(f"{name} is not a torch.export archive: its files do not share one top folder")
    root = roots.pop() + "/"
    return root, {filename[len(root) :] for filename in entries}


def _reasons(archive: zipfile.ZipFile, root: str, files: set[str], name: str) -> Iterator[str]:
    for path in sorted(files):
        if path.startswith(CODE_DIRS):
            yield f"it carries compiled code ({path})"
        elif LEGACY_PAYLOAD.match(path):
            yield f"it stores weights in the legacy pickled format ({path})"
        elif path.rsplit("/", 1)[-1] in OLD_FORMAT:
            yield f"it carries files of the old pickled format ({path})"
    for path in sorted(files):
        if WEIGHTS_CONFIG.match(path) or CONSTANTS_CONFIG.match(path):
            yield from _payload_reasons(_json(archive, root + path, name), path)
        elif SAMPLE_INPUTS.match(path):
            yield from _sample_input_reasons(archive.read(root + path), path)
        elif MODEL_JSON.match(path):
            yield from _program_reasons(_json(archive, root + path, name))


def _json(archive: zipfile.ZipFile, member: str, name: str) -> Any:
    try:
        return json.loads(archive.read(member))
    except (ValueError, UnicodeDecodeError, OSError, zipfile.BadZipFile) as exc:
        raise EikdError(f"{name} has an unreadable {member.split('/', 1)[-1]} ({type(exc).__name__})") from None


def _payload_reasons(config: Any, path: str) -> Iterator[str]:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        yield f"{path} is not a payload config"
        return
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            yield f"{path} entry {fqn!r} is malformed"
        elif meta.get("use_pickle") is not False:
            yield f"{fqn!r} is stored with pickle"
        elif not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
            yield f"{fqn!r} is an opaque or custom object ({meta.get('path_name')})"


def _sample_input_reasons(data: bytes, path: str) -> Iterator[str]:
    """torch retries sample inputs with the full unpickler when the weights-only one refuses them."""
    import torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        yield f"{path} holds pickled Python objects, not plain tensors"


def _program_reasons(program: Any) -> Iterator[str]:
    for key, value in _walk(program):
        if key == "expr_str" and isinstance(value, str) and not safe_sym_expr(value):
            yield f"a shape expression is not plain arithmetic ({value[:60]!r})"
        elif key in ("target", "as_operator") and isinstance(value, str) and not safe_target(value):
            yield f"the graph calls {value[:80]!r}, not a tensor operator"


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a JSON document, iteratively (a crafted file may nest deeper than recursion)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                yield key, value
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def safe_target(target: str) -> bool:
    """A graph target torch's deserializer would resolve to an ATen/prims operator or a plain arithmetic helper."""
    parts = target.split(".")
    if any(not part.isidentifier() or part.startswith("_") for part in parts[1:]):
        return False
    if parts[0] == "_operator":
        return len(parts) == 2 and parts[1] in _SAFE_OPERATOR and callable(getattr(operator, parts[1], None))
    if parts[0] == "math":
        return len(parts) == 2 and parts[1] in _SAFE_MATH and callable(getattr(math, parts[1], None))
    if parts[0] != "torch":
        return False
    if len(parts) == 2:
        return parts[1] in _SAFE_TORCH
    if len(parts) == 5 and parts[1] == "ops" and parts[2] in _ALLOWED_NAMESPACES:
        return _is_op_overload(parts[2], parts[3], parts[4])
    if len(parts) == 4 and parts[1:3] == ["ops", "higher_order"]:
        return parts[3] in _ALLOWED_HIGHER_ORDER
    return False


def _is_op_overload(namespace: str, op: str, overload: str) -> bool:
    import torch

    try:
        packet = getattr(getattr(torch.ops, namespace), op)
        return isinstance(getattr(packet, overload), torch._ops.OpOverload)
    except (AttributeError, RuntimeError):
        return False


def safe_sym_expr(expr: str) -> bool:
    """sympy.sympify evaluates its input as Python: accept only numbers, shape symbols, sympy constructors and
    arithmetic (no attribute access, subscripts, lambdas, or strings other than symbol names)."""
    if len(expr) > MAX_EXPR_CHARS:
        return False
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return False
    for token in tokens:
        if token.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.NUMBER):
            continue
        if token.type == tokenize.NAME:
            if keyword.iskeyword(token.string) and token.string not in ("True", "False", "None"):
                return False
            if token.string not in _SYMPY_NAMES and not _SYMBOL.match(token.string):
                return False
        elif token.type == tokenize.STRING:
            if not _plain_name_literal(token.string):
                return False
        elif token.type == tokenize.OP:
            if token.string not in _EXPR_OPS:
                return False
        else:
            return False
    return True


def _plain_name_literal(literal: str) -> bool:
    match = re.fullmatch(r"""'([A-Za-z0-9_.]*)'|"([A-Za-z0-9_.]*)\"""", literal)
    return bool(match) and not (match.group(1) or match.group(2) or "").startswith("_")

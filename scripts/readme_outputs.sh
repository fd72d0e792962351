#!/usr/bin/env bash
# Regenerates every command output pasted in README.md (each block that starts with `$ eikd-edge`, and the
# report.md excerpt), on the bundled example, into OUT (default
# readme-outputs/): one file per command, the command line first, its exit code last. Paste from there.
#   bash scripts/readme_outputs.sh [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=$(realpath -m "${1:-readme-outputs}")
work=$(mktemp -d)
mkdir -p "$out"
ln -s "$repo/examples" "$work/examples"
export COLUMNS=${COLUMNS:-100}
export XDG_CACHE_HOME="$work/xdg"  # the teacher-score cache lands in the scratch folder, shown as xdg/...
export EIKD_NO_PROGRESS=1  # progress bars redraw in a terminal; in a file they would leave their last frame
tool=${EIKD_EDGE:-$repo/.venv/bin/eikd-edge}
step() {  # name, then the command's arguments, run in a scratch folder holding examples/ and runs/
    local name=$1
    shift
    {
        echo "\$ eikd-edge $*"
        (cd "$work" && "$tool" "$@" 2>&1; echo "(exit $?)") | sed -e "s#$work/##g" -e "s#$repo/##g"
    } > "$out/$name.txt"
    echo "wrote $out/$name.txt"
}
ex=examples/digits
step 01-quickstart quickstart
step 02-inspect inspect $ex/teacher.pt
step 03-select select -t $ex/teacher.pt -u $ex/field -o runs/sel
step 04-select-novel select -t $ex/teacher.pt -u $ex/field -o runs/novel --novel
step 05-distill-again distill -t $ex/teacher.pt -u $ex/field --val $ex/val -o runs/quickstart
step 06-export export runs/quickstart --onnx --int8 --trt --fp16 --target jetson-orin-nano
step 07-validate validate runs/quickstart --val $ex/val
step 08-bench bench runs/quickstart
step 09-report report runs/quickstart
cp "$work/runs/quickstart/report.md" "$out/10-report.md" 2>/dev/null || true
# the README's Python API example, exactly as written there
sed -n '/^## Python API/,/^## /p' README.md | sed -n '/^```python$/,/^```$/p' | sed '1d;$d' > "$work/api_example.py"
(cd "$work" && "$repo/.venv/bin/python" api_example.py 2>&1; echo "(exit $?)") | sed -e "s#$work/##g" > "$out/11-python-api.txt"
echo "wrote $out/11-python-api.txt"
rm -rf "$work"

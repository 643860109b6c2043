#!/usr/bin/env bash
# Install sizes of the project, before and after the backend and XGBoost became extras (docs/benchmarks.md,
# "Install size"). For each case: pip's dry-run report against the package index (what it would install),
# the wheels of that report fetched once, then a real install from those wheels alone into a fresh
# `python -m venv --without-pip` (so site-packages holds only what the install put there), and its size:
#   bash benchmarks/install_size.sh [OLD_COMMIT]        # default 152389d, the last commit with the old set
# Writes $WORK/sizes.txt (KiB of site-packages per case) and $WORK/reports/CASE.list (name version url).
set -euo pipefail
OLD=${1:-152389d}
WORK=${WORK:-/tmp/ensemble-install-size}
PY=${PY:-python3}                                    # the Python of the fresh virtual environments
PIP="${PIP_PYTHON:-python3} -m pip --disable-pip-version-check"   # a pip with setuptools>=77 beside it
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK" && cd "$WORK"
rm -rf old new proj-old proj-new && mkdir -p wheels reports proj-old proj-new
git -C "$REPO" archive "$OLD" | (mkdir old && tar -x -C old)
(cd "$REPO" && git ls-files -co --exclude-standard | tar cf - -T -) | (mkdir new && tar -x -C new)
$PIP wheel -q --no-deps --no-build-isolation -w proj-old ./old
$PIP wheel -q --no-deps --no-build-isolation -w proj-new ./new
OLDW=$(ls "$WORK"/proj-old/*.whl); NEWW=$(ls "$WORK"/proj-new/*.whl)
venv() { rm -rf "$WORK/v-$1"; $PY -m venv --without-pip "$WORK/v-$1"; }
report() {  # CASE VENV REQUIREMENT...
  local name=$1 v=$2; shift 2
  $PIP --python "$WORK/v-$v/bin/python" install -q --dry-run --report "reports/$name.json" "$@"
  python3 -c 'import json, sys
for i in json.load(open(sys.argv[1]))["install"]:
    print(i["metadata"]["name"], i["metadata"]["version"], i["download_info"]["url"])' "reports/$name.json" \
    > "reports/$name.list"
}
fetch() {  # the wheels of a report, each once
  awk '{print $3}' "reports/$1.list" | while read -r url; do
    f="wheels/$(basename "$url")"
    case "$url" in
      "file://$WORK"/*) ;;
      file://*) [ -f "$f" ] || cp "${url#file://}" wheels/ ;;
      *) [ -f "$f" ] || $PIP download -q --no-deps -d wheels "$url" ;;
    esac
  done
}
install() {  # CASE VENV REQUIREMENT...
  local name=$1 v=$2; shift 2
  $PIP --python "$WORK/v-$v/bin/python" install -q --no-index --find-links wheels "$@"
  echo "$name site_kib=$(du -sk "$WORK/v-$v/lib/"python3*/site-packages | cut -f1)" | tee -a sizes.txt
}
: > sizes.txt
venv old;   report old-plain old "$OLDW";                       fetch old-plain
venv plain; report new-plain plain "$NEWW";                     fetch new-plain
venv tf;    report new-tf tf "$NEWW[tensorflow]";               fetch new-tf
venv tfx;   report new-tf-xgb tfx "$NEWW[tensorflow,xgboost]";  fetch new-tf-xgb
install old-plain old "$OLDW"
install new-plain plain "$NEWW"
install new-tf tf "$NEWW[tensorflow]"
install new-tf-xgb tfx "$NEWW[tensorflow,xgboost]"
# a venv that already holds TensorFlow (its CPU build): what the plain install adds on top
venv pre; install pre-tf-only pre tensorflow-cpu
report pre-new-plain pre "$NEWW"; report pre-old-plain pre "$OLDW"
install pre-new-plain pre "$NEWW"
# a venv holding a distribution named `tensorflow` (a stub wheel, as tests/test_packaging.py makes; the
# GPU build of Kaggle's and Colab's images in its place): what each version plans, reports only
mkdir -p stub && rm -f stub/*.whl && (cd stub && python3 - <<'PY'
import zipfile
info = "tensorflow-2.21.0.dist-info"
files = {f"{info}/METADATA": "Metadata-Version: 2.1\nName: tensorflow\nVersion: 2.21.0\n",
         f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
files[f"{info}/RECORD"] = "".join(f"{p},,\n" for p in files) + f"{info}/RECORD,,\n"
with zipfile.ZipFile("tensorflow-2.21.0-py3-none-any.whl", "w") as zf:
    for p, text in files.items():
        zf.writestr(p, text)
PY
)
venv stubtf; $PIP --python "$WORK/v-stubtf/bin/python" install -q --no-index --find-links stub tensorflow
report stubtf-old stubtf "$OLDW"; report stubtf-new stubtf "$NEWW"
for r in reports/*.list; do
  python3 - "$r" <<'PY'
import os, sys
rows = [line.split() for line in open(sys.argv[1])]
size = sum(os.path.getsize(f"wheels/{os.path.basename(u)}") for _, _, u in rows if os.path.exists(f"wheels/{os.path.basename(u)}"))
heavy = sorted(n for n, _, _ in rows if n.lower().replace("_", "-") in {"tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "xgboost", "nvidia-nccl-cu12"})
print(f"{os.path.basename(sys.argv[1])[:-5]}: {len(rows)} distributions, wheels {size / 2**20:.0f} MiB, backend/heavy: {heavy}")
PY
done

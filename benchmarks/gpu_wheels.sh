#!/usr/bin/env bash
# Wheels for what the stage scripts import and a GPU image without network lacks: pydantic (params.yaml
# validation) and dvclive (metrics), which imports DVC itself, with everything they need, for CPython 3.12
# on x86-64 Linux (the H100/H200 machines' Python; set PYVER for another). About 100 wheels, 30 MB.
# Run it where pip reaches a package index, then carry the folder; benchmarks/gpu_reference.py installs
# from it (no index) whatever is missing there:
#
#   benchmarks/gpu_wheels.sh .whl          # .whl/ is git-ignored: name it in what travels (device run: carry)
#
# Versions: those of this checkout's environment when it has them, else the newest that fit.
set -euo pipefail
dest=${1:-.whl}
pyver=${PYVER:-3.12}
mkdir -p "$dest"

pin() {  # NAME -> NAME==VERSION installed here, or NAME
  local v
  v=$(python3 -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p')
  if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}

# hydra-core (a DVC dependency) needs antlr4-python3-runtime 4.9, published as a source archive only: build
# its (pure Python) wheel here, then let the download below find it
python3 -m pip wheel -q --no-deps -w "$dest" 'antlr4-python3-runtime==4.9.3'
python3 -m pip download -q --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --find-links "$dest" -d "$dest" \
  "$(pin dvclive)" "$(pin dvc)" "$(pin pydantic)"
echo "$(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1), in $dest"

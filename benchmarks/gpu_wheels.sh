#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that the GPU machine's image lacks or holds in another version
# (its python3 is 3.12 with torch, accelerate, pandas, pyarrow, typer, tokenizers, safetensors, pytest,
# pytest-xdist, hypothesis and scipy, but transformers 5.17 and no transformer-lens, datasets or plotly).
# They go to .whl/ (ignored by git), about 27 MB; the device call carries .whl and installs them with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# Versions are those of the CPU environment the suite is written against.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  transformer-lens==4.3.0 transformers==5.24.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 plotly==7.1.0 \
  beartype==0.23.1 fancy-einsum==0.0.3 typeguard==4.6.1
ls .whl
du -sh .whl

#!/usr/bin/env bash
# Wheels of the packages the training pipeline and the benchmark import that a bare GPU
# image with PyTorch lacks (hydra-core and its parser, gymnasium), into .whl/ (git-ignored):
# for a machine that cannot reach a package index. See docs/gpu_session.md.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
py=${PYTHON:-.venv/bin/python}       # the project's environment: the same versions travel
pins=$($py -c 'from importlib.metadata import version as v
print(" ".join(f"{n}=={v(n)}" for n in ("hydra-core", "omegaconf", "gymnasium", "farama-notifications")))')
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform any -d .whl $pins
# antlr4-python3-runtime (omegaconf's parser) is published as source only: build its wheel.
$py -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$($py -c 'from importlib.metadata import version
print(version("antlr4-python3-runtime"))')"
ls -1 .whl
du -sh .whl

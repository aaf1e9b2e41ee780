#!/usr/bin/env bash
# Rebuild a shipped pretrained bundle from scratch with the project's own commands.
# Usage: scripts/build_pretrained.sh ocean|fluid2d [WORKDIR]
# The command lines come from sdift_prob/pretrained/recipes.py (the same recipe the benchmark
# suite's `full` mode and the model card use). Long: run it in the background
# (nohup ... > build.log &). Every stage is resumable (a finished stage is skipped, train-prior
# resumes from its checkpoint); nothing here runs in CI.
set -euo pipefail
name=${1:?usage: build_pretrained.sh ocean|fluid2d [WORKDIR]}
work=${2:-scratch/build-$name}
sdift=${SDIFT:-.venv/bin/sdift}
py=${PYTHON:-.venv/bin/python}
case "$name" in
  ocean)   obs_args="--rho 0.01" ;;
  fluid2d) obs_args="--rho 0.03" ;;
  *) echo "unknown bundle $name" >&2; exit 2 ;;
esac
mkdir -p "$work"
mapfile -t cmds < <("$py" -m sdift_prob.pretrained.recipes "$name" "$work")
[ -f "$work/data.nc" ] || eval "$sdift ${cmds[0]#sdift }"
[ -f "$work/run/manifest.json" ] || eval "$sdift ${cmds[1]#sdift }"
eval "$sdift ${cmds[2]#sdift }"
"$py" -m sdift_prob.pretrained.package "$name" "$work" --obs-args "$obs_args"

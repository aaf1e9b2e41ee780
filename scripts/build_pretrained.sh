#!/usr/bin/env bash
# Rebuild a shipped pretrained bundle from scratch with the project's own commands.
# Usage: scripts/build_pretrained.sh ocean|fluid2d [WORKDIR]
# Long: run it in the background (nohup ... > build.log &). Every stage is resumable
# (train-prior resumes from its checkpoint); nothing here runs in CI.
set -euo pipefail
name=${1:?usage: build_pretrained.sh ocean|fluid2d [WORKDIR]}
work=${2:-scratch/build-$name}
sdift=${SDIFT:-.venv/bin/sdift}
mkdir -p "$work"
case "$name" in
  ocean)   ranks="8 8 8";  obs_args="--rho 0.01" ;;
  fluid2d) ranks="24 24";  obs_args="--rho 0.03" ;;
  *) echo "unknown bundle $name" >&2; exit 2 ;;
esac
prior_args=${PRIOR_ARGS:---steps 4000 --lr 1e-3 --warmup 200 --batch 8 --seq-len 12 --channels 16 --seed 0 --checkpoint-every 250}

[ -f "$work/data.nc" ] || $sdift simulate "$name" --n 120 --seed 0 --out "$work/data.nc"
[ -d "$work/run" ] || $sdift fit-ftm "$work/data.nc" --ranks $ranks --out "$work/run" --seed 0
$sdift train-prior "$work/run" $prior_args
.venv/bin/python -m sdift_prob.pretrained.package "$name" "$work" --obs-args "$obs_args"

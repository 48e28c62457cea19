#!/usr/bin/env bash
# Builds dist/ of several commits for one GPU call that runs a test at each (scripts/bisect-run.sh on the
# GPU machine): each commit's dist, kernel source and package.json go to .device/bisect/<commit>/ (carried
# with .device), built in a throwaway worktree with this checkout's node_modules.
#   bash scripts/bisect-dists.sh 3b8954a 24712fc af04d6a
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rm -rf "$root/.device/bisect"
for c in "$@"; do
  tree="$(mktemp -d)/kiln-$c"
  git -C "$root" worktree add --detach -q "$tree" "$c"
  ln -s "$root/node_modules" "$tree/node_modules"
  (cd "$tree" && node node_modules/typescript/bin/tsc -p tsconfig.json)
  out="$root/.device/bisect/$c"
  mkdir -p "$out/src/backends/cuda"
  cp -r "$tree/dist" "$out/dist"
  cp -r "$tree/src/backends/cuda/kernels" "$out/src/backends/cuda/kernels"
  cp "$tree/package.json" "$out/"  # "type": "module", and the version dist reads
  git -C "$root" worktree remove --force "$tree"
  echo "$c: $(du -sh "$out" | cut -f1)"
done

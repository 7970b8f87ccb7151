#!/usr/bin/env bash
# Runs the torch-free kernel harness (the command given), prints its lines other than PASS and the
# number of passing cases, and fails when the harness fails or when a path that must run was skipped.
# Usage: bash ci/check_harness.sh 'ISA|ISA' command [args...]   (used by neon_test.sh, avx512_emulated_test.sh)
set -euo pipefail
must_run=$1
shift
status=0
out=$("$@") || status=$?
echo "$out" | grep -v '^PASS' || true
echo "passing cases: $(echo "$out" | grep -c '^PASS' || true)"
if echo "$out" | grep -qE "^skip ($must_run) "; then
  echo "a path that must run was not tested: $(echo "$out" | grep -E "^skip ($must_run) " | tr '\n' ' ')"
  exit 1
fi
exit "$status"

#!/usr/bin/env bash
# slurm_ping.sh -- is there a SLURM cluster that bikebench (through submitit) can use from here?
#
#   bash scripts/slurm_ping.sh && echo usable
#
# Checks, in order, and stops at the first failure with a one-line reason on stderr (exit 1):
#   - the client tools are installed (sbatch, squeue, sacct, scontrol);
#   - the controller answers `scontrol ping`;
#   - accounting answers `sacct` (submitit reads job states only through sacct);
#   - at least one node is idle, mixed or allocated.
# Prints the partitions and nodes on success. Works for any cluster, not only the one slurm_up.sh starts.
set -uo pipefail

fail() { echo "slurm_ping: $*" >&2; exit 1; }

for tool in sbatch squeue sacct scontrol sinfo; do
    command -v "$tool" >/dev/null 2>&1 || fail "'$tool' is not on PATH (no SLURM client tools; see docs/slurm.md or run 'make slurm-up')"
done
scontrol ping >/dev/null 2>&1 || fail "the controller does not answer 'scontrol ping' (start one with 'make slurm-up')"
sacct -n -X -S now >/dev/null 2>&1 \
    || fail "'sacct' fails: the cluster has no accounting storage, so submitit cannot read job states"
usable=$(sinfo -h -N -o '%T' 2>/dev/null | tr -d '*~#!%$@^-' | grep -cE '^(idle|mixed|allocated|completing)$')
[ "${usable:-0}" -gt 0 ] || fail "no node is idle, mixed or allocated: $(sinfo -h -N -o '%N=%T' | tr '\n' ' ')"
sinfo -N -o '%N %P %T %c %m'

#!/usr/bin/env bash
# Latency-budget search on a SLURM cluster: candidate trainings as array jobs, one array per successive-halving
# rung, then one job that chooses, prunes, quantizes/exports and times the winner on the target device class.
# Every training is a content-hashed segment in the shared search directory, so each array task trains exactly
# one segment and the final `edgekd search` finds them all (a task whose index has no architecture does nothing;
# a failed task is re-run by resubmitting it, finished segments are skipped). SLURM schedules; edgekd does not.
#
# Run it on a login node (it submits the jobs):   bash examples/slurm_search.sh
# Settings:  TARGET_PARTITION: nodes of the device the model is for (profiling and the final timing run there);
#            TRAIN_PARTITION: nodes that train. The arrays are sized for the default space (14 architectures,
#            rungs 2/4/6 epochs, eta 3: at most 14, 5 and 2 trainings).
set -euo pipefail

TARGET_PARTITION=${TARGET_PARTITION:-edge}
TRAIN_PARTITION=${TRAIN_PARTITION:-cpu}
OUT=${OUT:-runs/search}
COMMON=(--data pneumoniamnist --teacher runs/teacher --budget-ms 0.1 --batch 1
        --device-table "$OUT.device.json" --out "$OUT" --quiet)
sub() { sbatch --parsable "$@"; }

# 0. the device latency table, measured on the target device alone (no data, no teacher, no training)
t0=$(sub -p "$TARGET_PARTITION" -J edgekd-profile --cpus-per-task=2 --time=00:30:00 \
     --wrap "edgekd device profile --batch 1 --out $OUT.device.json")
# 1. rung 0, first architecture alone: it fills the teacher-logit cache that every other training then reads
t1=$(sub -p "$TRAIN_PARTITION" -J edgekd-r0 -d afterok:"$t0" --cpus-per-task=4 --time=01:00:00 \
     --wrap "edgekd search ${COMMON[*]} --rung 0 --task 0")
# 2. rung 0, the others in parallel
t2=$(sub -p "$TRAIN_PARTITION" -J edgekd-r0 -d afterok:"$t1" --array=1-13 --cpus-per-task=4 --time=01:00:00 \
     --wrap "edgekd search ${COMMON[*]} --rung 0 --task \$SLURM_ARRAY_TASK_ID")
# 3. rung 1: the best third of rung 0 (chosen from the finished rung-0 segments, the same in every task)
t3=$(sub -p "$TRAIN_PARTITION" -J edgekd-r1 -d afterok:"$t2" --array=0-4 --cpus-per-task=4 --time=01:00:00 \
     --wrap "edgekd search ${COMMON[*]} --rung 1 --task \$SLURM_ARRAY_TASK_ID")
# 4. rung 2
t4=$(sub -p "$TRAIN_PARTITION" -J edgekd-r2 -d afterok:"$t3" --array=0-1 --cpus-per-task=4 --time=01:00:00 \
     --wrap "edgekd search ${COMMON[*]} --rung 2 --task \$SLURM_ARRAY_TASK_ID")
# 5. the winner through prune / quantize / export with parity checks, timed again on the target device class
sub -p "$TARGET_PARTITION" -J edgekd-choose -d afterok:"$t4" --cpus-per-task=2 --time=01:00:00 \
    --wrap "edgekd search ${COMMON[*]} --json $OUT.json"

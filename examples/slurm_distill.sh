#!/usr/bin/env bash
# Two-node distillation with SLURM: one torchrun per node, 4 GPUs each, rendezvous on the first node.
# Submit with:  sbatch examples/slurm_distill.sh
#SBATCH --job-name=edgekd-distill
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
set -euo pipefail

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=4

# --batch-size is the global batch: 512 = 2 nodes x 4 GPUs x 64 per GPU. Only rank 0 writes runs/student.
srun torchrun \
    --nnodes "$SLURM_NNODES" --nproc-per-node 4 \
    --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$head_node:29500" \
    -m edgekd distill \
        --student tv:mobilenet_v3_small --teacher runs/teacher \
        --data imagefolder:/data/chest-xray,size=224 --channels repeat \
        --loss ce:1 --loss kd:1,T=4 --cache-teacher --epochs 30 --batch-size 512 \
        --amp-dtype bf16 --channels-last --out runs/student

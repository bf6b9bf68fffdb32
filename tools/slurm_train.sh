#!/usr/bin/env bash
# Multi-node DDP training under SLURM: one torchrun per node, torchrun starts one process per GPU.
#
#   sbatch --nodes=2 --gpus-per-node=4 tools/slurm_train.sh --config configs/ucf101_resnet50_bilstm.yaml data.root=/data/UCF-101
#
# Everything after the script name goes to tools/train.py. Resubmitting the same job continues from
# the run's last.pt (--resume auto), so it also works as a requeue target for time-limited jobs.
# Preemption and time limits: SLURM sends SIGUSR1 to this batch shell 180 s before the end
# (--signal=B:USR1@180); the trap passes it on as SIGTERM to the job step, torchrun forwards SIGTERM
# to every training process, each finishes its step, rank 0 writes last.pt mid-epoch (exit status
# 75 on every rank) and the job is requeued; the requeued job resumes from that batch.
# Model parallel plus DDP (2 GPUs per process): set GPUS_PER_PROC=2 and pass
#   model.placement.cnn='cuda:{2*local_rank}' model.placement.lstm='cuda:{2*local_rank+1}'
#
#SBATCH --job-name=actionrec
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun launcher per node
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32           # decoding workers: data.num_workers per GPU process
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@180          # preemption notice to this script, 180 s before the time limit
#SBATCH --output=%x-%j.out

set -euo pipefail

GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L | wc -l)}
GPUS_PER_PROC=${GPUS_PER_PROC:-1}
NPROC_PER_NODE=$((GPUS_PER_NODE / GPUS_PER_PROC))
# The first node of the allocation hosts the c10d rendezvous; the port only has to be free there.
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RDZV_PORT=${RDZV_PORT:-29500}

cd "${SLURM_SUBMIT_DIR:-.}"
# shellcheck disable=SC1091
[ -f .venv/bin/activate ] && source .venv/bin/activate

preempted=0
on_notice() {
    preempted=1
    scancel --signal=TERM --full=no "$SLURM_JOB_ID.0" 2>/dev/null || kill -TERM "$step" 2>/dev/null || true
}
trap on_notice USR1 TERM

# In the background, so the trap runs while the step is going (bash defers traps until a
# foreground command returns).
srun --kill-on-bad-exit=1 torchrun \
    --nnodes="$SLURM_JOB_NUM_NODES" \
    --nproc-per-node="$NPROC_PER_NODE" \
    --rdzv-id="$SLURM_JOB_ID" \
    --rdzv-backend=c10d \
    --rdzv-endpoint="$HEAD_NODE:$RDZV_PORT" \
    tools/train.py --resume auto "$@" &
step=$!
status=0
wait "$step" || status=$?
if [ "$preempted" = 1 ]; then
    wait "$step" || true  # the trap interrupted the first wait; let the step write its checkpoint
    echo "preempted: checkpoint written, requeueing $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$status"

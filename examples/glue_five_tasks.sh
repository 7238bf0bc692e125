#!/bin/sh
# One tenant's five GLUE tasks in one batch, then a second SST-2 run that starts from the
# first SST-2 adapter (--init-from: same tenant and base model; lineage is recorded).
#
#   sh examples/glue_five_tasks.sh [BATCH_FILE]      (a worker must be running: lorafleet worker)
set -e
batch=${1:-examples/glue_five_tasks.yaml}
lorafleet tenant show acme >/dev/null 2>&1 || lorafleet tenant create acme
ids=$(lorafleet job submit-batch "$batch")
echo "queued: $(echo $ids)"
lorafleet job wait $ids                      # exits non-zero unless all five succeeded
lorafleet job list --tenant acme
sst2_job=$(echo "$ids" | sed -n 2p)
adapter=$(lorafleet job show "$sst2_job" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["adapter"]["id"])')
lorafleet job submit --tenant acme --task sst2 --init-from "$adapter" ${INIT_FROM_OPTIONS:---epochs 1} --wait
lorafleet adapter list --tenant acme

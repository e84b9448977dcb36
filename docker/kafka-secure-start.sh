#!/bin/bash
# A broker of docker/compose.secure.yaml: format the node's storage the first time, with the cluster id and the
# SCRAM users docker/secure_init.py made (SCRAM users are bootstrap metadata: the same list on every node), then
# run the broker with its generated server.properties.
set -euo pipefail
home=/etc/millrace/security
conf="$home/node-${KAFKA_NODE_ID}.properties"
for file in "$conf" "$home/cluster.id" "$home/scram.args" "$home/node-${KAFKA_NODE_ID}.pem"; do
  if [ ! -r "$file" ]; then
    echo "missing $file: run 'docker compose -f docker/compose.secure.yaml run --rm security' first" >&2
    exit 1
  fi
done
if [ ! -f /var/lib/kafka/data/meta.properties ]; then
  mapfile -t scram < "$home/scram.args"
  # The output names the users' arguments: kept out of the container log.
  /opt/kafka/bin/kafka-storage.sh format --cluster-id "$(tr -d '[:space:]' < "$home/cluster.id")" \
    --config "$conf" "${scram[@]}" > /dev/null
fi
exec /opt/kafka/bin/kafka-server-start.sh "$conf"

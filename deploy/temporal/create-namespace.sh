#!/bin/sh
# Registers Keel's namespace once the server answers (the temporalio/server image creates none).
set -eu
ns="${NAMESPACE:-default}"
tries=0
until temporal operator cluster health --address "$TEMPORAL_ADDRESS"; do
  tries=$((tries + 1))
  [ "$tries" -ge 60 ] && { echo "Temporal at $TEMPORAL_ADDRESS did not become healthy"; exit 1; }
  sleep 2
done
if temporal operator namespace describe --address "$TEMPORAL_ADDRESS" --namespace "$ns" >/dev/null 2>&1; then
  echo "namespace $ns exists"
else
  temporal operator namespace create --address "$TEMPORAL_ADDRESS" --namespace "$ns" \
    --retention "${NAMESPACE_RETENTION:-30d}"
fi

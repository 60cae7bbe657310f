# One image for Keel's workers and gateway; docker-compose.yml picks the command:
#   python worker.py                  the agent worker        (metrics and health: :9464/metrics)
#   python worker.py --queue heavy    a heavy-tool worker     (:9465/metrics)
#   python -m api                     the gateway (default)   (:8000, health: GET /healthz)
# `python -m keel.stack.healthcheck gateway|worker|heavy-worker` is the healthcheck of each.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY keel ./keel
COPY workflows ./workflows
COPY activities ./activities
COPY api ./api
COPY worker.py ./
# The example agents, served when KEEL_APP names no app. Your own: `pip install` your package in an image
# built FROM this one and set KEEL_APP.
COPY examples/keel_examples ./examples/keel_examples
# No [embedded] extra: in containers Temporal and PostgreSQL are their own services.
RUN pip install .
# Bytecode for the code that runs from /app, written once here: Temporal's workflow sandbox imports
# workflows/agent_run.py afresh for every new run, and with no .pyc (PYTHONDONTWRITEBYTECODE, a read-only
# /app) it would compile it every time: 7% of a worker's CPU in a py-spy profile, and sequential runs per
# second nearly doubled without it (bench/harness.py).
RUN python -m compileall -q keel workflows activities api worker.py examples/keel_examples
# A fixed uid, so files mounted into the container (an mTLS key, a codec key file) can be made readable
# to it: chown 10001 on the host.
RUN useradd --system --uid 10001 --home-dir /app keel \
    && mkdir -p /data /secrets && chown keel:keel /data /secrets
USER keel
# In a container the gateway and the worker metrics must listen beyond loopback to be reachable; off
# loopback the gateway refuses to start without KEEL_AUTH, which is the point.
ENV KEEL_DATA_DIR=/data KEEL_HOST=0.0.0.0 KEEL_WORKER_METRICS_HOST=0.0.0.0
EXPOSE 8000 9464 9465
CMD ["python", "-m", "api"]

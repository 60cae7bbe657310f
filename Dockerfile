# One image for Keel's worker and gateway; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY keel ./keel
COPY workflows ./workflows
COPY activities ./activities
COPY api ./api
COPY worker.py ./
# No [embedded] extra: in containers Temporal and PostgreSQL are their own services.
RUN pip install .
RUN useradd --system --home /app keel && mkdir -p /data && chown keel /data
USER keel
ENV KEEL_DATA_DIR=/data
CMD ["python", "-m", "api"]

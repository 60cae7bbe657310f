"""Traces: OpenTelemetry spans from the gateway's request through the workflow to its activities.

The Temporal client of every Keel process carries Temporal's `TracingInterceptor`, which starts a span for
starting a workflow, for the workflow itself (replay-safe: never again on replay) and for each activity,
and passes the context along in Temporal headers. The gateway adds a span per request (api/observe.py),
`call_llm` a GenAI `chat` span and `run_tool` an `execute_tool` span (activities/records.py).

Spans are exported over OTLP (HTTP/protobuf) only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the standard `OTEL_*` variables configure the exporter and
`OTEL_SERVICE_NAME` the service name. Otherwise no tracer provider is installed and every span is a no-op.
"""

import os

from opentelemetry import trace
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor

TRACER_NAME = "keel"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def otlp_configured() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure_tracing(service_name: str):  # type: ignore[no-untyped-def]
    """Install an exporting tracer provider when OTLP is configured; returns it (to shut down), or None."""
    if not otlp_configured():
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def with_tracing(client: Client) -> Client:
    """The same client, plus Temporal's tracing interceptor (a worker built on it inherits it)."""
    config = client.config()
    if any(isinstance(i, TracingInterceptor) for i in config["interceptors"]):
        return client
    config["interceptors"] = [*config["interceptors"], TracingInterceptor()]
    return Client(**config)

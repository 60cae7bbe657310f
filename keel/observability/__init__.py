"""What Keel tells operators: JSON logs, Prometheus metrics and OpenTelemetry traces."""

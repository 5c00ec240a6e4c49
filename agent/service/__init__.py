"""The daemon as a service: lifecycle and signals, the worker supervisor, health and metrics,
service-manager notifications and logs."""

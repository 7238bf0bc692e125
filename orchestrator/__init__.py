"""The control plane: config, registry, job service, dispatch/reconcile, reports and the CLI."""

"""The worker: claims jobs from a queue, runs them, keeps their leases, delivers their results."""

"""The coordinator service: submits jobs, invokes the workers, and summarises and reports their results."""

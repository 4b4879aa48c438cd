"""A run's life: accept (service), execute through Triton and record (execute), recover after a restart
(recovery), and what ``GET /runs/{id}`` shows (view)."""

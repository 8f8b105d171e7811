"""Programs around the worker runtime, not part of it: ``inferq bench``, ``inferq soak``, the demo,
the per-stage profiler, and the helpers they share to start Redis and worker processes."""

"""`condasync serve`: proxy, mirror and static channels over HTTP, with a quetz-shaped API."""

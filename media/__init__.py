"""Per-call media core: pure, sans-IO objects fed one 20 ms frame at a time with a timestamp."""

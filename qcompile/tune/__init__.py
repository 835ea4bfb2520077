"""MetaSchedule integration: tuning, and applying tuning records at compile time."""

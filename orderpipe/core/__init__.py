"""The pure core: routing, effects, ownership, stats, dead letters and the other decisions, free of Kafka and I/O."""

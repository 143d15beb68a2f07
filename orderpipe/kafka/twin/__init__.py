"""An in-memory twin of the Kafka edge, so that unit tests drive the whole consumer without a broker."""

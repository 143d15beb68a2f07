"""The order pipeline: a pure core (codec, validation, money, routing) and the
Kafka edge (admin, producer and consumer loops) that applies its decisions."""

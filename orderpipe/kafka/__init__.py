"""The Kafka edge on confluent-kafka: clients, the consumer's edge, readers, the schema registry, guards."""

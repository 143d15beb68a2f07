"""The programs: the command line and the producer, consumer, DLQ and ACL programs it runs."""

"""Orders as bytes: Avro encoding and decoding, the wire formats, and schema compatibility."""

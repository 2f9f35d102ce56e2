"""Edges that make results durable: the database and outbound Kafka topics."""

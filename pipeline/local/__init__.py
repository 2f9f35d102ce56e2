"""Embedded servers for machines without a container engine: a KRaft Kafka broker from
Maven Central jars and a PostgreSQL server from the machine's binaries, under VIGIL_HOME."""

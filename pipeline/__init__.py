"""Vigil: Kafka-native performance monitoring."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = ROOT / "schemas"
SQL_DIR = ROOT / "sql"

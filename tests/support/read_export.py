"""Reads a `herald replay` export with the tools analysts use (DuckDB for Parquet and CSV,
fastavro for Avro container files, the json module for JSON lines) and prints its rows as one
JSON list, times as microseconds since the epoch and `data` parsed, so the test can compare
the formats with each other and with the log.

usage: read_export.py jsonl|csv|avro|parquet FILE
"""

import datetime
import json
import sys

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
COLUMNS = ["topic", "partition", "offset", "key", "event_id", "event_type", "occurred_at",
           "received_at", "actor", "source", "idempotency_key", "data"]


def micros(value):
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return (value - EPOCH) // datetime.timedelta(microseconds=1)


def normal(row):
    row = dict(row)
    row["partition"] = int(row["partition"])
    row["offset"] = int(row["offset"])
    row["occurred_at"] = micros(row["occurred_at"])
    row["received_at"] = micros(row["received_at"])
    for optional in ("key", "idempotency_key"):
        if row[optional] == "":
            row[optional] = None
    if isinstance(row["data"], str):
        row["data"] = json.loads(row["data"])
    return {column: row[column] for column in COLUMNS}


def rows(kind, path):
    if kind == "jsonl":
        with open(path) as lines:
            return [json.loads(line) for line in lines]
    if kind == "avro":
        import fastavro
        with open(path, "rb") as file:
            return list(fastavro.reader(file))
    import duckdb
    if kind == "parquet":
        # Typed timestamps, taken as microseconds (Python's datetime would need pytz).
        relation = duckdb.sql(
            "SELECT * REPLACE (epoch_us(occurred_at) AS occurred_at, "
            f"epoch_us(received_at) AS received_at) FROM read_parquet('{path}')")
    else:
        relation = duckdb.sql(
            f"SELECT * FROM read_csv('{path}', header = true, all_varchar = true)")
    names = relation.columns
    return [dict(zip(names, values)) for values in relation.fetchall()]


kind, path = sys.argv[1], sys.argv[2]
found = sorted((normal(row) for row in rows(kind, path)),
               key=lambda r: (r["topic"], r["partition"], r["offset"]))
json.dump(found, sys.stdout)

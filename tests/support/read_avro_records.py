#!/usr/bin/env python3
"""Decodes Kafka record values the way a team's own consumer would, with fastavro and the
exported wire schemas only (no Herald code).

    read_avro_records.py SCHEMAS_DIR RECORDS_JSONL [CONFLUENT_IDS_JSON]

RECORDS_JSONL holds one {"topic", "value"} per line, `value` the record's bytes in base64.
Single-object encoding (C3 01 + the 8-byte CRC-64-AVRO fingerprint of the schema's Parsing
Canonical Form, little-endian) is resolved by fingerprints fastavro computes itself;
the Confluent wire format (00 + a 4-byte big-endian id) by CONFLUENT_IDS_JSON, {id: file}.
Prints one JSON object per record: {"topic", "event_type", "event_id", "data"}, logical types
as fastavro returns them, written as strings. Exits 1 naming the first record it cannot read.
"""

import base64
import datetime
import decimal
import io
import json
import pathlib
import sys
import uuid

from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form


def plain(value):
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, datetime.datetime):
        # RFC 3339 in UTC, as Herald's JSON writes timestamps.
        text = value.astimezone(datetime.timezone.utc).isoformat()
        return text.replace("+00:00", "Z")
    if isinstance(value, (datetime.date, uuid.UUID, decimal.Decimal)):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def main():
    schemas_dir, records_path = sys.argv[1], sys.argv[2]
    by_file, by_fingerprint = {}, {}
    for path in sorted(pathlib.Path(schemas_dir).glob("*.avsc")):
        raw = json.loads(path.read_text())
        parsed = parse_schema(raw)
        by_file[path.name] = parsed
        pcf = to_parsing_canonical_form(raw)
        by_fingerprint[bytes.fromhex(fingerprint(pcf, "CRC-64-AVRO"))] = parsed
    by_id = {}
    if len(sys.argv) > 3:
        for schema_id, name in json.loads(pathlib.Path(sys.argv[3]).read_text()).items():
            by_id[int(schema_id)] = by_file[name]
    for number, line in enumerate(pathlib.Path(records_path).read_text().splitlines(), 1):
        record = json.loads(line)
        value = base64.b64decode(record["value"])
        if value[:2] == b"\xc3\x01":
            schema = by_fingerprint.get(value[2:10])
            body = value[10:]
            if schema is None:
                sys.exit(f"record {number}: no exported schema has fingerprint {value[2:10].hex()}")
        elif value[:1] == b"\x00":
            schema_id = int.from_bytes(value[1:5], "big")
            schema = by_id.get(schema_id)
            body = value[5:]
            if schema is None:
                sys.exit(f"record {number}: no schema for registry id {schema_id}")
        else:
            sys.exit(f"record {number}: neither single-object nor Confluent framing")
        reader = io.BytesIO(body)
        event = schemaless_reader(reader, schema)
        if reader.read():
            sys.exit(f"record {number}: bytes left after the record")
        print(json.dumps({
            "topic": record["topic"],
            "event_type": event["event_type"],
            "event_id": str(event["event_id"]),
            "data": plain(event["data"]),
        }))


if __name__ == "__main__":
    main()

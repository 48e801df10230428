// Decodes Kafka record values as a team's own Java consumer would: Apache Avro's
// BinaryMessageDecoder (single-object encoding, schemas found by the fingerprint Avro itself
// computes) with the exported wire schemas, and nothing of Herald.
//
//   java -cp <avro jars> AvroRecords.java SCHEMAS_DIR RECORDS [CONFLUENT_IDS]
//
// RECORDS holds one record value per line, in base64. Confluent-framed values (00 and a
// 4-byte schema id) are read with a GenericDatumReader of the schema CONFLUENT_IDS names for
// the id (lines `id=file`). Prints one line per record:
// event_id TAB event_type TAB data as JSON (logical types converted: timestamps as RFC 3339
// instants, UUIDs as text). Exits 1 on the first record it cannot read.

import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Base64;
import java.util.HashMap;
import java.util.Map;

import org.apache.avro.Schema;
import org.apache.avro.data.TimeConversions;
import org.apache.avro.Conversions;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.SchemaStore;

public class AvroRecords {
    public static void main(String[] args) throws Exception {
        GenericData model = new GenericData();
        model.addLogicalTypeConversion(new TimeConversions.TimestampMillisConversion());
        model.addLogicalTypeConversion(new TimeConversions.TimestampMicrosConversion());
        model.addLogicalTypeConversion(new Conversions.UUIDConversion());
        SchemaStore.Cache store = new SchemaStore.Cache();
        Map<String, Schema> byFile = new HashMap<>();
        try (DirectoryStream<Path> files = Files.newDirectoryStream(Path.of(args[0]), "*.avsc")) {
            for (Path file : files) {
                Schema schema = new Schema.Parser().parse(file.toFile());
                store.addSchema(schema);
                byFile.put(file.getFileName().toString(), schema);
            }
        }
        Map<Integer, Schema> byId = new HashMap<>();
        if (args.length > 2) {
            for (String line : Files.readAllLines(Path.of(args[2]))) {
                String[] parts = line.split("=", 2);
                if (parts.length == 2) {
                    byId.put(Integer.parseInt(parts[0].trim()), byFile.get(parts[1].trim()));
                }
            }
        }
        BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(model, null, store);
        int number = 0;
        for (String line : Files.readAllLines(Path.of(args[1]))) {
            number++;
            if (line.isBlank()) {
                continue;
            }
            GenericRecord event;
            try {
                byte[] value = Base64.getDecoder().decode(line.trim());
                if (value.length > 5 && value[0] == 0) {
                    int id = java.nio.ByteBuffer.wrap(value, 1, 4).getInt();
                    Schema schema = byId.get(id);
                    if (schema == null) {
                        throw new IllegalStateException("no schema for registry id " + id);
                    }
                    GenericDatumReader<GenericRecord> reader = new GenericDatumReader<>(schema, schema, model);
                    event = reader.read(null, DecoderFactory.get().binaryDecoder(value, 5, value.length - 5, null));
                } else {
                    event = decoder.decode(value);
                }
            } catch (Exception e) {
                System.err.println("record " + number + ": " + e);
                System.exit(1);
                return;
            }
            StringBuilder out = new StringBuilder();
            out.append(event.get("event_id")).append('\t').append(event.get("event_type")).append('\t');
            json(event.get("data"), out);
            System.out.println(out);
        }
    }

    /** The value as JSON: records and maps as objects, arrays as lists, the rest as text. */
    static void json(Object value, StringBuilder out) {
        if (value == null) {
            out.append("null");
        } else if (value instanceof GenericRecord record) {
            out.append('{');
            boolean first = true;
            for (Schema.Field field : record.getSchema().getFields()) {
                if (!first) out.append(',');
                first = false;
                text(field.name(), out);
                out.append(':');
                json(record.get(field.name()), out);
            }
            out.append('}');
        } else if (value instanceof Map<?, ?> map) {
            out.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> entry : map.entrySet()) {
                if (!first) out.append(',');
                first = false;
                text(entry.getKey().toString(), out);
                out.append(':');
                json(entry.getValue(), out);
            }
            out.append('}');
        } else if (value instanceof Iterable<?> items) {
            out.append('[');
            boolean first = true;
            for (Object item : items) {
                if (!first) out.append(',');
                first = false;
                json(item, out);
            }
            out.append(']');
        } else if (value instanceof Number || value instanceof Boolean) {
            out.append(value);
        } else {
            // Strings, enum symbols, UUIDs, instants.
            text(value.toString(), out);
        }
    }

    static void text(String s, StringBuilder out) {
        out.append('"');
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
                    else out.append(c);
                }
            }
        }
        out.append('"');
    }
}

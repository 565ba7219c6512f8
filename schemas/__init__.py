"""The event contract: versioned Avro schemas, models, serde and registry checks."""

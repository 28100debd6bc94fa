"""The data path only: the MQTT link, codecs and validation, the raw message log, the journal,
the store stage, recorded feeds and the forwarder to InfluxDB. Each store owns its SQL and
offers readers; nothing here knows of detectors, alerts or the console."""


ALTER TABLE {schema}.kafka_dead_messages ADD COLUMN record_key text;
UPDATE {schema}.kafka_dead_messages
   SET record_key = 'kafka:' || topic || ':' || partition || ':' || "offset";
ALTER TABLE {schema}.kafka_dead_messages ALTER COLUMN record_key SET NOT NULL;
ALTER TABLE {schema}.kafka_dead_messages DROP CONSTRAINT kafka_dead_messages_pkey;
ALTER TABLE {schema}.kafka_dead_messages ADD PRIMARY KEY (group_id, record_key);

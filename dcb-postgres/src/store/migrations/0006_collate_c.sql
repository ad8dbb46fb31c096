
ALTER TABLE {schema}.event_tags
    ALTER COLUMN tag TYPE text COLLATE "C",
    ALTER COLUMN event_type TYPE text COLLATE "C";
ALTER TABLE {schema}.events
    ALTER COLUMN event_type TYPE text COLLATE "C";

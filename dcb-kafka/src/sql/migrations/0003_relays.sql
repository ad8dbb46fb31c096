
CREATE TABLE IF NOT EXISTS {schema}.kafka_relays (
    relay_id      text        PRIMARY KEY,
    position      bigint      NOT NULL DEFAULT 0,
    owner         text,
    lease_until   timestamptz,
    last_error    text,
    last_error_at timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

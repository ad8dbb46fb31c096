
-- The W3C trace context of the span that enqueued the job (see
-- dcb_core::trace), so that each attempt continues that trace. NULL when
-- tracing was off; adding a nullable column rewrites nothing.
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS trace jsonb;

-- The example entity tables: the user's own tables, which dedup-worker writes into (SPEC §5).
-- Used by the demo (in public) and by the integration tests (each in a private schema, through
-- search_path), so the names are unqualified.
CREATE EXTENSION IF NOT EXISTS btree_gist SCHEMA public;

CREATE TABLE IF NOT EXISTS todos (
  id          bigserial PRIMARY KEY,
  title       text NOT NULL,
  description text,
  due         date,
  priority    integer,
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- No two appointments of one professional may overlap: a conflict, not an error.
CREATE TABLE IF NOT EXISTS appointments (
  id              bigserial PRIMARY KEY,
  professional_id integer NOT NULL,
  starts_at       timestamptz NOT NULL,
  ends_at         timestamptz NOT NULL CHECK (ends_at > starts_at),
  CONSTRAINT appointments_no_overlap
    EXCLUDE USING gist (professional_id WITH =, tstzrange(starts_at, ends_at) WITH &&)
);

-- One conversation per context and author: the natural key the worker derives idempotency from.
CREATE TABLE IF NOT EXISTS conversations (
  id           bigserial PRIMARY KEY,
  context_type text NOT NULL,
  context_id   text NOT NULL,
  created_by   text NOT NULL,
  title        text,
  CONSTRAINT conversations_natural_key UNIQUE (context_type, context_id, created_by)
);

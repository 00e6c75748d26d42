-- One row per accepted inbound message. The unique key makes a retried delivery of the
-- same message (same Idempotency-Key, or the key derived from it) a no-op.
CREATE TABLE inbound_messages (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id    uuid NOT NULL REFERENCES workspaces (id),
    channel         text NOT NULL,
    external_id     text NOT NULL,
    idempotency_key text NOT NULL,
    body            text NOT NULL,
    result          jsonb,
    received_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, idempotency_key)
);

-- Replies waiting to be delivered. Written in the same transaction as the inbound message;
-- the idempotency key is sent with every attempt so the receiver can drop repeats.
CREATE TABLE outbox (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id     uuid NOT NULL REFERENCES workspaces (id),
    inbound_id       uuid REFERENCES inbound_messages (id),
    idempotency_key  text NOT NULL UNIQUE,
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);

CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';

-- Claims go on from where the deliverer's last claim ended, (next_attempt_at, id), rather
-- than from the head of the queue, where rows other deliverers hold and row versions not yet
-- pruned pile up while a backlog drains. The position needs both columns in one index;
-- ORDER BY next_attempt_at alone, as older gateways claim, is served by it too, so the
-- old index goes. Built in the migration's transaction: inserts into the outbox wait while
-- it builds (about a second per million pending rows).
CREATE INDEX IF NOT EXISTS outbox_due_position ON outbox (next_attempt_at, id)
    WHERE status = 'pending';
DROP INDEX IF EXISTS outbox_due;

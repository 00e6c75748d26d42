-- Deleting an inbound message makes PostgreSQL check that no outbox row still refers to
-- it (the foreign key), and the retention purge asks the same: without an index on
-- outbox.inbound_id each check read the whole outbox, so purging 1,000 messages beside
-- 200,000 replies took 29 s. Built in the migration's transaction: inserts into the
-- outbox wait while it builds (about a second per million rows).
CREATE INDEX IF NOT EXISTS outbox_inbound_id ON outbox (inbound_id);

-- Leave a fifth of every outbox page free, so claiming a reply and giving back its lease
-- (columns no index covers) are HOT updates: the new row version stays on its page and no
-- index gets a new entry. Applies to pages written from now on; forward-safe.
ALTER TABLE outbox SET (fillfactor = 80);

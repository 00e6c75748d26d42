-- The restricted role that serves traffic. NOLOGIN: an installer either grants it to a
-- login role or gives it a password. Roles are cluster-wide, so two databases migrating at
-- the same moment may race to create it; the loser's error is swallowed.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'aihummer_app') THEN
        BEGIN
            CREATE ROLE aihummer_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

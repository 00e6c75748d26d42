-- Tenant isolation. The tenant is a per-transaction setting,
-- set_config('aihummer.workspace_id', <uuid>, true); with none set, nothing is visible.
-- FORCE makes the owner subject to the policies too; the owner gets its own policy because
-- it does cross-tenant work (delivery, housekeeping), and superusers skip RLS anyway.
ALTER TABLE workspaces ENABLE ROW LEVEL SECURITY;
ALTER TABLE workspaces FORCE ROW LEVEL SECURITY;
ALTER TABLE inbound_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE inbound_messages FORCE ROW LEVEL SECURITY;
ALTER TABLE outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbox FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON workspaces TO aihummer_app
    USING (id = NULLIF(current_setting('aihummer.workspace_id', true), '')::uuid);
CREATE POLICY tenant_isolation ON inbound_messages TO aihummer_app
    USING (workspace_id = NULLIF(current_setting('aihummer.workspace_id', true), '')::uuid)
    WITH CHECK (workspace_id = NULLIF(current_setting('aihummer.workspace_id', true), '')::uuid);
CREATE POLICY tenant_isolation ON outbox TO aihummer_app
    USING (workspace_id = NULLIF(current_setting('aihummer.workspace_id', true), '')::uuid)
    WITH CHECK (workspace_id = NULLIF(current_setting('aihummer.workspace_id', true), '')::uuid);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['workspaces', 'inbound_messages', 'outbox'] LOOP
        EXECUTE format(
            'CREATE POLICY owner_access ON %I TO %I USING (true) WITH CHECK (true)',
            t, current_user);
    END LOOP;
END
$$;

-- Exactly what serving needs, and nothing on job_runs or the migrations table.
GRANT USAGE ON SCHEMA public TO aihummer_app;
GRANT SELECT ON workspaces TO aihummer_app;
GRANT SELECT, INSERT, UPDATE ON inbound_messages TO aihummer_app;
GRANT SELECT, INSERT ON outbox TO aihummer_app;

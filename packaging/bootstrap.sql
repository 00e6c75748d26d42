-- AiHummer database bootstrap: the owner role, the database, and a login role in
-- aihummer_app, so that AIHUMMER_DATABASE_URL and AIHUMMER_DB_APP_URL work on the first
-- start. Run once as a PostgreSQL superuser (safe to run again: it changes the passwords
-- to the ones given and creates only what is missing):
--
--   sudo -u postgres psql -v ON_ERROR_STOP=1 \
--       -v owner_password="'...'" -v app_password="'...'" \
--       -f /usr/share/aihummer/bootstrap.sql
--
-- Variables (psql -v NAME=VALUE; names are plain lowercase identifiers):
--   owner_password  required; the owner role's password (quoted: "'secret'")
--   app_password    required; the login role's password (quoted likewise)
--   db              database name, default aihummer
--   owner           owner role (migrations, leader election), default aihummer_owner
--   app_login       login role that serves traffic, default aihummer_web
-- Then, in /etc/aihummer/aihummer.env:
--   AIHUMMER_DATABASE_URL=postgres://aihummer_owner:<owner_password>@HOST:5432/aihummer
--   AIHUMMER_DB_APP_URL=postgres://aihummer_web:<app_password>@HOST:5432/aihummer
\set ON_ERROR_STOP on
\if :{?db}
\else
\set db aihummer
\endif
\if :{?owner}
\else
\set owner aihummer_owner
\endif
\if :{?app_login}
\else
\set app_login aihummer_web
\endif
\if :{?owner_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'bootstrap.sql: pass -v owner_password=... (see the header)'; END $$;
\endif
\if :{?app_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'bootstrap.sql: pass -v app_password=... (see the header)'; END $$;
\endif

-- The owner: owns the database and every table the migrations create. Neither superuser
-- nor able to create roles: aihummer_app is created here, before any migration needs it.
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', :'owner')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'owner') \gexec
ALTER ROLE :"owner" WITH LOGIN PASSWORD :owner_password;

-- The restricted role, exactly as migration 0001 creates it, so the order of this file and
-- the gateway's first start does not matter.
SELECT 'CREATE ROLE aihummer_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE'
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'aihummer_app') \gexec

-- The login role the gateway serves with: a member of aihummer_app (row-level security
-- applies to it), never an owner, superuser or BYPASSRLS.
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE IN ROLE aihummer_app', :'app_login')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_login') \gexec
ALTER ROLE :"app_login" WITH LOGIN PASSWORD :app_password;
GRANT aihummer_app TO :"app_login";

SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
-- Only the owner and the login role connect; the migrations grant aihummer_app the rest.
REVOKE CONNECT ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"owner", :"app_login";
\echo 'bootstrap.sql: database' :"db" 'owned by' :"owner" '; login role' :"app_login" 'in aihummer_app'

-- A database shaped like a Supabase project, for the supabase profile's tests.
--
-- Load as superuser into a FRESH database (psql -v ON_ERROR_STOP=1 or one psycopg execute()).
-- Roles are cluster-wide and tests share servers: every CREATE ROLE is guarded, so loading twice
-- (into two databases of one server) works. Role attributes follow what a Supabase project has.
-- The bundled PostgreSQL 18 has neither pgcrypto nor uuid-ossp; citext stands in for "an extension
-- installed into the extensions schema", and gen_random_uuid() is core.

SET client_min_messages = error;  -- e.g. CREATE PUBLICATION warns about wal_level

DO $roles$
DECLARE
    spec text[];
    specs text[] := ARRAY[
        -- Supabase-reserved roles (platform-managed; a Supabase restore target already has them)
        ARRAY['anon', 'NOLOGIN NOINHERIT'],
        ARRAY['authenticated', 'NOLOGIN NOINHERIT'],
        ARRAY['service_role', 'NOLOGIN NOINHERIT BYPASSRLS'],
        ARRAY['authenticator', 'LOGIN NOINHERIT PASSWORD ''authenticator-secret'''],
        ARRAY['supabase_admin', 'LOGIN SUPERUSER CREATEROLE CREATEDB REPLICATION BYPASSRLS PASSWORD ''admin-secret'''],
        ARRAY['supabase_auth_admin', 'LOGIN NOINHERIT CREATEROLE PASSWORD ''auth-secret'''],
        ARRAY['supabase_storage_admin', 'LOGIN NOINHERIT CREATEROLE PASSWORD ''storage-secret'''],
        ARRAY['dashboard_user', 'NOLOGIN CREATEROLE CREATEDB REPLICATION'],
        ARRAY['pgbouncer', 'LOGIN PASSWORD ''pgbouncer-secret'''],
        ARRAY['pgsodium_keyiduser', 'NOLOGIN'],
        -- The project's own roles: these must survive the profile's filter
        ARRAY['app_api', 'LOGIN PASSWORD ''app-api-secret'''],
        ARRAY['report_reader', 'NOLOGIN'],
        ARRAY['Report Viewer', 'NOLOGIN'],
        ARRAY['anon_analyst', 'NOLOGIN']
    ];
BEGIN
    FOREACH spec SLICE 1 IN ARRAY specs LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I %s', spec[1], spec[2]);
        EXCEPTION WHEN duplicate_object THEN NULL;
        END;
    END LOOP;
END
$roles$;

GRANT anon, authenticated, service_role TO authenticator;
GRANT anon, authenticated, service_role TO supabase_admin;
GRANT authenticated TO app_api;
GRANT report_reader TO app_api;
GRANT report_reader TO "Report Viewer";
GRANT report_reader TO authenticated;
ALTER ROLE authenticated SET statement_timeout = '8s';
ALTER ROLE anon SET statement_timeout = '3s';
ALTER ROLE authenticator SET lock_timeout = '8s';
ALTER ROLE app_api SET statement_timeout = '30s';
COMMENT ON ROLE service_role IS 'Bypasses row level security';
COMMENT ON ROLE report_reader IS 'Read-only reporting';

-- Platform schemas ------------------------------------------------------------------------------------
CREATE SCHEMA IF NOT EXISTS extensions;
CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA extensions;
GRANT USAGE ON SCHEMA extensions TO anon, authenticated, service_role;

CREATE SCHEMA IF NOT EXISTS auth AUTHORIZATION supabase_auth_admin;
CREATE TABLE auth.users (
    instance_id        uuid,
    id                 uuid PRIMARY KEY,
    aud                varchar(255),
    role               varchar(255),
    email              varchar(255) UNIQUE,
    encrypted_password varchar(255),
    email_confirmed_at timestamptz,
    raw_app_meta_data  jsonb,
    raw_user_meta_data jsonb,
    created_at         timestamptz,
    updated_at         timestamptz
);
CREATE TABLE auth.schema_migrations (version varchar(255) PRIMARY KEY);
INSERT INTO auth.schema_migrations VALUES ('20171026211738'), ('20171026211808'), ('20180103212743');
ALTER TABLE auth.users OWNER TO supabase_auth_admin;
ALTER TABLE auth.schema_migrations OWNER TO supabase_auth_admin;

CREATE FUNCTION auth.uid() RETURNS uuid
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$fn$;
CREATE FUNCTION auth.role() RETURNS text
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
    )::text
$fn$;
ALTER FUNCTION auth.uid() OWNER TO supabase_auth_admin;
ALTER FUNCTION auth.role() OWNER TO supabase_auth_admin;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT ALL ON ALL TABLES IN SCHEMA auth TO supabase_admin, dashboard_user;

CREATE SCHEMA IF NOT EXISTS storage AUTHORIZATION supabase_storage_admin;
CREATE TABLE storage.buckets (
    id         text PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    owner      uuid REFERENCES auth.users (id),
    public     boolean DEFAULT false,
    created_at timestamptz DEFAULT now()
);
CREATE TABLE storage.objects (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    bucket_id  text REFERENCES storage.buckets (id),
    name       text,
    owner      uuid,
    metadata   jsonb,
    created_at timestamptz DEFAULT now()
);
CREATE TABLE storage.migrations (id integer PRIMARY KEY, name varchar(100) UNIQUE NOT NULL);
INSERT INTO storage.migrations VALUES (0, 'create-migrations-table'), (1, 'initialmigration');
ALTER TABLE storage.buckets OWNER TO supabase_storage_admin;
ALTER TABLE storage.objects OWNER TO supabase_storage_admin;
ALTER TABLE storage.migrations OWNER TO supabase_storage_admin;
ALTER TABLE storage.objects ENABLE ROW LEVEL SECURITY;
CREATE POLICY "owners read their objects" ON storage.objects FOR SELECT TO authenticated
    USING (owner = auth.uid());
GRANT USAGE ON SCHEMA storage TO anon, authenticated, service_role;
GRANT ALL ON ALL TABLES IN SCHEMA storage TO anon, authenticated, service_role;

-- What Supabase realtime publishes (the publication lives in every project).
CREATE PUBLICATION supabase_realtime;

-- The project's own schema ---------------------------------------------------------------------------
CREATE TABLE public.profiles (
    id         uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
    username   extensions.citext UNIQUE,
    avatar_url text,
    updated_at timestamptz
);
COMMENT ON TABLE public.profiles IS 'Public profile per auth user';

CREATE TABLE public.todos (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    user_id     uuid NOT NULL DEFAULT auth.uid() REFERENCES auth.users (id) ON DELETE CASCADE,
    task        text NOT NULL CHECK (char_length(task) > 3),
    is_complete boolean NOT NULL DEFAULT false,
    inserted_at timestamptz NOT NULL
);
CREATE INDEX todos_user_idx ON public.todos (user_id);

ALTER TABLE public.profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.todos ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Public profiles are viewable by everyone" ON public.profiles
    FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY "Users can update their own profile" ON public.profiles
    FOR UPDATE TO authenticated USING (auth.uid() = id) WITH CHECK (auth.uid() = id);
CREATE POLICY "Users manage their own todos" ON public.todos
    FOR ALL TO authenticated USING (auth.uid() = user_id) WITH CHECK (auth.uid() = user_id);

ALTER PUBLICATION supabase_realtime ADD TABLE public.todos;

GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
GRANT ALL ON ALL TABLES IN SCHEMA public TO anon, authenticated, service_role;
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO anon, authenticated, service_role;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO report_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;

-- Data: user data lives in auth.users too, which is why the profile keeps auth's rows ------------------
INSERT INTO auth.users (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                        raw_app_meta_data, raw_user_meta_data, created_at, updated_at)
SELECT '00000000-0000-0000-0000-000000000000', md5('user' || i)::uuid, 'authenticated', 'authenticated',
       format('user%s@example.com', i), '$2a$10$' || md5('pw' || i), timestamptz '2025-01-01 00:00:00+00',
       '{"provider": "email", "providers": ["email"]}', jsonb_build_object('name', 'User ' || i),
       timestamptz '2025-01-01 00:00:00+00' + i * interval '1 hour', timestamptz '2025-01-02 00:00:00+00'
FROM generate_series(1, 50) AS i;

INSERT INTO public.profiles (id, username, updated_at)
SELECT md5('user' || i)::uuid, 'User' || i, timestamptz '2025-01-03 00:00:00+00' FROM generate_series(1, 50) AS i;

INSERT INTO public.todos (user_id, task, is_complete, inserted_at)
SELECT md5('user' || (1 + i % 50))::uuid, format('Task number %s', i), i % 3 = 0,
       timestamptz '2025-02-01 00:00:00+00' + i * interval '10 minutes'
FROM generate_series(1, 200) AS i;

INSERT INTO storage.buckets (id, name, owner, public, created_at)
VALUES ('avatars', 'avatars', NULL, true, timestamptz '2025-01-01 00:00:00+00');
INSERT INTO storage.objects (id, bucket_id, name, owner, metadata, created_at)
SELECT md5('object' || i)::uuid, 'avatars', format('user%s/avatar.png', i), md5('user' || i)::uuid,
       jsonb_build_object('size', 1000 + i, 'mimetype', 'image/png'), timestamptz '2025-01-04 00:00:00+00'
FROM generate_series(1, 50) AS i;

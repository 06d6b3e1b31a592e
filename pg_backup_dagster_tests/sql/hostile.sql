-- Hostile identifiers and contents for the per-table tier: every name here has broken a naive splitter.
-- Loadable on PostgreSQL 12+ (tests load it on 15 and 18). Keep statements independent of search_path.

CREATE SCHEMA "Mixed Case";
CREATE SCHEMA "we""ird.sch/ema";
CREATE SCHEMA "..";
CREATE SCHEMA "pct%2F";
CREATE SCHEMA "new
line";
CREATE SCHEMA "ünï cødé ✓";
CREATE SCHEMA "select";
CREATE SCHEMA "case";
CREATE SCHEMA "CASE";

-- types and functions that tables need
CREATE TYPE "Mixed Case"."mood ☺" AS ENUM ('sad', 'ok', 'happy', 'it''s -- TOC entry 9998');
CREATE TYPE public.pair AS (a integer, b text);
CREATE DOMAIN public.posint AS integer CHECK (VALUE > 0);

CREATE FUNCTION "Mixed Case"."touch()"() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    -- a body with a fake header, quotes ' and $$ inside
    NEW."updated at" := now();
    RETURN NEW;
END
$body$;

-- plain table with a serial, identity, generated columns, comments and a fake TOC header in a comment
CREATE TABLE "Mixed Case"."Tab le" (
    id serial PRIMARY KEY,
    ident bigint GENERATED ALWAYS AS IDENTITY,
    "select" text DEFAULT E'\n--\n-- TOC entry 9999 (class 1259 OID 1)\n-- Name: x; Type: TABLE; Schema: public; Owner: -\n--\n',
    mood "Mixed Case"."mood ☺" DEFAULT 'ok',
    qty integer NOT NULL DEFAULT 1,
    twice integer GENERATED ALWAYS AS (qty * 2) STORED,
    "updated at" timestamptz,
    CONSTRAINT qty_positive CHECK (qty > 0)
);
COMMENT ON TABLE "Mixed Case"."Tab le" IS E'hostile comment\n\n--\n-- TOC entry 9999 (class 1259 OID 16385)\n-- Name: forged; Type: TABLE; Schema: public; Owner: -\n--\n\nDROP TABLE forged;\n\\.\n';
COMMENT ON COLUMN "Mixed Case"."Tab le"."select" IS 'column named select';
CREATE INDEX "idx ""quoted""" ON "Mixed Case"."Tab le" (lower("select"));
CREATE TRIGGER "touch trigger" BEFORE UPDATE ON "Mixed Case"."Tab le"
    FOR EACH ROW EXECUTE FUNCTION "Mixed Case"."touch()"();
ALTER TABLE "Mixed Case"."Tab le" ENABLE ROW LEVEL SECURITY;
CREATE POLICY "only ok" ON "Mixed Case"."Tab le" USING (mood <> 'sad');
CREATE STATISTICS "Mixed Case"."st ats" (dependencies) ON qty, twice FROM "Mixed Case"."Tab le";
INSERT INTO "Mixed Case"."Tab le" ("select", mood, qty) VALUES
    (E'\\.', 'happy', 3),
    (E'line one\nline two\n\\.\nafter', 'ok', 4),
    (E'\n--\n-- TOC entry 9999 (class 1259 OID 1)\n-- Name: x; Type: TABLE DATA; Schema: public; Owner: -\n--\n', 'sad', 5),
    (E'tab\there\rcarriage', 'it''s -- TOC entry 9998', 6),
    (NULL, 'ok', 7);
INSERT INTO "Mixed Case"."Tab le" (qty) SELECT g FROM generate_series(10, 60) g;

-- names differing only in case, in schemas differing only in case
CREATE TABLE "case"."T" (id int PRIMARY KEY, v text);
CREATE TABLE "case"."t" (id int PRIMARY KEY, v text);
CREATE TABLE "CASE"."t" (id int PRIMARY KEY, v text);
INSERT INTO "case"."T" VALUES (1, 'upper');
INSERT INTO "case"."t" VALUES (1, 'lower'), (2, 'lower2');
INSERT INTO "CASE"."t" VALUES (1, 'CASE schema');

-- quotes, dots, slashes, percent, dot-dot, newline, unicode, reserved words
CREATE TABLE "we""ird.sch/ema"."ta""ble.with/slash" (id int PRIMARY KEY, "val ue" text);
INSERT INTO "we""ird.sch/ema"."ta""ble.with/slash" VALUES (1, 'a"b'), (2, '..'), (3, '/etc/passwd');
CREATE TABLE "..".".." (id int);
INSERT INTO "..".".." VALUES (1), (2);
CREATE TABLE ".."."." (id int);
INSERT INTO ".."."." VALUES (3);
CREATE TABLE "pct%2F"."100%" (id int, "%25" text);
INSERT INTO "pct%2F"."100%" VALUES (1, '%2F%00');
CREATE TABLE "pct%2F"."100%25" (id int);
INSERT INTO "pct%2F"."100%25" VALUES (1), (2), (3);
CREATE TABLE "new
line"."tab
le" (id int, "co
l" text);
INSERT INTO "new
line"."tab
le" VALUES (1, E'multi\nline');
CREATE TABLE "ünï cødé ✓"."τάβλε 表" (id int, "ключ" text);
INSERT INTO "ünï cødé ✓"."τάβλε 表" VALUES (1, 'ünï'), (2, '表');
CREATE TABLE "select"."table" ("from" int, "where" text);
INSERT INTO "select"."table" VALUES (1, 'reserved');
CREATE TABLE "select"."select" (id int);
-- 63-byte names (the longest PostgreSQL keeps): ASCII and multi-byte
CREATE TABLE public.t23456789012345678901234567890123456789012345678901234567890123 (id int);
INSERT INTO public.t23456789012345678901234567890123456789012345678901234567890123 VALUES (63);
CREATE TABLE public."éééééééééééééééééééééééééééééééx" (id int);
INSERT INTO public."éééééééééééééééééééééééééééééééx" VALUES (1);
CREATE TABLE public."Space Only " (" " int);
INSERT INTO public."Space Only " VALUES (1);
CREATE TABLE public.uses_types (id int, p public.pair, n public.posint);
INSERT INTO public.uses_types VALUES (1, ROW(1, 'x'), 5);

-- partitioned table with a primary key, a sub-partitioned partition and a default partition
CREATE TABLE public."Parted" (id int NOT NULL, region text NOT NULL, note text, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE public."Parted eu" PARTITION OF public."Parted" FOR VALUES IN ('eu')
    PARTITION BY RANGE (id);
CREATE TABLE public."Parted eu low" PARTITION OF public."Parted eu" FOR VALUES FROM (0) TO (100);
CREATE TABLE public."Parted eu high" PARTITION OF public."Parted eu" FOR VALUES FROM (100) TO (MAXVALUE);
CREATE TABLE public."Parted us" PARTITION OF public."Parted" FOR VALUES IN ('us');
CREATE TABLE public."Parted default" PARTITION OF public."Parted" DEFAULT;
CREATE INDEX parted_note ON public."Parted" (note);
INSERT INTO public."Parted" SELECT g, (ARRAY['eu', 'us', 'xx'])[1 + g % 3], 'n' || g FROM generate_series(1, 300) g;

-- unlogged table
CREATE UNLOGGED TABLE public."unlogged tab" (id int PRIMARY KEY, payload text);
INSERT INTO public."unlogged tab" SELECT g, repeat('x', g) FROM generate_series(1, 20) g;

-- plain inheritance
CREATE TABLE public.inh_parent (id int, kind text);
CREATE TABLE public.inh_child (extra text) INHERITS (public.inh_parent);
INSERT INTO public.inh_parent VALUES (1, 'parent');
INSERT INTO public.inh_child VALUES (2, 'child', 'extra');

-- foreign-key cycle between two tables (in two schemas), deferrable so rows can reference each other
CREATE TABLE public.cyc_a (id int PRIMARY KEY, b_id int);
CREATE TABLE "Mixed Case".cyc_b (id int PRIMARY KEY, a_id int REFERENCES public.cyc_a (id) DEFERRABLE INITIALLY DEFERRED);
ALTER TABLE public.cyc_a ADD CONSTRAINT "a→b" FOREIGN KEY (b_id) REFERENCES "Mixed Case".cyc_b (id)
    DEFERRABLE INITIALLY DEFERRED;
BEGIN;
INSERT INTO public.cyc_a VALUES (1, 1), (2, 2);
INSERT INTO "Mixed Case".cyc_b VALUES (1, 2), (2, 1);
COMMIT;
-- a foreign key to the partitioned table
CREATE TABLE public.refs_parted (id int PRIMARY KEY, pid int, region text,
    FOREIGN KEY (pid, region) REFERENCES public."Parted" (id, region));
INSERT INTO public.refs_parted VALUES (1, 1, 'us'), (2, 2, 'xx');

-- views, materialized view, standalone sequence, rule, a large object
CREATE VIEW "Mixed Case"."happy view" AS SELECT id, "select" FROM "Mixed Case"."Tab le" WHERE mood = 'happy';
CREATE MATERIALIZED VIEW public."mat view" AS SELECT region, count(*) AS n FROM public."Parted" GROUP BY region;
CREATE SEQUENCE "we""ird.sch/ema"."free seq" START 42;
SELECT nextval('"we""ird.sch/ema"."free seq"');
CREATE TABLE public.ruled (id int);
CREATE RULE "no delete" AS ON DELETE TO public.ruled DO INSTEAD NOTHING;
INSERT INTO public.ruled VALUES (1);
SELECT lo_from_bytea(0, '\x6c6f');

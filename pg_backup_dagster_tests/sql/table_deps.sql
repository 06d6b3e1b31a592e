-- What PostgreSQL's regression database showed the per-table tier getting wrong (PostgreSQL 12+ for the access
-- method; tests load it on 18): a custom table access method set for one table, rules and policies reading
-- views, a table using another schema's domain, a foreign key and a policy naming other tables, a large object.

CREATE ACCESS METHOD heap2 TYPE TABLE HANDLER heap_tableam_handler;
CREATE SCHEMA app;
CREATE SCHEMA other;
CREATE DOMAIN public.shortstr AS text CHECK (length(VALUE) < 100);

CREATE TABLE app.plain (id int PRIMARY KEY, v text);
INSERT INTO app.plain VALUES (1, 'one'), (2, 'two');
-- dumped last of all tables, so the stream ends with default_table_access_method = heap2
SET default_table_access_method = heap2;
CREATE TABLE other.zz_heap2 (a int PRIMARY KEY, s public.shortstr);
RESET default_table_access_method;
INSERT INTO other.zz_heap2 VALUES (1, 'x'), (2, 'y'), (3, 'z');
CREATE TABLE other.uses_domain (id int, s public.shortstr, plain_id int REFERENCES app.plain);
INSERT INTO other.uses_domain VALUES (1, 'short', 1);

-- a rule writing to a view, a policy reading a view, one reading a materialized view, one reading a table
CREATE TABLE app.shoelace_data (sl_name text, sl_avail int);
INSERT INTO app.shoelace_data VALUES ('sl1', 5), ('sl2', 0);
CREATE VIEW app.shoelace AS SELECT sl_name, sl_avail FROM app.shoelace_data;
CREATE TABLE app.shoelace_ok (ok_name text, ok_quant int);
CREATE RULE shoelace_ok_ins AS ON INSERT TO app.shoelace_ok DO INSTEAD
    UPDATE app.shoelace SET sl_avail = shoelace.sl_avail + new.ok_quant WHERE shoelace.sl_name = new.ok_name;
CREATE MATERIALIZED VIEW app.names USING heap2 AS SELECT sl_name FROM app.shoelace_data;
CREATE TABLE app.docs (id int, owner text);
INSERT INTO app.docs VALUES (1, 'sl1');
ALTER TABLE app.docs ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_view ON app.docs USING (owner IN (SELECT sl_name FROM app.shoelace));
CREATE POLICY by_matview ON app.docs USING (owner IN (SELECT sl_name FROM app.names));
CREATE TABLE app.notes (id int, owner text);
INSERT INTO app.notes VALUES (1, 'sl2');
ALTER TABLE app.notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_table ON app.notes USING (owner IN (SELECT sl_name FROM app.shoelace_data));

-- pg_restore writes BEGIN; ... COMMIT; around large-object data
SELECT lo_from_bytea(0, '\x6c6f');

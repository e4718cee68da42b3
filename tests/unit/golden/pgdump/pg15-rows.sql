CREATE SCHEMA "we ird.sch""ema ü";
CREATE TABLE "we ird.sch""ema ü"."ta.ble ""q"" 顧客" (id int, v text);
INSERT INTO "we ird.sch""ema ü"."ta.ble ""q"" 顧客" SELECT g, 'v' || g FROM generate_series(1, 7) g;
CREATE TABLE many (id int PRIMARY KEY, name text, n numeric);
INSERT INTO many SELECT g, 'name ' || g, g * 1.5 FROM generate_series(1, 30000) g;
CREATE TABLE texts (id int, t text);
INSERT INTO texts VALUES (1, E'line\nbreak'), (2, E'back\\slash'), (3, E'tab\there'), (4, 'ünï 顧客 ✓'),
  (5, E'\r\n\n\n'), (6, E'\\.'), (7, NULL), (8, ''), (9, E'\\N'), (10, E'end\n');
CREATE TABLE bin (id int, b bytea);
INSERT INTO bin SELECT g, decode(repeat('0a00', g), 'hex') FROM generate_series(1, 40) g;
CREATE TABLE empty_one (id int);
CREATE TABLE parted (id int, k int) PARTITION BY RANGE (k);
CREATE TABLE parted_a PARTITION OF parted FOR VALUES FROM (0) TO (10);
CREATE TABLE parted_b PARTITION OF parted FOR VALUES FROM (10) TO (20);
CREATE TABLE parted_empty PARTITION OF parted FOR VALUES FROM (20) TO (30);
INSERT INTO parted SELECT g, g % 20 FROM generate_series(1, 100) g;
CREATE TABLE gen (a int, b int GENERATED ALWAYS AS (a * 2) STORED);
INSERT INTO gen (a) SELECT g FROM generate_series(1, 12) g;
CREATE TABLE ten (t text);  -- rows of 10 bytes: a chunk length 0x0A
INSERT INTO ten SELECT lpad(g::text, 9, '0') FROM generate_series(1, 300) g;
CREATE TABLE mid (t text);  -- rows of 2560..2815 bytes: a length byte 0x0A followed by 0x00
INSERT INTO mid SELECT repeat('y', 2559 + g) FROM generate_series(1, 256) g;
CREATE TABLE huge (t text);  -- rows of 655360+ bytes: the third length byte is 0x0A
INSERT INTO huge SELECT repeat('z', 655359 + g) FROM generate_series(1, 3) g;
CREATE TABLE blank (t text);  -- rows that are a lone newline
INSERT INTO blank SELECT '' FROM generate_series(1, 50) g;
CREATE TABLE mixed (t text);
INSERT INTO mixed SELECT repeat('m', g % 3000) FROM generate_series(1, 3000) g;
CREATE TABLE parent (id int);
CREATE TABLE child (extra text) INHERITS (parent);
CREATE TABLE grandchild () INHERITS (child);
INSERT INTO parent SELECT g FROM generate_series(1, 5) g;
INSERT INTO child SELECT g, 'c' FROM generate_series(1, 4) g;
INSERT INTO grandchild SELECT g, 'g' FROM generate_series(1, 3) g;
CREATE UNLOGGED TABLE scratch (id int);
INSERT INTO scratch SELECT g FROM generate_series(1, 9) g;
CREATE MATERIALIZED VIEW mv AS SELECT id FROM many WHERE id < 10;
SELECT lo_from_bytea(0, decode(repeat('0a', 100), 'hex'));
SELECT lo_from_bytea(0, decode(repeat('00', 70000), 'hex'));

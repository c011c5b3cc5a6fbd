-- The benchmark's write target: a plain event table with one secondary index.
CREATE TABLE events (
    id       INTEGER PRIMARY KEY,
    day      TEXT NOT NULL,
    kind     TEXT NOT NULL,
    value    INTEGER NOT NULL,
    payload  TEXT
);
CREATE INDEX events_day_kind ON events (day, kind);

-- Production records of the current period: one row per line, shift and product per day.
CREATE TABLE products (
    sku        TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    unit_cost  REAL NOT NULL CHECK (unit_cost >= 0)
) WITHOUT ROWID;

CREATE TABLE production_runs (
    id               INTEGER PRIMARY KEY,
    day              TEXT NOT NULL CHECK (day GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
    line             TEXT NOT NULL,
    shift            INTEGER NOT NULL CHECK (shift BETWEEN 1 AND 3),
    sku              TEXT NOT NULL REFERENCES products (sku),
    units_produced   INTEGER NOT NULL DEFAULT 0 CHECK (units_produced >= 0),
    units_scrapped   INTEGER NOT NULL DEFAULT 0 CHECK (units_scrapped >= 0),
    status           TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'halted')),
    note             TEXT,
    UNIQUE (day, line, shift)
);

-- Composite: a day's runs by line, the dashboard's main read.
CREATE INDEX production_runs_day_line ON production_runs (day, line);
-- Covering: per-line output over a date range is answered from the index alone.
CREATE INDEX production_runs_line_day_units ON production_runs (line, day, units_produced, units_scrapped);
-- Partial: the few runs still open, without indexing the many finished ones.
CREATE INDEX production_runs_open ON production_runs (line, day) WHERE status <> 'done';

CREATE TABLE scrap_events (
    id        INTEGER PRIMARY KEY,
    run_id    INTEGER NOT NULL REFERENCES production_runs (id) ON DELETE CASCADE,
    reason    TEXT NOT NULL,
    units     INTEGER NOT NULL CHECK (units > 0)
);
CREATE INDEX scrap_events_run ON scrap_events (run_id);

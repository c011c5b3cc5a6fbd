-- Production records of closed periods, moved out of live; same shape, read-mostly.
CREATE TABLE production_runs (
    id               INTEGER PRIMARY KEY,
    day              TEXT NOT NULL,
    line             TEXT NOT NULL,
    shift            INTEGER NOT NULL CHECK (shift BETWEEN 1 AND 3),
    sku              TEXT NOT NULL,
    units_produced   INTEGER NOT NULL DEFAULT 0 CHECK (units_produced >= 0),
    units_scrapped   INTEGER NOT NULL DEFAULT 0 CHECK (units_scrapped >= 0),
    status           TEXT NOT NULL DEFAULT 'done' CHECK (status IN ('running', 'done', 'halted')),
    note             TEXT,
    UNIQUE (day, line, shift)
);

CREATE INDEX production_runs_day_line ON production_runs (day, line);
CREATE INDEX production_runs_line_day_units ON production_runs (line, day, units_produced, units_scrapped);

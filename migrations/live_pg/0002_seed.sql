-- The example data of migrations/live/0002_seed.sql: 60 days of 4 lines x 3 shifts.
INSERT INTO products (sku, name, unit_cost) VALUES
    ('BRK-100', 'Brake caliper', 41.5),
    ('HNG-220', 'Door hinge', 3.2),
    ('PMP-310', 'Water pump', 58.0),
    ('VLV-404', 'Intake valve', 7.75);

INSERT INTO production_runs (day, line, shift, sku, units_produced, units_scrapped, status)
SELECT to_char(date '2026-01-01' + n, 'YYYY-MM-DD'), line, shift, sku,
       400 + ((n * 37 + shift * 11 + ascii(substr(line, 2))) % 200),
       (n * 7 + shift) % 13,
       CASE WHEN n < 59 THEN 'done' ELSE 'running' END
FROM generate_series(0, 59) AS days(n),
     (VALUES ('L1', 'BRK-100'), ('L2', 'HNG-220'), ('L3', 'PMP-310'), ('L4', 'VLV-404')) AS lines(line, sku),
     (VALUES (1), (2), (3)) AS shifts(shift)
ORDER BY 1, 2, 3;

-- The example data of migrations/archive/0002_seed.sql: the last 90 days of 2025.
INSERT INTO production_runs (day, line, shift, sku, units_produced, units_scrapped, status)
SELECT to_char(date '2025-10-03' + n, 'YYYY-MM-DD'), line, shift, sku,
       380 + ((n * 41 + shift * 13 + ascii(substr(line, 2))) % 180),
       (n * 5 + shift) % 11,
       'done'
FROM generate_series(0, 89) AS days(n),
     (VALUES ('L1', 'BRK-100'), ('L2', 'HNG-220'), ('L3', 'PMP-310'), ('L4', 'VLV-404')) AS lines(line, sku),
     (VALUES (1), (2), (3)) AS shifts(shift)
ORDER BY 1, 2, 3;

-- Example data: the last 90 days of 2025.
INSERT INTO production_runs (day, line, shift, sku, units_produced, units_scrapped, status)
WITH RECURSIVE days(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM days WHERE n < 89),
     lines(line, sku) AS (VALUES ('L1', 'BRK-100'), ('L2', 'HNG-220'), ('L3', 'PMP-310'), ('L4', 'VLV-404')),
     shifts(shift) AS (VALUES (1), (2), (3))
SELECT date('2025-10-03', '+' || n || ' days'), line, shift, sku,
       380 + ((n * 41 + shift * 13 + unicode(substr(line, 2))) % 180),
       (n * 5 + shift) % 11,
       'done'
FROM days, lines, shifts
ORDER BY 1, 2, 3;

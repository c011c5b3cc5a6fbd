-- 100,000 rows with the values bench.datasets.events_database gives SQLite (ids 1..100,000).
INSERT INTO events (day, kind, value, payload)
SELECT format('2026-%s-%s', lpad((i % 12 + 1)::text, 2, '0'), lpad((i % 28 + 1)::text, 2, '0')),
       (ARRAY['click', 'view', 'buy'])[i % 3 + 1],
       i % 1000,
       'p' || lpad(i::text, 9, '0')
FROM generate_series(1, 100000) AS i
ORDER BY i;
ANALYZE events;

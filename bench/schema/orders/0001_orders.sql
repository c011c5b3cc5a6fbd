-- The key-invalidation benchmark's table: orders looked up by customer.
CREATE TABLE orders (
    id       INTEGER PRIMARY KEY,
    customer INTEGER NOT NULL,
    day      INTEGER NOT NULL,
    amount   REAL NOT NULL
);
CREATE INDEX orders_customer_day ON orders (customer, day);

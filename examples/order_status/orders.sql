-- Demo orders for examples/order_status/server.py (loaded into an in-memory SQLite database at start).
CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    customer TEXT NOT NULL,      -- the caller's number as the network gives it (P-Asserted-Identity / trunk)
    status   TEXT NOT NULL,
    eta      TEXT NOT NULL,
    items    INTEGER NOT NULL
);
INSERT INTO orders VALUES
    ('1001', '4930123456', 'shipped',   'on Friday',      2),
    ('1002', '4930123456', 'packed',    'next Monday',    1),
    ('1234', '4989555000', 'delivered', 'last Tuesday',   3),
    ('2024', '4940777111', 'delayed',   'in two weeks',   5),
    ('4711', '4930999888', 'cancelled', 'none',           1),
    ('KL4729', '4930123456', 'out for delivery', 'today', 1),      -- spelled by voice on the order_desk route
    ('AB1234', '4989555000', 'packed',    'on Thursday',    2);

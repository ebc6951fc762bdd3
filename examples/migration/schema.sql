-- The walkthrough's source database: a small shop.
CREATE TABLE customers (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    email text,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE products (
    sku text PRIMARY KEY,
    title text NOT NULL,
    price numeric(10,2) NOT NULL,
    -- Large enough to be TOASTed: left unchanged by most updates.
    description text
);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    sku text NOT NULL,
    quantity int NOT NULL,
    status text NOT NULL DEFAULT 'new',
    placed timestamptz NOT NULL DEFAULT now()
);

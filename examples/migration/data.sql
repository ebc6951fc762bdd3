-- The walkthrough's data: 2,000 customers, 100 products, 20,000 orders.
INSERT INTO customers (id, name, email)
  SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 2000) g;
INSERT INTO products (sku, title, price, description)
  SELECT 'sku-' || g, 'product ' || g, (g % 97) + 0.99,
         (SELECT string_agg(md5((g * 1000 + i)::text), '') FROM generate_series(1, 200) i)
  FROM generate_series(1, 100) g;
INSERT INTO orders (id, customer_id, sku, quantity)
  SELECT g, g % 2000 + 1, 'sku-' || (g % 100 + 1), g % 5 + 1 FROM generate_series(1, 20000) g;
ANALYZE;

-- Campaigns reach the users who opted in: each user's promotional channels that are on, as
-- ",email,push,", kept beside the preferences document so one query finds them.
ALTER TABLE notify_preferences ADD COLUMN promotional_channels TEXT NOT NULL DEFAULT '';
UPDATE notify_preferences SET promotional_channels = COALESCE(
    (SELECT ',' || string_agg(key, ',' ORDER BY key) || ','
     FROM jsonb_each(document::jsonb -> 'promotional') WHERE value = 'true'::jsonb),
    '');

-- Who placed each order (from order.placed), for the messages about it later (order.shipped).
CREATE TABLE notify_orders (
    order_id      TEXT PRIMARY KEY,
    customer_id   TEXT NOT NULL,
    updated_at_us BIGINT NOT NULL
);

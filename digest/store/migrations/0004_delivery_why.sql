-- Migration 4: deliveries.why, the reason a paper is in a digest beyond its matched words.
-- Frozen once released: never edit this file, add a new migration instead.

ALTER TABLE deliveries ADD COLUMN why TEXT;

-- Migration 7: topics.compiled, the topic's query compiled when saved (query.encode_query).
-- Frozen once released: never edit this file, add a new migration instead.

ALTER TABLE topics ADD COLUMN compiled BLOB;

-- Migration 5: digest pages: how many papers a digest matched, the ones its email left out.
-- Frozen once released: never edit this file, add a new migration instead.

ALTER TABLE digests ADD COLUMN matched INTEGER;

CREATE TABLE digest_extras (
	digest_id INTEGER NOT NULL,
	paper_id INTEGER NOT NULL,
	position INTEGER NOT NULL,
	topics TEXT,
	terms TEXT,
	score FLOAT,
	PRIMARY KEY (digest_id, paper_id),
	FOREIGN KEY(digest_id) REFERENCES digests (id) ON DELETE CASCADE,
	FOREIGN KEY(paper_id) REFERENCES papers (id)
);

CREATE INDEX ix_digests_archive ON digests (subscriber_id, id);

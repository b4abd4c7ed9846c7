-- Migration 6: rising papers (upvote jumps) and the rising papers given back, once each.
-- Frozen once released: never edit this file, add a new migration instead.

CREATE TABLE rising (
	paper_id INTEGER NOT NULL,
	dump_id INTEGER NOT NULL,
	from_upvotes INTEGER NOT NULL,
	to_upvotes INTEGER NOT NULL,
	seen_at DATETIME NOT NULL,
	PRIMARY KEY (paper_id, dump_id),
	FOREIGN KEY(paper_id) REFERENCES papers (id),
	FOREIGN KEY(dump_id) REFERENCES dumps (id)
);

CREATE INDEX ix_rising_seen_at ON rising (seen_at);

CREATE TABLE rising_deliveries (
	subscriber_id INTEGER NOT NULL,
	paper_id INTEGER NOT NULL,
	digest_id INTEGER,
	delivered_at DATETIME NOT NULL,
	topics TEXT,
	terms TEXT,
	score FLOAT,
	PRIMARY KEY (subscriber_id, paper_id),
	FOREIGN KEY(subscriber_id) REFERENCES subscribers (id) ON DELETE CASCADE,
	FOREIGN KEY(paper_id) REFERENCES papers (id),
	FOREIGN KEY(digest_id) REFERENCES digests (id) ON DELETE CASCADE
);

CREATE INDEX ix_rising_deliveries_digest ON rising_deliveries (digest_id);

-- Migration 2: subscriber_events (status history) and feedback (verdicts on papers).
-- Frozen once released: never edit this file, add a new migration instead.

CREATE TABLE subscriber_events (
	id INTEGER NOT NULL,
	subscriber_id INTEGER NOT NULL,
	at DATETIME NOT NULL,
	old_status VARCHAR(16),
	new_status VARCHAR(16) NOT NULL,
	how VARCHAR(16) NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(subscriber_id) REFERENCES subscribers (id) ON DELETE CASCADE
);

CREATE INDEX ix_subscriber_events_subscriber ON subscriber_events (subscriber_id, id);

CREATE TABLE feedback (
	id INTEGER NOT NULL,
	subscriber_id INTEGER NOT NULL,
	topic TEXT NOT NULL,
	paper_id INTEGER NOT NULL,
	verdict VARCHAR(8) NOT NULL,
	at DATETIME NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT uq_feedback_once UNIQUE (subscriber_id, topic, paper_id),
	CONSTRAINT ck_feedback_verdict CHECK (verdict IN ('like', 'dislike')),
	FOREIGN KEY(subscriber_id) REFERENCES subscribers (id) ON DELETE CASCADE,
	FOREIGN KEY(paper_id) REFERENCES papers (id)
);

-- Migration 3: suppressions (wiped addresses, by hash) and when a confirmation was last mailed.
-- Frozen once released: never edit this file, add a new migration instead.

ALTER TABLE subscribers ADD COLUMN confirm_sent_at DATETIME;

CREATE TABLE suppressions (
	email_hash VARCHAR(64) NOT NULL,
	at DATETIME NOT NULL,
	reason TEXT NOT NULL,
	PRIMARY KEY (email_hash)
);

-- Migration 1: dumps, papers, sightings, subscribers, topics, digests, deliveries, meta.
-- Generated once (sqlite) from the tables of digest 0.1.0; frozen: never edit this file,
-- add a new migration instead.

CREATE TABLE dumps (
	id INTEGER NOT NULL,
	name TEXT NOT NULL,
	sha256 VARCHAR(64) NOT NULL,
	size BIGINT NOT NULL,
	received_at DATETIME NOT NULL,
	status VARCHAR(16) NOT NULL,
	papers INTEGER DEFAULT '0' NOT NULL,
	new_papers INTEGER DEFAULT '0' NOT NULL,
	error TEXT,
	layout TEXT,
	captured_on DATE,
	PRIMARY KEY (id),
	CONSTRAINT ck_dumps_status CHECK (status IN ('stored', 'failed', 'duplicate'))
);

CREATE INDEX ix_dumps_received_at ON dumps (received_at);

CREATE INDEX ix_dumps_sha256 ON dumps (sha256);

CREATE UNIQUE INDEX ux_dumps_sha256_stored ON dumps (sha256) WHERE status = 'stored';

CREATE TABLE meta (
	"key" VARCHAR(100) NOT NULL,
	value TEXT NOT NULL,
	PRIMARY KEY ("key")
);

CREATE TABLE subscribers (
	id INTEGER NOT NULL,
	email TEXT NOT NULL,
	name TEXT DEFAULT '' NOT NULL,
	status VARCHAR(16) NOT NULL,
	cadence VARCHAR(16) NOT NULL,
	time VARCHAR(5) NOT NULL,
	tz TEXT NOT NULL,
	weekday INTEGER DEFAULT '0' NOT NULL,
	created_at DATETIME NOT NULL,
	since DATETIME,
	token VARCHAR(64) NOT NULL,
	bounces INTEGER DEFAULT '0' NOT NULL,
	updated_at DATETIME NOT NULL,
	watermark INTEGER DEFAULT '0' NOT NULL,
	last_slot DATETIME,
	next_due_at DATETIME,
	PRIMARY KEY (id),
	UNIQUE (email),
	UNIQUE (token),
	CONSTRAINT ck_subscribers_weekday CHECK (weekday BETWEEN 0 AND 6),
	CONSTRAINT ck_subscribers_cadence CHECK (cadence IN ('instant', 'daily', 'weekly', 'feed')),
	CONSTRAINT ck_subscribers_status CHECK (status IN ('pending', 'active', 'paused', 'unsubscribed', 'bouncing'))
);

CREATE INDEX ix_subscribers_due ON subscribers (status, next_due_at);

CREATE INDEX ix_subscribers_status ON subscribers (status);

CREATE TABLE digests (
	id INTEGER NOT NULL,
	subscriber_id INTEGER NOT NULL,
	kind VARCHAR(8) NOT NULL,
	message_id TEXT NOT NULL,
	status VARCHAR(16) NOT NULL,
	created_at DATETIME NOT NULL,
	claimed_by TEXT,
	lease_until DATETIME,
	attempts INTEGER DEFAULT '0' NOT NULL,
	next_attempt_at DATETIME,
	sent_at DATETIME,
	last_error TEXT,
	PRIMARY KEY (id),
	UNIQUE (message_id),
	CONSTRAINT ck_digests_status CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'bounced')),
	FOREIGN KEY(subscriber_id) REFERENCES subscribers (id) ON DELETE CASCADE,
	CONSTRAINT ck_digests_kind CHECK (kind IN ('email', 'feed'))
);

CREATE INDEX ix_digests_queue ON digests (status, next_attempt_at);

CREATE INDEX ix_digests_subscriber ON digests (subscriber_id, created_at);

CREATE TABLE papers (
	id INTEGER NOT NULL,
	"key" VARCHAR(64) NOT NULL,
	title TEXT NOT NULL,
	abstract TEXT NOT NULL,
	authors INTEGER,
	organization TEXT,
	organization_id TEXT,
	published DATE,
	upvotes INTEGER,
	first_seen DATETIME NOT NULL,
	first_dump_id INTEGER NOT NULL,
	updated_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	UNIQUE ("key"),
	FOREIGN KEY(first_dump_id) REFERENCES dumps (id)
);

CREATE INDEX ix_papers_first_seen ON papers (first_seen);

CREATE TABLE topics (
	id INTEGER NOT NULL,
	subscriber_id INTEGER NOT NULL,
	position INTEGER NOT NULL,
	name TEXT NOT NULL,
	"query" TEXT NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(subscriber_id) REFERENCES subscribers (id) ON DELETE CASCADE
);

CREATE INDEX ix_topics_subscriber ON topics (subscriber_id, position);

CREATE TABLE deliveries (
	subscriber_id INTEGER NOT NULL,
	paper_id INTEGER NOT NULL,
	digest_id INTEGER,
	topic TEXT,
	delivered_at DATETIME NOT NULL,
	topics TEXT,
	terms TEXT,
	score FLOAT,
	PRIMARY KEY (subscriber_id, paper_id),
	FOREIGN KEY(subscriber_id) REFERENCES subscribers (id) ON DELETE CASCADE,
	FOREIGN KEY(paper_id) REFERENCES papers (id),
	FOREIGN KEY(digest_id) REFERENCES digests (id) ON DELETE CASCADE
);

CREATE INDEX ix_deliveries_digest ON deliveries (digest_id);

CREATE TABLE sightings (
	paper_id INTEGER NOT NULL,
	dump_id INTEGER NOT NULL,
	upvotes INTEGER,
	PRIMARY KEY (paper_id, dump_id),
	FOREIGN KEY(paper_id) REFERENCES papers (id),
	FOREIGN KEY(dump_id) REFERENCES dumps (id)
);

CREATE INDEX ix_sightings_dump_id ON sightings (dump_id);

-- One chain for every caller (issue 15, item 9): a number's last resort after
-- its agent and its route, and each call's steps as they went.
ALTER TABLE numbers ADD COLUMN fallback_target text CHECK (length(fallback_target) BETWEEN 1 AND 300);
ALTER TABLE call_records ADD COLUMN steps jsonb NOT NULL DEFAULT '[]';

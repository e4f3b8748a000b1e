-- What happens to the caller past a number's R7 limit (issue 15, item 8):
-- busy (486, as before), forward (ring an overflow SIP URI or E.164 instead),
-- or text_back (486, then a text to the caller from the number).
ALTER TABLE numbers
    ADD COLUMN overflow        text NOT NULL DEFAULT 'busy' CHECK (overflow IN ('busy', 'forward', 'text_back')),
    ADD COLUMN overflow_target text CHECK (length(overflow_target) BETWEEN 1 AND 300),
    ADD COLUMN overflow_text   text CHECK (length(overflow_text) BETWEEN 1 AND 640),
    ADD CONSTRAINT numbers_overflow_needs_target CHECK (overflow <> 'forward' OR overflow_target IS NOT NULL);

-- Admins see every over-limit caller on their event stream.
ALTER TABLE user_events DROP CONSTRAINT user_events_kind_check;
ALTER TABLE user_events ADD CONSTRAINT user_events_kind_check
    CHECK (kind IN ('text', 'notification', 'over_limit'));

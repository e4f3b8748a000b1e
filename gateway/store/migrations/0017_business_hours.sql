-- Business hours per number (issue 15, item 10): a weekly schedule in the
-- number's time zone with holidays (NULL: always open), and where calls go
-- outside it: users rung at once, a forward target, or a text back.
ALTER TABLE numbers
    ADD COLUMN business_hours       jsonb,
    ADD COLUMN after_hours          text NOT NULL DEFAULT 'users'
                                    CHECK (after_hours IN ('users', 'forward', 'text_back')),
    ADD COLUMN after_hours_user_ids bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN after_hours_target   text CHECK (length(after_hours_target) BETWEEN 1 AND 300),
    ADD COLUMN after_hours_text     text CHECK (length(after_hours_text) BETWEEN 1 AND 640),
    ADD CONSTRAINT numbers_after_hours_needs_target
        CHECK (after_hours <> 'forward' OR after_hours_target IS NOT NULL);

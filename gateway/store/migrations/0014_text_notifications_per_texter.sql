-- R8 for texts (issue 15, item 2): an unknown texter raises one open
-- notification per number and user, however many texts they send before
-- someone acts on it. Calls keep one per call.
CREATE UNIQUE INDEX notifications_open_text_per_texter ON notifications (user_id, number_id, caller_e164)
    WHERE state = 'open' AND channel = 'text';

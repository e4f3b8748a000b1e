-- Campaign text codes (keywords) and postcard codes, on personal numbers only (R14).
CREATE TABLE text_codes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint NOT NULL,
    number_id   bigint NOT NULL,
    keyword     text NOT NULL CHECK (keyword ~ '^[A-Za-z0-9]{2,20}$'),
    purpose     text NOT NULL DEFAULT 'campaign' CHECK (purpose IN ('campaign', 'postcard')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (account_id, number_id) REFERENCES numbers (account_id, id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX text_codes_keyword_per_number ON text_codes (number_id, upper(keyword));

-- R14: "Can the Company Number be used for Text Codes ... Or with Postcards? No."
CREATE FUNCTION text_codes_personal_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT kind FROM numbers WHERE id = NEW.number_id) <> 'personal' THEN
        RAISE EXCEPTION 'company and office numbers cannot be used for text codes or postcards'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'text_codes_personal_only';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER text_codes_personal_only BEFORE INSERT OR UPDATE OF number_id ON text_codes
    FOR EACH ROW EXECUTE FUNCTION text_codes_personal_only();

-- Numbers available to buy (R13). The default provider inventory: filled by
-- `gateway inventory add`, drained by purchases, refilled by releases.
CREATE TABLE number_inventory (
    e164      e164 PRIMARY KEY,
    provider  text NOT NULL DEFAULT 'twilio' CHECK (provider IN ('twilio', 'telnyx', 'sip')),
    added_at  timestamptz NOT NULL DEFAULT now()
);

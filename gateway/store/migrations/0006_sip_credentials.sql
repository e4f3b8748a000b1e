-- SIP digest credentials of a user's phone (outbound calls, R11). Only HA1 =
-- MD5(username:realm:password) is stored, as SIP registrars do: the password
-- itself never is. Changing sip.realm invalidates every HA1 (set them again).
ALTER TABLE users
    ADD COLUMN sip_username text CHECK (sip_username ~ '^[A-Za-z0-9._-]{3,64}$'),
    ADD COLUMN sip_ha1 text CHECK (sip_ha1 ~ '^[0-9a-f]{32}$'),
    ADD CONSTRAINT users_sip_credentials_together CHECK ((sip_username IS NULL) = (sip_ha1 IS NULL));
CREATE UNIQUE INDEX users_sip_username ON users (lower(sip_username));

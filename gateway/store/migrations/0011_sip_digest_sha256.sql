-- RFC 8760: phones may authenticate with SHA-256 digest as well as MD5, so the
-- SHA-256 HA1 is kept beside the MD5 one (both derived from the same password
-- when it is set; users whose password predates this have MD5 only).
ALTER TABLE users
    ADD COLUMN sip_ha1_sha256 text CHECK (sip_ha1_sha256 ~ '^[0-9a-f]{64}$'),
    ADD CONSTRAINT users_sip_sha256_with_username CHECK (sip_username IS NOT NULL OR sip_ha1_sha256 IS NULL);

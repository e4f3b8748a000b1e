-- Added-on usage packages (issue 15, item 6): minutes and text segments a user
-- gets on top of their package's allowance. An unlimited package (NULL
-- allowance) stays unlimited.
ALTER TABLE users
    ADD COLUMN addon_minutes  integer NOT NULL DEFAULT 0 CHECK (addon_minutes >= 0),
    ADD COLUMN addon_segments integer NOT NULL DEFAULT 0 CHECK (addon_segments >= 0);

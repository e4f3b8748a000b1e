-- R9's over-quota flag is no longer stored with each usage row (issue 17,
-- item 2: one home for the rule). It was computed at charge time twice, in
-- Python for calls and in the batched SQL for texts; it is now derived when
-- usage is read, by domain/billing.over_quota over the period's running total
-- against the user's current allowance (so an add-on bought later covers the
-- month it was bought for). Charging a text or a call no longer reads the
-- period's total at all.
ALTER TABLE usage_ledger DROP COLUMN over_quota;

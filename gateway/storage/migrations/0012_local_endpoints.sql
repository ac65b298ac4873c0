-- A local endpoint (SPEC 4 `local`): a receiver on the same machine or network, which alone
-- may use http:// and loopback or private addresses whatever delivery.allow_http and
-- delivery.allow_private_urls say (never link-local, multicast or reserved ones).
ALTER TABLE endpoints ADD COLUMN local INTEGER NOT NULL DEFAULT 0;
-- A webhook signed with the install's local simulate key (`simulate`), not by Meta: the
-- monitor's "Last Meta webhook", the metric and gateway.silent count Meta's own only.
ALTER TABLE webhooks ADD COLUMN simulated INTEGER NOT NULL DEFAULT 0;

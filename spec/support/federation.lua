-- SPDX-License-Identifier: MIT
-- Workload identity federation as the specs name it (43, 47, 48, 73), written once: OAuth
-- scopes, the STS grant and token types (RFC 8693, Google's STS), Google's error texts (as
-- emulator_federation.py has them from Google's answers), pools of a spec file's own, fresh
-- service-account emails and credential files.
--   local federation = require "support.federation"
--   local P = federation.pools("pool-", "staff-")   -- P.pool, P.oidc_aud, P.aws_aud, P.client_aud, P.wf_pool, P.wf_aud
local H = require "helpers"
local core = require "healthcare.core"

local M = {
  PLATFORM = "https://www.googleapis.com/auth/cloud-platform",
  HEALTHCARE = "https://www.googleapis.com/auth/cloud-healthcare",
  EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange",
  ACCESS = "urn:ietf:params:oauth:token-type:access_token",
  JWT = "urn:ietf:params:oauth:token-type:jwt",
  SAML = "urn:ietf:params:oauth:token-type:saml2",
  AWS4 = "urn:ietf:params:aws:token-type:aws4_request",
  MSG_DENIED = "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
}

--- A workload identity pool (projects/123456789/.../workloadIdentityPools/<pool_prefix><hex>) and
--- a workforce pool (locations/global/workforcePools/<workforce_prefix><hex>), fresh names, and
--- the audiences of their providers: oidc, aws, with-client, and the workforce pool's idp.
function M.pools(pool_prefix, workforce_prefix)
  local pool = "projects/123456789/locations/global/workloadIdentityPools/" .. pool_prefix .. core.random_hex(3)
  local wf_pool = "locations/global/workforcePools/" .. workforce_prefix .. core.random_hex(3)
  return { pool = pool, oidc_aud = "//iam.googleapis.com/" .. pool .. "/providers/oidc",
    aws_aud = "//iam.googleapis.com/" .. pool .. "/providers/aws",
    client_aud = "//iam.googleapis.com/" .. pool .. "/providers/with-client",
    wf_pool = wf_pool, wf_aud = "//iam.googleapis.com/" .. wf_pool .. "/providers/idp" }
end

--- A service account's email in the emulator's test project, new each time: what-<hex>@....
function M.fresh_email(what)
  return what .. "-" .. core.random_hex(4) .. "@test-project.iam.gserviceaccount.com"
end

--- t written as JSON to adc.json in a new directory (a credential file): its path.
function M.write_adc(t)
  return H.write_file(H.tmpdir() .. "/adc.json", H.json.encode(t))
end

return M

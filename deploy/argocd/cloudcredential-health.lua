-- Argo CD health check for cloudcred.io/CloudCredential (Lua 5.1, Argo CD's sandbox).
-- Argo CD sets the global `obj` to the object and expects {status = ..., message = ...}.
local hs = {}

local function condition(conditions, type_)
  for _, c in ipairs(conditions or {}) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.type .. "=" .. tostring(c.status)
  if c.reason ~= nil and c.reason ~= "" then
    text = text .. " (" .. c.reason .. ")"
  end
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

-- Verified reasons that clear up by themselves: the operator retries them with backoff.
local transient = { SecretNotFound = true, ProviderUnreachable = true }

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to check the credential"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to check generation " .. tostring(generation)
  return hs
end

local verified = condition(status.conditions, "Verified") or condition(status.conditions, "Ready")
local rollout = condition(status.conditions, "RolloutComplete")
if verified == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to check the credential"
  return hs
end

if verified.status == "False" and not transient[verified.reason] then
  -- InvalidCredentials, AccessDenied, SecretKeyMissing, InvalidSecretData: a person
  -- must act.
  hs.status = "Degraded"
  hs.message = describe(verified)
  return hs
end

if rollout ~= nil and rollout.status == "False" and rollout.reason == "RolloutBlocked" then
  -- A new revision failed verification, or a cluster failed to deploy it.
  hs.status = "Degraded"
  hs.message = describe(rollout)
  return hs
end

if verified.status == "False" then
  hs.status = "Progressing"
  hs.message = describe(verified) .. " (the operator retries)"
  return hs
end

local note = ""
if verified.status == "Unknown" then
  if verified.reason == "VerificationDisabled" then
    note = "verification is disabled (spec.verification.enabled: false); "
  elseif verified.reason == "VerificationUnavailable" then
    -- A steady state (e.g. GCP workload identity, which needs the workload's own
    -- token): Progressing forever would block sync waves.
    note = "not verified: " .. tostring(verified.message) .. "; "
  else
    hs.status = "Progressing"
    hs.message = describe(verified)
    return hs
  end
end

local annotations = obj.metadata.annotations or {}
if rollout == nil then
  hs.status = "Progressing"
  hs.message = note .. "Waiting for the operator to compute the rollout status"
  return hs
end
if rollout.status ~= "True" then
  if annotations["cloudcred.io/rollout-paused"] == "true" then
    hs.status = "Suspended"
    hs.message = note .. "Rollout paused (cloudcred.io/rollout-paused): " .. describe(rollout)
  else
    hs.status = "Progressing"
    hs.message = note .. describe(rollout)
  end
  return hs
end

hs.status = "Healthy"
if note == "" then
  hs.message = tostring(verified.message) .. "; " .. tostring(rollout.message)
else
  hs.message = note .. tostring(rollout.message)
end
return hs

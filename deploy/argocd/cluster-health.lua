-- Argo CD health check for cloudcred.io/Cluster (Lua 5.1, Argo CD's sandbox).
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

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to bind the cluster to its credential"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to process generation " .. tostring(generation)
  return hs
end

local bound = condition(status.conditions, "CredentialBound")
if bound == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to bind the cluster to its credential"
  return hs
end
if bound.status ~= "True" then
  -- CredentialNotFound, ProviderMismatch, NamespaceNotAllowed, CredentialDeleting.
  hs.status = "Degraded"
  hs.message = describe(bound)
  return hs
end

local pending = condition(status.conditions, "RedeployPending")
local ready = condition(status.conditions, "Ready")
if pending ~= nil and pending.status == "True" then
  if pending.reason == "DeployFailed" then
    hs.status = "Degraded"
    hs.message = describe(pending)
  elseif obj.spec ~= nil and obj.spec.deploy == "External" then
    -- Healthy, not Progressing: the external deployer may be the next sync wave, or
    -- another tool altogether; waiting here would block the sync.
    hs.status = "Healthy"
    hs.message = "Waiting for the external deployer: " .. tostring(pending.message)
  else
    hs.status = "Progressing"
    hs.message = describe(pending)
  end
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = tostring(ready.message)
  return hs
end

-- Bound, but the credential has no revision yet (see its Verified condition).
hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for the operator to compute the cluster's redeploy state"
end
return hs

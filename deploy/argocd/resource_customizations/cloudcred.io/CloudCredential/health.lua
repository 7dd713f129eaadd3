-- Argo CD health check for cloudcred.io/CloudCredential (Lua 5.1, Argo CD's sandbox).
-- Argo CD sets the global `obj` to the object and expects {status = ..., message = ...}.
--
-- The operator writes one verdict in three conditions (the kstatus convention): Stalled
-- (only a person can fix it), Reconciling (work under way), Ready (done). This script
-- reads those and nothing else, so Argo CD, kstatus (Flux, kpt) and
-- `kubectl wait --for=condition=Ready` say the same thing.
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

-- Argo CD itself says this before running a health script; kept for other runners.
if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Pending deletion"
  return hs
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to check the credential"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local reconciling = condition(status.conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  if reconciling.reason == "RolloutPaused" then
    hs.status = "Suspended"
  else
    hs.status = "Progressing"
  end
  hs.message = describe(reconciling)
  return hs
end

local ready = condition(status.conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = tostring(ready.message)
  if ready.reason ~= nil and ready.reason ~= "" and ready.reason ~= "Ready" then
    -- Ready with a remark, e.g. ExternalDeployPending: say it first.
    hs.message = ready.reason .. ": " .. hs.message
  end
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for the operator to check the credential"
end
return hs

-- wrk script for bench/run.sh: every request is built before the run starts,
-- so the client's cost per request is the same for every row and scenario.
--
--   wrk -t1 -c64 -d30s -s bench/wrk.lua URL -- PATH [TOKENFILE]
--
-- PATH is the request path; TOKENFILE, when given, holds one token a line:
-- request i carries `Authorization: Bearer <line i mod n>` (a pool of one is
-- the hot case, a pool larger than any token cache the cold case). Without
-- TOKENFILE the request carries no Authorization header.
--
-- done() prints one line `WRK_JSON {...}` with the counts and latency
-- percentiles (microseconds) that run.sh keeps.

local requests = {}
local count = 0
local index = 0

function init(args)
  local path = args[1] or "/"
  local tokenfile = args[2]
  if tokenfile == nil or tokenfile == "" or tokenfile == "-" then
    requests[1] = wrk.format("GET", path)
    count = 1
  else
    for line in io.lines(tokenfile) do
      if line ~= "" then
        count = count + 1
        requests[count] = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. line })
      end
    end
  end
  if count == 0 then
    error("wrk.lua: no tokens in " .. tokenfile)
  end
  -- Threads start at different offsets so they do not walk the pool in step.
  index = math.random(count) - 1
end

function request()
  index = index + 1
  if index > count then
    index = 1
  end
  return requests[index]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end

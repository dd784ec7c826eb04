-- wrk script of bench/ledger.py: POST /api/v1/transfers as many users, one fresh Idempotency-Key per
-- request, optionally paced at a constant total rate. Everything comes from the environment (tokens stay
-- out of the process list):
--   BENCH_APP_KEY       the tenant's app key
--   BENCH_LEDGER_DATA   a file: "S <email> <access token>" per sender, "R <email>" per recipient
--   BENCH_RUN_ID        unique per wrk run (keys are "<run id>-<thread>-<n>")
--   BENCH_AMOUNT_MAX    amounts are uniform in 1..BENCH_AMOUNT_MAX (smallest unit)
--   BENCH_RATE          total requests per second to aim at (0 or unset: as fast as the server answers)
--   BENCH_WRK_THREADS   wrk's -t (to split BENCH_RATE between the threads)
-- The run ends with one machine-readable line, like bench/wrk_report.lua's, plus the number of 201s.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("id", thread_count)
  table.insert(threads, thread)
end

local app_key = os.getenv("BENCH_APP_KEY") or ""
local run_id = os.getenv("BENCH_RUN_ID") or "run"
local amount_max = tonumber(os.getenv("BENCH_AMOUNT_MAX") or "100")
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local wrk_threads = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")

local senders = {}
local recipients = {}
local n = 0
local interval_ms = 0
local next_ms = 0
created = 0
other = 0

function init(args)
  local path = os.getenv("BENCH_LEDGER_DATA")
  for line in io.lines(path) do
    local kind, email, token = line:match("^(%S+) (%S+) ?(%S*)$")
    if kind == "S" then
      table.insert(senders, { email = email, authorization = "Bearer " .. token })
    elseif kind == "R" then
      table.insert(recipients, email)
    end
  end
  math.randomseed(id * 7919 + os.time())
  if rate > 0 then
    interval_ms = 1000 * wrk_threads / rate
    next_ms = now_ms()
  end
end

function request()
  n = n + 1
  local sender = senders[math.random(#senders)]
  local recipient = recipients[math.random(#recipients)]
  while recipient == sender.email do
    recipient = recipients[math.random(#recipients)]
  end
  local body = string.format('{"recipient": "%s", "asset": "USD", "amount": "%d", "memo": ""}',
    recipient, math.random(1, amount_max))
  local headers = {
    ["X-App-Key"] = app_key,
    ["Authorization"] = sender.authorization,
    ["Idempotency-Key"] = string.format("%s-%d-%d", run_id, id, n),
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json",
  }
  return wrk.format("POST", "/api/v1/transfers", headers, body)
end

-- Paced runs: the thread's requests take consecutive slots of its share of the rate, whichever connection
-- is free; a thread more than 50 ms behind its schedule does not burst to catch up.
if rate > 0 then
  function delay()
    local now = now_ms()
    if next_ms < now - 50 then
      next_ms = now
    end
    local wait = next_ms - now
    next_ms = next_ms + interval_ms
    if wait < 0 then
      return 0
    end
    return math.floor(wait)
  end
end

function response(status, headers, body)
  if status == 201 then
    created = created + 1
  else
    other = other + 1
    if other <= 3 then
      io.stderr:write(string.format("HTTP %d: %s\n", status, body))
    end
  end
end

done = function(summary, latency, requests)
  local total_created, total_other = 0, 0
  for _, thread in ipairs(threads) do
    total_created = total_created + thread:get("created")
    total_other = total_other + thread:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%.1f p99_us=%.1f connect=%d read=%d write=%d status=%d timeout=%d created=%d other=%d p90_us=%.1f max_us=%.1f\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout, total_created, total_other,
    latency:percentile(90), latency.max))
end

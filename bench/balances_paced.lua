-- wrk script of bench/balances.py: GET with the app key and bearer token from the environment, paced at
-- BENCH_RATE requests per second in total (0: as fast as the server answers), split over BENCH_WRK_THREADS.
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

local app_key = os.getenv("BENCH_APP_KEY") or ""
local authorization = os.getenv("BENCH_AUTHORIZATION") or ""
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local wrk_threads = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")
wrk.headers["X-App-Key"] = app_key
wrk.headers["Authorization"] = authorization
wrk.headers["Accept"] = "application/json"

local interval_ms = 0
local next_ms = 0

function init(args)
  if rate > 0 then
    interval_ms = 1000 * wrk_threads / rate
    next_ms = now_ms()
  end
end

-- The thread's requests take consecutive slots of its share of the rate; a thread more than 50 ms behind
-- its schedule does not burst to catch up.
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

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%.1f p99_us=%.1f connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end

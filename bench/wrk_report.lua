-- wrk script for the benchmarks: request headers come from the environment (tokens stay out of the
-- process list), and the run ends with one machine-readable line.
local app_key = os.getenv("BENCH_APP_KEY")
local authorization = os.getenv("BENCH_AUTHORIZATION")
if app_key and app_key ~= "" then
  wrk.headers["X-App-Key"] = app_key
end
if authorization and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%.1f p99_us=%.1f connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end

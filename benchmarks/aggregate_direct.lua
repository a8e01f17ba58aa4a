-- The aggregate scenario's direct run (benchmarks/macro.py): wrk on one of the aggregate
-- route's calls straight to the backend, adding two percentiles of a call's latency to
-- its output. If a client's three parallel calls took independent times, the slowest of
-- the three would reach its median at a call's 79.37th percentile (0.5^(1/3)) and its
-- 99th at a call's 99.666th (0.99^(1/3)): the estimate of the client's own wait that
-- macro.py reports beside the plain one-call percentiles. No request() function, so
-- wrk still builds the request once (a Lua call per request would take CPU from the
-- sides under test).
done = function(summary, latency, requests)
   io.write(string.format("lua: slowest_of_3_p50_us %d\n", latency:percentile(79.370)))
   io.write(string.format("lua: slowest_of_3_p99_us %d\n", latency:percentile(99.666)))
end

-- wrk script for the post_1k scenario of benchmarks/macro.py: every request is a POST
-- with a 1 KiB JSON body (exactly 1,024 bytes; wrk adds the Content-Length).
local head, tail = '{"id":42,"kind":"bench","payload":"', '"}'
wrk.method = "POST"
wrk.body = head .. string.rep("x", 1024 - #head - #tail) .. tail
wrk.headers["Content-Type"] = "application/json"

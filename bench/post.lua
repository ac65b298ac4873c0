-- wrk script: POST pre-signed Meta webhook bodies, each a different one.
--
-- wrk -s post.lua URL -- POOL THREADS MODE MARKER FILLER [HEADER]
--   POOL    file of "signature<TAB>body" lines; thread i posts lines i, i+THREADS, ...
--   HEADER  the header the first column goes in (default X-Hub-Signature-256; the publish
--           benchmark puts "Bearer <key>" in Authorization)
--   MODE    "loop": wrap around at the end (a timed run; the pool should be larger than it)
--           "once": post every line once; once all are sent, write MARKER.<thread> and go on
--           with harmless GETs (FILLER is their query string) until the benchmark stops wrk.
--           A thread never stops by itself: a stopped thread can leave a connection open with
--           nothing sent on it, which holds a sync gunicorn worker until its timeout.
-- done() prints one JSON line: requests, non-2xx answers, socket errors, wraps.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  -- args[0] is the URL; ours follow it.
  local pool, nthreads = args[1], tonumber(args[2])
  mode, marker, filler = args[3], args[4], args[5]
  header = args[6] or "X-Hub-Signature-256"
  sigs, bodies = {}, {}
  local i = 0
  for line in io.lines(pool) do
    if i % nthreads == id then
      local tab = line:find("\t", 1, true)
      sigs[#sigs + 1] = line:sub(1, tab - 1)
      bodies[#bodies + 1] = line:sub(tab + 1)
    end
    i = i + 1
  end
  n, sent, posted, non2xx, wraps, finished = #bodies, 0, 0, 0, 0, false
  -- wrk calls request() once on thread 0 before the run, to inspect it; that call sends nothing.
  inspected = id ~= 0
end

local function post(k)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", [header] = sigs[k]}, bodies[k])
end

function request()
  if not inspected then
    inspected = true
    return post(1)
  end
  if mode == "once" and sent >= n then
    if not finished then
      finished = true
      local f = io.open(marker .. "." .. id, "w")
      f:write(tostring(sent))
      f:close()
    end
    return wrk.format("GET", wrk.path .. "?" .. filler)
  end
  local k = sent % n + 1
  if sent >= n and k == 1 then
    wraps = wraps + 1 -- a second pass: from here on the server sees duplicates
  end
  sent = sent + 1
  return post(k)
end

function response(status, headers, body)
  if body == "filler" then
    return
  end
  posted = posted + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local posts, bad, wrapped = 0, 0, 0
  for _, thread in ipairs(threads) do
    posts = posts + thread:get("posted")
    bad = bad + thread:get("non2xx")
    wrapped = wrapped + thread:get("wraps")
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "posted": %d, "duration_us": %d, "non2xx": %d, "wraps": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, posts, summary.duration, bad, wrapped, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end

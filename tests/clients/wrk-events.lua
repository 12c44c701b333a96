-- wrk script for the reload tests: every request posts one event with an id of its own.
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  counter = 0
end
function request()
  counter = counter + 1
  local body = '{"id":"w' .. tid .. '-' .. counter .. '"}'
  return wrk.format("POST", "/produce", {["Content-Type"] = "application/json"}, body)
end

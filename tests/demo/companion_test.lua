-- Unit test of kong/plugins/consul-enricher-span with real lua-cjson under LuaJIT (the
-- interpreter Kong runs). The kong PDK is replaced by a recording stand-in limited to
-- what the plugin calls, per the Kong 3.9 PDK reference: kong.ctx.shared (a per-request
-- table), kong.tracing.active_span() (a span or nil), span:set_attribute(key, value)
-- and kong.log.debug(...).
-- Run from the repository root: luajit tests/demo/companion_test.lua

package.path = "./kong/plugins/?.lua;" .. package.path

local failures = 0
local tests = 0

local function fail(name, message)
  failures = failures + 1
  io.write("FAIL ", name, ": ", message, "\n")
end

local function expect_equal(name, actual, expected)
  if actual ~= expected then
    fail(name, "expected " .. tostring(expected) .. ", got " .. tostring(actual))
    return false
  end
  return true
end

-- Installs a fresh kong global for one request; returns the recorded span (or nil) and log.
local function fake_kong(shared_value, with_span)
  local span = with_span and { attributes = {}, calls = 0 } or nil
  if span then
    function span:set_attribute(key, value)
      self.calls = self.calls + 1
      self.attributes[key] = value
    end
  end
  local debug_lines = {}
  _G.kong = {
    ctx = { shared = { consul_enricher = shared_value } },
    tracing = {
      active_span = function()
        return span
      end,
    },
    log = {
      debug = function(...)
        debug_lines[#debug_lines + 1] = table.concat({ ... })
      end,
    },
  }
  return span, debug_lines
end

local handler = require "consul-enricher-span.handler"

local function case(name, body)
  tests = tests + 1
  local ok, err = pcall(body)
  if not ok then
    fail(name, "raised an error: " .. tostring(err))
  end
end

case("copies every attribute onto the active span", function()
  local span = fake_kong('{"service.peer.name":"echo","consul.service.meta.version":"2.0.0-rc.1",'
    .. '"consul.lookup":"hit","ui.component":"checkout-form","server.port":"8080"}', true)
  handler:log()
  expect_equal("service.peer.name", span.attributes["service.peer.name"], "echo")
  expect_equal("consul.service.meta.version", span.attributes["consul.service.meta.version"], "2.0.0-rc.1")
  expect_equal("consul.lookup", span.attributes["consul.lookup"], "hit")
  expect_equal("ui.component", span.attributes["ui.component"], "checkout-form")
  expect_equal("server.port", span.attributes["server.port"], "8080")
  expect_equal("attribute count", span.calls, 5)
end)

case("keeps numbers and booleans, skips nested values and null", function()
  local span, log = fake_kong('{"consul.lookup.duration_ms":3.5,"flag":true,"nested":{"a":"b"},'
    .. '"list":["x"],"nothing":null}', true)
  handler:log()
  expect_equal("number", span.attributes["consul.lookup.duration_ms"], 3.5)
  expect_equal("boolean", span.attributes["flag"], true)
  expect_equal("nested skipped", span.attributes["nested"], nil)
  expect_equal("list skipped", span.attributes["list"], nil)
  expect_equal("null skipped", span.attributes["nothing"], nil)
  expect_equal("skips logged", #log, 3)
end)

case("invalid JSON is logged at debug and changes nothing", function()
  local span, log = fake_kong('{"service.peer.name": "echo"', true)
  handler:log()
  expect_equal("no attribute", span.calls, 0)
  expect_equal("one debug line", #log, 1)
  if not (log[1] or ""):find("not valid JSON", 1, true) then
    fail("debug line names the problem", tostring(log[1]))
  end
end)

case("a JSON array has no attribute names", function()
  local span, log = fake_kong('["echo", "hit"]', true)
  handler:log()
  expect_equal("no attribute", span.calls, 0)
  expect_equal("each element logged", #log, 2)
end)

case("a JSON scalar is not an object", function()
  local span, log = fake_kong('"echo"', true)
  handler:log()
  expect_equal("no attribute", span.calls, 0)
  expect_equal("one debug line", #log, 1)
end)

case("a non-string value in kong.ctx.shared is logged, not decoded", function()
  local span, log = fake_kong({ ["service.peer.name"] = "echo" }, true)
  handler:log()
  expect_equal("no attribute", span.calls, 0)
  expect_equal("one debug line", #log, 1)
end)

case("nothing written by the filter: nothing to do", function()
  local span, log = fake_kong(nil, true)
  handler:log()
  expect_equal("no attribute", span.calls, 0)
  expect_equal("no log", #log, 0)
end)

case("no active span (tracing off): logged, no error", function()
  local _, log = fake_kong('{"service.peer.name":"echo"}', false)
  handler:log()
  expect_equal("one debug line", #log, 1)
end)

case("runs before the opentelemetry plugin (priority 14) exports the span", function()
  if not (handler.PRIORITY > 14) then
    fail("priority", "PRIORITY " .. tostring(handler.PRIORITY) .. " is not above 14")
  end
end)

case("schema declares the plugin for HTTP with an empty config", function()
  package.loaded["kong.db.schema.typedefs"] = { protocols_http = { type = "set" } }
  local schema = require "consul-enricher-span.schema"
  expect_equal("name", schema.name, "consul-enricher-span")
  expect_equal("protocols", schema.fields[1].protocols.type, "set")
  expect_equal("config", schema.fields[2].config.type, "record")
end)

io.write(string.format("%d cases, %d failures\n", tests, failures))
os.exit(failures == 0 and 0 or 1)

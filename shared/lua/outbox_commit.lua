-- One write-service command, all or nothing: check versions, write states, append events to
-- the outbox stream, apply index ops, mark the causing event as applied.
-- KEYS: outbox stream, dedupe key (the stream again for none: every key in one slot),
--       aggregate hashes..., index keys...
-- ARGV[1]: JSON [dedupe_ttl, [[expected_version, state_json or nothing (only checked)], ...],
--                [[topic, key, type, event_id, value], ...], [[op, score, member, field], ...],
--                1 if KEYS[2] is a dedupe key else 0]
-- (one argument: packing many small arguments costs the client more than Lua's decode)
-- [op, score, member, field]; op: ZADD | ZREM | SADD | SREM | DEL | HSETNX (field := member)
local a = cjson.decode(ARGV[1])
local ttl, writes, envs, ops, dedupe = a[1], a[2], a[3], a[4], a[5] == 1
if dedupe and redis.call('EXISTS', KEYS[2]) == 1 then return 'duplicate' end
for i, w in ipairs(writes) do
  if tonumber(redis.call('HGET', KEYS[2 + i], 'v') or '0') ~= w[1] then return 'conflict' end
end
for i, w in ipairs(writes) do
  if w[2] then redis.call('HSET', KEYS[2 + i], 'v', w[1] + 1, 's', w[2]) end
end
for _, e in ipairs(envs) do
  redis.call('XADD', KEYS[1], '*', 'topic', e[1], 'key', e[2], 'type', e[3], 'event_id', e[4],
             'value', e[5])
end
local base = 2 + #writes
for i, o in ipairs(ops) do
  local key, op = KEYS[base + i], o[1]
  if op == 'ZADD' then redis.call('ZADD', key, o[2], o[3])
  elseif op == 'ZREM' then redis.call('ZREM', key, o[3])
  elseif op == 'SADD' then redis.call('SADD', key, o[3])
  elseif op == 'SREM' then redis.call('SREM', key, o[3])
  elseif op == 'DEL' then redis.call('DEL', key)
  elseif op == 'HSETNX' then redis.call('HSETNX', key, o[4], o[3])
  end
end
if dedupe then redis.call('SET', KEYS[2], '1', 'EX', ttl) end
return 'ok'

-- One write-service command, all or nothing: check versions, write states, append events to
-- the outbox stream, apply index ops, mark the causing event as applied.
-- KEYS: outbox stream, dedupe key ('' for none), aggregate hashes..., index keys...
-- ARGV: n_aggregates, n_envelopes, n_index_ops, dedupe_ttl,
--       (expected_version, state_json) per aggregate,
--       (topic, key, type, event_id, value) per envelope,
--       (op, score, member) per index op (op: ZADD | ZREM | SADD | SREM | DEL)
local n_agg, n_env, n_idx = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if KEYS[2] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then return 'duplicate' end
for i = 1, n_agg do
  local v = tonumber(redis.call('HGET', KEYS[2 + i], 'v') or '0')
  if v ~= tonumber(ARGV[3 + 2 * i]) then return 'conflict' end
end
for i = 1, n_agg do
  local state = ARGV[4 + 2 * i]
  redis.call('HSET', KEYS[2 + i], 'v', tonumber(ARGV[3 + 2 * i]) + 1, 's', state)
end
local base = 4 + 2 * n_agg
for i = 0, n_env - 1 do
  local a = base + 5 * i
  redis.call('XADD', KEYS[1], '*', 'topic', ARGV[a + 1], 'key', ARGV[a + 2],
             'type', ARGV[a + 3], 'event_id', ARGV[a + 4], 'value', ARGV[a + 5])
end
base = base + 5 * n_env
for i = 0, n_idx - 1 do
  local key = KEYS[3 + n_agg + i]
  local op, score, member = ARGV[base + 3 * i + 1], ARGV[base + 3 * i + 2], ARGV[base + 3 * i + 3]
  if op == 'ZADD' then redis.call('ZADD', key, score, member)
  elseif op == 'ZREM' then redis.call('ZREM', key, member)
  elseif op == 'SADD' then redis.call('SADD', key, member)
  elseif op == 'SREM' then redis.call('SREM', key, member)
  elseif op == 'DEL' then redis.call('DEL', key)
  end
end
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], '1', 'EX', tonumber(ARGV[4])) end
return 'ok'

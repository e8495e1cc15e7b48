-- crier's publish script: the only place where a message gets its sequence number.
-- The contract (README "Cluster mode"), so that any Redis client can publish:
--
--   EVALSHA <sha1 of this file> <2*N> KEYS... ARGV...
--   KEYS, two per message:  {<prefix>:<channel>}:m   the channel's meta hash (e, s)
--                           {<prefix>:<channel>}:s   the channel's stream
--   ARGV[1]  stream length (MAXLEN, = --history-messages)
--   ARGV[2]  stream TTL in milliseconds (= --history-ttl)
--   ARGV[3]  meta TTL in milliseconds (= --redis-meta-ttl)
--   ARGV[4]  'publish' (standalone Redis) or 'spublish' (Redis Cluster)
--   then three per message: pub/sub channel {<prefix>:<channel>}, kind 't' (text) or
--   'b' (binary), payload
--   Reply: two per message, in order: the channel's epoch (a decimal string), its seq.
--
-- Everything for one message happens inside this one script, so the order of seqs is
-- the order in which Redis ran the calls, and every node receives them in that order.
local maxlen, ttl, meta_ttl, pubcmd = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if pubcmd ~= 'publish' and pubcmd ~= 'spublish' then
  return redis.error_reply('crier: ARGV[4] must be publish or spublish')
end
if #KEYS % 2 ~= 0 or #ARGV ~= 4 + 3 * (#KEYS / 2) then
  return redis.error_reply('crier: expected 2 keys and 3 arguments per message')
end
local out = {}
local fresh = nil
for i = 1, #KEYS / 2 do
  local meta, stream = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 4 + 3 * (i - 1)
  local chan, kind, payload = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  -- A new epoch only when the channel has none: Redis lost or expired its state. Its
  -- stream then belongs to no epoch and goes. (HSETNX semantics; HGET first because the
  -- epoch exists on all but the first publish.)
  local epoch = redis.call('hget', meta, 'e')
  if not epoch then
    if not fresh then
      local t = redis.call('time')
      fresh = t[1] .. string.format('%06d', tonumber(t[2]))
    end
    redis.call('hsetnx', meta, 'e', fresh)
    epoch = redis.call('hget', meta, 'e')
    redis.call('del', stream)
  end
  local seq = redis.call('hincrby', meta, 's', 1)
  redis.call('xadd', stream, 'MAXLEN', maxlen, seq .. '-0', 'k', kind, 'd', payload)
  redis.call('pexpire', stream, ttl)
  redis.call('pexpire', meta, meta_ttl)
  redis.call(pubcmd, chan, seq .. ' ' .. epoch .. ' ' .. kind .. '\n' .. payload)
  out[#out + 1] = epoch
  out[#out + 1] = seq
end
return out

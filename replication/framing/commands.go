package framing

// cmdInfo describes how smr-cri treats one Redis command.
type cmdInfo struct {
	name string
	// readOnly: changes neither the dataset nor the connection's state, so it
	// may run on the local replica after a ReadIndex (outside MULTI).
	readOnly bool
	// unsupported, when set, is why the command is refused.
	unsupported string
}

// Redis commands that only read. Commands missing from this table are
// ordered through the log, which is always safe. SELECT, WATCH, CLIENT ...
// change connection state and are therefore not read-only.
var readOnlyCommands = []string{
	"GET", "MGET", "EXISTS", "STRLEN", "GETRANGE", "SUBSTR", "GETBIT", "BITCOUNT", "BITPOS", "LCS",
	"HGET", "HGETALL", "HMGET", "HEXISTS", "HLEN", "HKEYS", "HVALS", "HSTRLEN", "HSCAN", "HRANDFIELD",
	"LRANGE", "LLEN", "LINDEX", "LPOS",
	"SCARD", "SISMEMBER", "SMISMEMBER", "SMEMBERS", "SSCAN", "SRANDMEMBER", "SINTER", "SUNION", "SDIFF", "SINTERCARD",
	"ZRANGE", "ZRANGEBYSCORE", "ZRANGEBYLEX", "ZREVRANGE", "ZREVRANGEBYSCORE", "ZREVRANGEBYLEX",
	"ZSCORE", "ZMSCORE", "ZCARD", "ZCOUNT", "ZLEXCOUNT", "ZRANK", "ZREVRANK", "ZSCAN", "ZRANDMEMBER",
	"ZDIFF", "ZINTER", "ZUNION", "ZINTERCARD",
	"XLEN", "XRANGE", "XREVRANGE", "XREAD",
	"GEOPOS", "GEODIST", "GEOHASH", "GEOSEARCH", "GEORADIUS_RO", "GEORADIUSBYMEMBER_RO",
	"TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME", "TYPE", "KEYS", "SCAN", "DBSIZE", "RANDOMKEY", "DUMP", "SORT_RO",
	"PING", "ECHO", "TIME",
}

// Nondeterministic lists commands whose reply differs between replicas
// even though every replica holds the same data. The read-only ones are
// harmless (the client gets one replica's answer, as from a single server);
// SPOP would change replicas differently and is refused. Key expiry (EXPIRE,
// SET ... EX) uses each replica's clock, so a key read right at its deadline
// may exist on one replica and not on another: avoid relying on that edge.
var Nondeterministic = []string{
	"RANDOMKEY", "SRANDMEMBER", "HRANDFIELD", "ZRANDMEMBER", "TIME", "SCAN", "SSCAN", "HSCAN", "ZSCAN",
	"SPOP", "INFO", "LASTSAVE", "CLIENT ID", "CLIENT LIST", "OBJECT FREQ", "OBJECT IDLETIME", "MEMORY USAGE",
}

// Commands smr-cri refuses, and why.
var unsupportedCommands = map[string]string{
	"SUBSCRIBE":    "puts the connection in push mode, which cannot be replicated",
	"PSUBSCRIBE":   "puts the connection in push mode, which cannot be replicated",
	"SSUBSCRIBE":   "puts the connection in push mode, which cannot be replicated",
	"UNSUBSCRIBE":  "belongs to pub/sub, which cannot be replicated",
	"PUNSUBSCRIBE": "belongs to pub/sub, which cannot be replicated",
	"SUNSUBSCRIBE": "belongs to pub/sub, which cannot be replicated",
	"MONITOR":      "streams every command and cannot be replicated",
	"WAIT":         "waits for Redis replication, which smr-cri replaces",
	"WAITAOF":      "waits for Redis persistence acknowledgements, which cannot be replicated",
	"SYNC":         "is Redis' own replication protocol",
	"PSYNC":        "is Redis' own replication protocol",
	"REPLICAOF":    "would make replicas diverge",
	"SLAVEOF":      "would make replicas diverge",
	"SPOP":         "removes a random member and would make replicas diverge (use SRANDMEMBER then SREM in MULTI)",
	"BLPOP":        "is a blocking command and would stall the group's serial executor",
	"BRPOP":        "is a blocking command and would stall the group's serial executor",
	"BRPOPLPUSH":   "is a blocking command and would stall the group's serial executor",
	"BLMOVE":       "is a blocking command and would stall the group's serial executor",
	"BLMPOP":       "is a blocking command and would stall the group's serial executor",
	"BZPOPMIN":     "is a blocking command and would stall the group's serial executor",
	"BZPOPMAX":     "is a blocking command and would stall the group's serial executor",
	"BZMPOP":       "is a blocking command and would stall the group's serial executor",
}

var commands = func() map[string]cmdInfo {
	m := make(map[string]cmdInfo, 160)
	for _, c := range readOnlyCommands {
		m[c] = cmdInfo{name: c, readOnly: true}
	}
	for c, why := range unsupportedCommands {
		m[c] = cmdInfo{name: c, unsupported: why}
	}
	// Common write commands, interned so Op costs no allocation.
	for _, c := range []string{"SET", "DEL", "INCR", "INCRBY", "DECR", "DECRBY", "APPEND", "MSET", "SETEX", "SETNX",
		"GETSET", "GETDEL", "GETEX", "EXPIRE", "PEXPIRE", "PERSIST", "HSET", "HDEL", "HINCRBY", "HMSET", "LPUSH", "RPUSH",
		"LPOP", "RPOP", "LSET", "LREM", "LTRIM", "SADD", "SREM", "ZADD", "ZREM", "ZINCRBY", "XADD", "SELECT",
		"MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "FLUSHDB", "FLUSHALL", "HELLO", "AUTH", "CLIENT",
		"INFO", "QUIT", "RESET", "COMMAND", "CONFIG", "EVAL", "EVALSHA", "FCALL", "XREADGROUP", "PFADD", "PFCOUNT"} {
		if _, ok := m[c]; !ok {
			m[c] = cmdInfo{name: c}
		}
	}
	return m
}()

// IsReadOnlyCommand reports whether the upper-case Redis command name is in
// the read-only table (outside MULTI).
func IsReadOnlyCommand(name string) bool { return commands[name].readOnly }

package rediscmd

import "sort"

// Notes shared by many rows.
const (
	readNote      = "reads only"
	readNondet    = "reads only; the reply may differ between replicas (the client gets one replica's answer, as from one server)"
	writeNote     = "deterministic given the log order"
	adminLocal    = "changes no replicated state (server statistics, persistence, introspection): runs on the replica holding the connection"
	blockingWhy   = "is a blocking command and would stall the group's serial executor"
	pushWhy       = "puts the connection in push mode, which cannot be replicated"
	clusterWhy    = "belongs to Redis Cluster; smr-cri replicates one standalone Redis"
	replicationWh = "is Redis' own replication, which smr-cri replaces"
	helpNote      = "help text"
)

func init() {
	// Strings, bitmaps, HyperLogLog.
	group(Local, 0, readNote, "GET", "MGET", "STRLEN", "GETRANGE", "SUBSTR", "GETBIT", "BITCOUNT", "BITPOS", "LCS",
		"BITFIELD_RO", "EXISTS", "TYPE", "DUMP", "SORT_RO", "TOUCH", "DBSIZE", "PFSELFTEST")
	group(Ordered, 0, writeNote, "APPEND", "INCR", "INCRBY", "INCRBYFLOAT", "DECR", "DECRBY", "MSET", "MSETNX", "SETNX",
		"SETRANGE", "GETSET", "GETDEL", "SETBIT", "BITOP", "BITFIELD", "PFADD", "PFMERGE", "DEL", "UNLINK", "RENAME",
		"RENAMENX", "COPY", "MOVE", "PERSIST", "SORT", "FLUSHDB", "FLUSHALL", "SWAPDB", "PUBLISH", "SPUBLISH")
	// PFCOUNT caches the cardinality inside the HyperLogLog value: served
	// by one replica it would leave that replica's bytes different.
	add("PFCOUNT", Ordered, 0, "updates the cardinality cached inside the HyperLogLog value, so every replica runs it")
	add("PFDEBUG", Refused, 0, "is a debugging command that changes a value's internal encoding")
	// Hashes, lists, sets, sorted sets, geo.
	group(Local, 0, readNote, "HGET", "HMGET", "HEXISTS", "HLEN", "HSTRLEN", "HGETALL", "HKEYS", "HVALS",
		"LRANGE", "LLEN", "LINDEX", "LPOS", "SCARD", "SISMEMBER", "SMISMEMBER", "SMEMBERS", "SINTER", "SUNION", "SDIFF",
		"SINTERCARD", "ZRANGE", "ZRANGEBYSCORE", "ZRANGEBYLEX", "ZREVRANGE", "ZREVRANGEBYSCORE", "ZREVRANGEBYLEX",
		"ZSCORE", "ZMSCORE", "ZCARD", "ZCOUNT", "ZLEXCOUNT", "ZRANK", "ZREVRANK", "ZDIFF", "ZINTER", "ZUNION",
		"ZINTERCARD", "GEOPOS", "GEODIST", "GEOHASH", "GEOSEARCH", "GEORADIUS_RO", "GEORADIUSBYMEMBER_RO",
		"XLEN", "XRANGE", "XREVRANGE", "XINFO|STREAM", "XINFO|GROUPS")
	group(Local, 0, readNondet, "HRANDFIELD", "HSCAN", "SRANDMEMBER", "SSCAN", "ZRANDMEMBER", "ZSCAN", "SCAN", "KEYS",
		"RANDOMKEY", "TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME", "XPENDING", "XINFO|CONSUMERS")
	group(Ordered, 0, writeNote, "HSET", "HSETNX", "HMSET", "HDEL", "HINCRBY", "HINCRBYFLOAT",
		"LPUSH", "RPUSH", "LPUSHX", "RPUSHX", "LPOP", "RPOP", "LSET", "LREM", "LTRIM", "LINSERT", "LMOVE", "RPOPLPUSH", "LMPOP",
		"SADD", "SREM", "SMOVE", "SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE",
		"ZADD", "ZREM", "ZINCRBY", "ZPOPMIN", "ZPOPMAX", "ZMPOP", "ZRANGESTORE", "ZREMRANGEBYLEX", "ZREMRANGEBYRANK",
		"ZREMRANGEBYSCORE", "ZUNIONSTORE", "ZINTERSTORE", "ZDIFFSTORE",
		"GEOADD", "GEORADIUS", "GEORADIUSBYMEMBER", "GEOSEARCHSTORE",
		"XACK", "XDEL", "XSETID", "XREADGROUP", "XGROUP|CREATE", "XGROUP|CREATECONSUMER", "XGROUP|DELCONSUMER",
		"XGROUP|DESTROY", "XGROUP|SETID")
	add("SPOP", Refused, 0, "removes random members and would make replicas diverge (use SRANDMEMBER, then SREM)")
	group(Refused, Blocking, blockingWhy, "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP",
		"WAIT", "WAITAOF")

	// Expiry: made absolute at the origin, and only when the pod allows expiry.
	c := add("SET", Rewritten, Args, "EX/PX become PXAT <origin time + ttl>; any expiry option needs smr.io/redis-allow: expiry")
	c.check, c.rewrite, c.plainUpTo = checkSet, rewriteSet, 3
	c = add("SETEX", Rewritten, Expiry, "becomes SET key value PXAT <origin time + seconds>")
	c.check, c.rewrite = checkExpiry, rewriteSetex(1000)
	c = add("PSETEX", Rewritten, Expiry, "becomes SET key value PXAT <origin time + milliseconds>")
	c.check, c.rewrite = checkExpiry, rewriteSetex(1)
	c = add("EXPIRE", Rewritten, Expiry, "becomes PEXPIREAT key <origin time + seconds> (NX/XX/GT/LT kept)")
	c.check, c.rewrite = checkExpiry, rewriteExpire(1000)
	c = add("PEXPIRE", Rewritten, Expiry, "becomes PEXPIREAT key <origin time + milliseconds> (NX/XX/GT/LT kept)")
	c.check, c.rewrite = checkExpiry, rewriteExpire(1)
	c = add("EXPIREAT", Restricted, Expiry, "absolute deadline, ordered as is; needs smr.io/redis-allow: expiry")
	c.check = checkExpiry
	c = add("PEXPIREAT", Restricted, Expiry, "absolute deadline, ordered as is; needs smr.io/redis-allow: expiry")
	c.check = checkExpiry
	c = add("GETEX", Rewritten, Args, "EX/PX become PXAT <origin time + ttl>; any expiry option but PERSIST needs smr.io/redis-allow: expiry")
	c.check, c.rewrite, c.plainUpTo = checkGetex, rewriteGetex, 2
	c = add("RESTORE", Rewritten, Args, "a relative TTL becomes <origin time + ttl> ABSTTL; a TTL needs smr.io/redis-allow: expiry")
	c.check, c.rewrite = checkRestore, rewriteRestore

	// Streams.
	c = add("XADD", Rewritten, Args, "an auto ID (*) becomes an ID each replica derives at apply time from the origin's time stamp and the stream's last ID (never below it, so clock skew never fails the client); MAXLEN/MINID ~ become = (exact, LIMIT dropped)")
	c.rewrite = rewriteXadd
	c = add("XTRIM", Rewritten, Args, "MAXLEN/MINID ~ become = (exact trimming; approximate trimming depends on each replica's node layout), LIMIT dropped")
	c.rewrite = rewriteXtrim
	c = add("XCLAIM", Restricted, Args, "ordered only with min-idle-time 0: idle times are measured by each replica's clock")
	c.check = checkMinIdle
	c = add("XAUTOCLAIM", Restricted, Args, "ordered only with min-idle-time 0: idle times are measured by each replica's clock")
	c.check = checkMinIdle
	c = add("XREAD", Restricted, Args|ReadsOnly, "reads only (served locally); XREAD ... BLOCK is refused (would stall the group's serial executor)")
	c.check = checkNoBlock
	c = add("XREADGROUP", Restricted, Args, "ordered (it changes the group's pending list); ... BLOCK is refused (would stall the group's serial executor)")
	c.check = checkNoBlock

	// Scripts and functions: only when the pod declares them deterministic.
	const scriptNote = "refused unless the pod declares its scripts deterministic (smr.io/redis-allow: scripts); then ordered as is"
	for _, n := range []string{"EVAL", "EVALSHA", "FCALL", "SCRIPT|LOAD", "SCRIPT|FLUSH", "FUNCTION|LOAD", "FUNCTION|DELETE",
		"FUNCTION|FLUSH", "FUNCTION|RESTORE"} {
		add(n, Restricted, Script, scriptNote)
	}
	for _, n := range []string{"EVAL_RO", "EVALSHA_RO", "FCALL_RO", "SCRIPT|EXISTS", "FUNCTION|DUMP", "FUNCTION|LIST", "FUNCTION|STATS"} {
		add(n, Restricted, Script|ReadsOnly, "refused unless the pod allows scripts (smr.io/redis-allow: scripts); then served locally (read-only)")
	}
	group(Refused, 0, "would stop a script on one replica only, at a moment that differs between replicas", "SCRIPT|KILL", "FUNCTION|KILL")
	add("SCRIPT|DEBUG", Refused, 0, "debugs scripts interactively on one server")

	// Connection state: ordered, so every replica's session has it.
	group(Ordered, ConnState, "connection state, kept by the replicated session on every replica",
		"SELECT", "AUTH", "HELLO", "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "CLIENT|SETNAME", "CLIENT|NO-EVICT",
		"CLIENT|NO-TOUCH", "CLIENT|SETINFO")
	add("RESET", Ordered, ConnState|ResetsConn, "returns the session to its initial state on every replica")
	add("QUIT", Ordered, ConnState|EndsConn, "the app closes the session's connection after replying")
	group(Local, 0, readNote, "PING", "ECHO", "CLIENT|GETNAME", "CLIENT|GETREDIR", "CLIENT|TRACKINGINFO", "CLIENT|HELP")
	group(Local, 0, readNondet, "CLIENT|ID", "CLIENT|INFO", "CLIENT|LIST", "TIME", "LASTSAVE", "INFO", "ROLE", "LOLWUT")
	group(Refused, 0, "changes how replies are delivered, which cannot be replicated", "CLIENT|REPLY", "CLIENT|TRACKING", "CLIENT|CACHING")
	add("CLIENT|KILL", Refused, 0, "names connections by IDs and addresses that differ on every replica")
	add("CLIENT|UNBLOCK", Refused, 0, "names connections by IDs that differ on every replica")
	group(Refused, 0, "would stall the group's serial executor", "CLIENT|PAUSE", "CLIENT|UNPAUSE")

	// Pub/sub.
	group(Refused, 0, pushWhy, "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE")
	group(Local, 0, readNondet, "PUBSUB|CHANNELS", "PUBSUB|NUMPAT", "PUBSUB|NUMSUB", "PUBSUB|SHARDCHANNELS", "PUBSUB|SHARDNUMSUB")
	add("MONITOR", Refused, 0, "streams every command and cannot be replicated")

	// Server administration.
	group(Local, 0, adminLocal, "CONFIG|GET", "CONFIG|RESETSTAT", "SAVE", "BGSAVE", "BGREWRITEAOF",
		"MEMORY|DOCTOR", "MEMORY|MALLOC-STATS", "MEMORY|PURGE", "MEMORY|STATS", "MEMORY|USAGE",
		"LATENCY|DOCTOR", "LATENCY|GRAPH", "LATENCY|HISTOGRAM", "LATENCY|HISTORY", "LATENCY|LATEST", "LATENCY|RESET",
		"SLOWLOG|GET", "SLOWLOG|LEN", "SLOWLOG|RESET", "OBJECT|ENCODING", "OBJECT|FREQ", "OBJECT|IDLETIME", "OBJECT|REFCOUNT",
		"COMMAND", "COMMAND|COUNT", "COMMAND|DOCS", "COMMAND|GETKEYS", "COMMAND|GETKEYSANDFLAGS", "COMMAND|INFO", "COMMAND|LIST",
		"MODULE|LIST", "ACL|CAT", "ACL|DRYRUN", "ACL|GENPASS", "ACL|GETUSER", "ACL|LIST", "ACL|LOG", "ACL|USERS", "ACL|WHOAMI")
	add("CONFIG|SET", Refused, 0, "server settings belong to the pod spec (the container's arguments); some (maxmemory, eviction) would make replicas diverge")
	add("CONFIG|REWRITE", Refused, 0, "writes one container's configuration file")
	group(Ordered, 0, "the same users on every replica", "ACL|SETUSER", "ACL|DELUSER")
	group(Refused, 0, "reads or writes one container's ACL file", "ACL|LOAD", "ACL|SAVE")
	group(Refused, 0, "loads code into one server; set modules in the pod spec", "MODULE|LOAD", "MODULE|LOADEX", "MODULE|UNLOAD")
	add("SHUTDOWN", Refused, 0, "would stop every replica's app")
	add("DEBUG", Refused, 0, "debugging commands can crash, block or change one server")
	add("MIGRATE", Refused, 0, "moves keys to another server outside the group")
	group(Refused, 0, replicationWh, "SYNC", "PSYNC", "REPLCONF", "REPLICAOF", "SLAVEOF", "FAILOVER")
	group(Refused, 0, clusterWhy, "READONLY", "READWRITE", "ASKING", "RESTORE-ASKING")
	for _, sub := range []string{"ADDSLOTS", "ADDSLOTSRANGE", "BUMPEPOCH", "COUNT-FAILURE-REPORTS", "COUNTKEYSINSLOT", "DELSLOTS",
		"DELSLOTSRANGE", "FAILOVER", "FLUSHSLOTS", "FORGET", "GETKEYSINSLOT", "HELP", "INFO", "KEYSLOT", "LINKS", "MEET", "MYID",
		"MYSHARDID", "NODES", "REPLICAS", "REPLICATE", "RESET", "SAVECONFIG", "SET-CONFIG-EPOCH", "SETSLOT", "SHARDS", "SLAVES", "SLOTS"} {
		add("CLUSTER|"+sub, Refused, 0, clusterWhy)
	}
	for _, c := range []string{"ACL", "CLIENT", "COMMAND", "CONFIG", "FUNCTION", "LATENCY", "MEMORY", "MODULE", "OBJECT",
		"PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO"} {
		add(c+"|HELP", Local, 0, helpNote)
	}
}

func sortCommands(cs []Command) {
	sort.Slice(cs, func(i, j int) bool { return cs[i].Name < cs[j].Name })
}

package framing

import (
	"errors"
	"strings"
	"testing"

	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// One case per refused class: the client gets "-ERR smr-cri: <COMMAND>:
// <why>", and the stream stays usable.
func TestRESPRefusedClasses(t *testing.T) {
	tests := []struct {
		class, in, reply string
		allow            rediscmd.Allow
	}{
		{"random write", "SPOP s\r\n", "-ERR smr-cri: SPOP: removes random members and would make replicas diverge (use SRANDMEMBER, then SREM)\r\n", 0},
		{"blocking", "BLPOP l 0\r\n", "-ERR smr-cri: BLPOP: is a blocking command and would stall the group's serial executor\r\n", 0},
		{"blocking read", "XREAD COUNT 1 BLOCK 0 STREAMS s $\r\n", "-ERR smr-cri: XREAD BLOCK: would stall the group's serial executor\r\n", 0},
		{"push mode", "SUBSCRIBE ch\r\n", "-ERR smr-cri: SUBSCRIBE: puts the connection in push mode, which cannot be replicated\r\n", 0},
		{"reply mode", "CLIENT REPLY OFF\r\n", "-ERR smr-cri: CLIENT REPLY: changes how replies are delivered, which cannot be replicated\r\n", 0},
		{"per-replica connection IDs", "CLIENT KILL ID 7\r\n", "-ERR smr-cri: CLIENT KILL: names connections by IDs and addresses that differ on every replica\r\n", 0},
		{"idle time", "XCLAIM s g c 3600000 0-1\r\n", "-ERR smr-cri: XCLAIM: min-idle-time above 0 compares idle times measured by each replica's clock; only min-idle-time 0 is ordered\r\n", 0},
		{"idle time (auto)", "XAUTOCLAIM s g c 10 0\r\n", "-ERR smr-cri: XAUTOCLAIM: min-idle-time above 0 compares idle times measured by each replica's clock; only min-idle-time 0 is ordered\r\n", 0},
		{"scripts", "EVAL \"return redis.call('TIME')\" 0\r\n", "-ERR smr-cri: EVAL: scripts and functions may call TIME or random commands and run differently on each replica; a pod whose scripts are deterministic opts in with smr.io/redis-allow: scripts\r\n", 0},
		{"functions", "FCALL f 0\r\n", "-ERR smr-cri: FCALL: scripts and functions may call TIME or random commands and run differently on each replica; a pod whose scripts are deterministic opts in with smr.io/redis-allow: scripts\r\n", rediscmd.AllowExpiry},
		{"expiry", "SET k v EX 10\r\n", "-ERR smr-cri: SET: " + expiryText, 0},
		{"expiry (EXPIRE)", "expire k 10\r\n", "-ERR smr-cri: EXPIRE: " + expiryText, rediscmd.AllowScripts},
		{"expiry (RESTORE ttl)", "RESTORE k 100 x\r\n", "-ERR smr-cri: RESTORE: " + expiryText, 0},
		{"script kill", "SCRIPT KILL\r\n", "-ERR smr-cri: SCRIPT KILL: would stop a script on one replica only, at a moment that differs between replicas\r\n", rediscmd.AllowScripts},
		{"server config", "CONFIG SET maxmemory 1\r\n", "-ERR smr-cri: CONFIG SET: server settings belong to the pod spec (the container's arguments); some (maxmemory, eviction) would make replicas diverge\r\n", 0},
		{"other servers", "MIGRATE h 1 k 0 10\r\n", "-ERR smr-cri: MIGRATE: moves keys to another server outside the group\r\n", 0},
		{"Redis replication", "REPLICAOF h 1\r\n", "-ERR smr-cri: REPLICAOF: is Redis' own replication, which smr-cri replaces\r\n", 0},
		{"cluster", "CLUSTER NODES\r\n", "-ERR smr-cri: CLUSTER NODES: belongs to Redis Cluster; smr-cri replicates one standalone Redis\r\n", 0},
		{"unknown (newer Redis)", "HEXPIRE h 10 FIELDS 1 f\r\n", "-ERR smr-cri: HEXPIRE: not in smr-cri's command table (a newer Redis or a module command), refused so replicas cannot diverge\r\n", 0},
		{"stop every app", "SHUTDOWN\r\n", "-ERR smr-cri: SHUTDOWN: would stop every replica's app\r\n", 0},
	}
	for _, tt := range tests {
		t.Run(tt.class, func(t *testing.T) {
			f := NewRESP(Options{RedisAllow: tt.allow})
			r := reader(tt.in + "PING\r\n")
			_, err := f.NextRequest(r)
			if !errors.Is(err, ErrUnsupported) || !errors.Is(err, rediscmd.ErrRefused) {
				t.Fatalf("err = %v, want a refusal", err)
			}
			reply, closeConn := f.ErrorReply(err)
			if string(reply) != tt.reply || closeConn {
				t.Errorf("reply %q close=%v\nwant  %q", reply, closeConn, tt.reply)
			}
			if req, err := f.NextRequest(r); err != nil || req.Op != "PING" {
				t.Errorf("next request after the refusal: %+v, %v", req, err)
			}
		})
	}
}

const expiryText = "sets a key expiry, which replicas evaluate with their own clocks; a pod opts in with smr.io/redis-allow: expiry (relative expiries are then made absolute at the origin)\r\n"

// Opted-in and argument-dependent commands are accepted, and the ones the
// origin must rewrite are marked.
func TestRESPAcceptedAndRewrite(t *testing.T) {
	all := rediscmd.AllowScripts | rediscmd.AllowExpiry
	tests := []struct {
		in          string
		allow       rediscmd.Allow
		op          string
		ro, rewrite bool
	}{
		{"SET k v\r\n", 0, "SET", false, false},
		{"SET k v EX 10\r\n", all, "SET", false, true},
		{"SET k v KEEPTTL\r\n", 0, "SET", false, false},
		{"GETEX k PERSIST\r\n", 0, "GETEX", false, false},
		{"XADD s 1-1 f v\r\n", 0, "XADD", false, false},
		{"XADD s MAXLEN ~ 5 1-1 f v\r\n", 0, "XADD", false, true},
		{"XADD s * f v\r\n", 0, "XADD", false, true},
		{"XTRIM s MAXLEN ~ 10\r\n", 0, "XTRIM", false, true},
		{"XCLAIM s g c 0 0-1\r\n", 0, "XCLAIM", false, false},
		{"XREAD STREAMS block 0\r\n", 0, "XREAD", true, false}, // a stream named "block"
		{"EVAL \"return 1\" 0\r\n", rediscmd.AllowScripts, "EVAL", false, false},
		{"EVAL_RO \"return 1\" 0\r\n", rediscmd.AllowScripts, "EVAL_RO", true, false},
		{"PEXPIREAT k 1\r\n", rediscmd.AllowExpiry, "PEXPIREAT", false, false},
		{"RESTORE k 0 x\r\n", 0, "RESTORE", false, false},
		{"RESTORE k 10 x\r\n", rediscmd.AllowExpiry, "RESTORE", false, true},
		{"CLIENT ID\r\n", 0, "CLIENT ID", true, false},
		{"COMMAND\r\n", 0, "COMMAND", true, false},
	}
	for _, tt := range tests {
		f := NewRESP(Options{RedisAllow: tt.allow})
		req, err := f.NextRequest(reader(tt.in))
		if err != nil || req.Op != tt.op || req.ReadOnly != tt.ro || req.Rewrite != tt.rewrite {
			t.Errorf("%q: %+v, %v; want op %s ro %v rewrite %v", strings.TrimSpace(tt.in), req, err, tt.op, tt.ro, tt.rewrite)
		}
	}
}

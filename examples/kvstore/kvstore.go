// Package kvstore is the small deterministic HTTP key-value service used to
// demonstrate and test smr-cri (the paper's KV store). Its responses depend
// only on the order of the requests it receives: no clocks, no randomness,
// no Date header, sorted listings.
//
//	GET    /kv/<key>    200 value | 404
//	PUT    /kv/<key>    body is the value; 204
//	DELETE /kv/<key>    204 | 404
//	POST   /incr/<key>  200 new decimal value (missing key counts as 0) | 409 not an integer
//	GET    /keys        200 sorted keys, one per line
//	GET    /_smr/state  200 the whole state (smr-cri's snapshot contract)
//	PUT    /_smr/state  replaces the whole state with the body; 204 | 400
//
// The state endpoint implements smr-cri's opt-in snapshot contract (pod
// annotation smr.io/snapshot-path: /_smr/state, replication/CONTRACT.md):
// its bytes are canonical (keys sorted), so equal stores answer equal bytes,
// and a PUT installs a state only when the whole body parsed.
package kvstore

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Limits of the service.
const (
	MaxKeyBytes   = 256
	MaxValueBytes = 1 << 20
	// MaxStateBytes bounds a state installed through StatePath.
	MaxStateBytes = 1 << 30
)

// StatePath is the snapshot contract's endpoint (smr.io/snapshot-path).
const StatePath = "/_smr/state"

// Store is the in-memory state.
type Store struct {
	mu   sync.Mutex
	data map[string][]byte
}

// New returns an empty store.
func New() *Store { return &Store{data: map[string][]byte{}} }

// ServeHTTP implements http.Handler.
func (s *Store) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header()["Date"] = nil // keep responses byte-identical across replicas
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	switch {
	case r.URL.Path == StatePath:
		s.state(w, r)
	case r.URL.Path == "/keys":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			methodNotAllowed(w, "GET, HEAD")
			return
		}
		_, _ = io.WriteString(w, s.keys())
	case strings.HasPrefix(r.URL.Path, "/kv/"):
		key, ok := keyOf(w, r.URL.Path, "/kv/")
		if !ok {
			return
		}
		s.kv(w, r, key)
	case strings.HasPrefix(r.URL.Path, "/incr/"):
		key, ok := keyOf(w, r.URL.Path, "/incr/")
		if !ok {
			return
		}
		if r.Method != http.MethodPost {
			methodNotAllowed(w, "POST")
			return
		}
		n, err := s.incr(key)
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		_, _ = io.WriteString(w, strconv.FormatInt(n, 10))
	default:
		http.Error(w, "not found: use /kv/<key>, /incr/<key> or /keys", http.StatusNotFound)
	}
}

func (s *Store) kv(w http.ResponseWriter, r *http.Request, key string) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		s.mu.Lock()
		v, ok := s.data[key]
		s.mu.Unlock()
		if !ok {
			http.Error(w, "no such key", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(v)))
		if r.Method == http.MethodGet {
			_, _ = w.Write(v)
		}
	case http.MethodPut:
		v, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxValueBytes))
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				http.Error(w, "value larger than 1 MiB", http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.data[key] = v
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	case http.MethodDelete:
		s.mu.Lock()
		_, ok := s.data[key]
		delete(s.data, key)
		s.mu.Unlock()
		if !ok {
			http.Error(w, "no such key", http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		methodNotAllowed(w, "GET, HEAD, PUT, DELETE")
	}
}

func (s *Store) incr(key string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	if v, ok := s.data[key]; ok {
		var err error
		if n, err = strconv.ParseInt(string(v), 10, 64); err != nil {
			return 0, errors.New("value is not an integer")
		}
	}
	n++
	s.data[key] = []byte(strconv.FormatInt(n, 10))
	return n, nil
}

func (s *Store) keys() string {
	s.mu.Lock()
	keys := make([]string, 0, len(s.data))
	for k := range s.data {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('\n')
	}
	return b.String()
}

func keyOf(w http.ResponseWriter, path, prefix string) (string, bool) {
	key := strings.TrimPrefix(path, prefix)
	switch {
	case key == "" || strings.Contains(key, "/"):
		http.Error(w, "key must be one non-empty path segment", http.StatusBadRequest)
		return "", false
	case len(key) > MaxKeyBytes:
		http.Error(w, "key longer than 256 bytes", http.StatusBadRequest)
		return "", false
	}
	return key, true
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
}

// stateMagic starts the state bytes: "kvstore-state/1\n", then per key in
// sorted order uvarint(len(key)) key uvarint(len(value)) value.
const stateMagic = "kvstore-state/1\n"

func (s *Store) state(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		w.Header().Set("Content-Type", "application/octet-stream")
		bw := bufio.NewWriterSize(w, 64<<10)
		_ = s.WriteState(bw)
		_ = bw.Flush()
	case http.MethodPut:
		data, err := ReadState(http.MaxBytesReader(w, r.Body, MaxStateBytes))
		if err != nil {
			http.Error(w, "state not installed: "+err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.data = data
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	default:
		methodNotAllowed(w, "GET, PUT")
	}
}

// WriteState writes the whole store in its canonical form.
func (s *Store) WriteState(w io.Writer) error {
	s.mu.Lock()
	keys := make([]string, 0, len(s.data))
	for k := range s.data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	vals := make([][]byte, len(keys))
	for i, k := range keys {
		vals[i] = s.data[k]
	}
	s.mu.Unlock()
	if _, err := io.WriteString(w, stateMagic); err != nil {
		return err
	}
	var n [binary.MaxVarintLen64]byte
	for i, k := range keys {
		for _, f := range [][]byte{[]byte(k), vals[i]} {
			if _, err := w.Write(n[:binary.PutUvarint(n[:], uint64(len(f)))]); err != nil {
				return err
			}
			if _, err := w.Write(f); err != nil {
				return err
			}
		}
	}
	return nil
}

// ReadState parses a whole state written by WriteState; nothing partial
// is returned.
func ReadState(r io.Reader) (map[string][]byte, error) {
	br := bufio.NewReader(r)
	magic := make([]byte, len(stateMagic))
	if _, err := io.ReadFull(br, magic); err != nil || !bytes.Equal(magic, []byte(stateMagic)) {
		return nil, errors.New("not a kvstore state (bad header)")
	}
	data := map[string][]byte{}
	field := func(limit uint64) ([]byte, error) {
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, err
		}
		if n > limit {
			return nil, fmt.Errorf("field of %d bytes exceeds %d", n, limit)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, fmt.Errorf("truncated: %w", err)
		}
		return b, nil
	}
	for {
		if _, err := br.Peek(1); errors.Is(err, io.EOF) {
			return data, nil
		}
		k, err := field(MaxKeyBytes)
		if err != nil {
			return nil, fmt.Errorf("key: %w", err)
		}
		v, err := field(MaxValueBytes)
		if err != nil {
			return nil, fmt.Errorf("value of %q: %w", k, err)
		}
		if len(k) == 0 || bytes.ContainsRune(k, '/') {
			return nil, fmt.Errorf("bad key %q", k)
		}
		data[string(k)] = v
	}
}

package appstate

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"
)

type rec struct {
	kind byte
	body []byte
}

func writeStream(t *testing.T, protocol string, recs []rec) []byte {
	t.Helper()
	var b bytes.Buffer
	sw, err := newStreamWriter(&b, protocol)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := sw.record(r.kind, r.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := sw.end(); err != nil {
		t.Fatal(err)
	}
	if sw.bytes != int64(b.Len()) {
		t.Fatalf("writer counted %d bytes, wrote %d", sw.bytes, b.Len())
	}
	return b.Bytes()
}

func readStream(protocol string, data []byte) ([]rec, error) {
	sr, err := newStreamReader(bytes.NewReader(data), protocol)
	if err != nil {
		return nil, err
	}
	var out []rec
	for {
		k, body, err := sr.next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, rec{k, body})
	}
}

func TestStreamRoundTrip(t *testing.T) {
	recs := []rec{
		{kindDB, []byte{3}},
		{kindKey, bytes.Join(keyRecord([]byte("k"), 1700000000000, []byte("payload")), nil)},
		{kindKey, bytes.Join(keyRecord(nil, 0, nil), nil)},
		{kindFunctions, bytes.Repeat([]byte{0xff}, 70000)},
	}
	got, err := readStream(ProtoRESP, writeStream(t, ProtoRESP, recs))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(got, recs, func(a, b rec) bool { return a.kind == b.kind && bytes.Equal(a.body, b.body) }) {
		t.Fatalf("records changed in the round trip")
	}
	k, exp, p, err := parseKeyRecord(got[1].body)
	if err != nil || string(k) != "k" || exp != 1700000000000 || string(p) != "payload" {
		t.Fatalf("key record: %q %d %q %v", k, exp, p, err)
	}
}

func TestStreamRefusesDamage(t *testing.T) {
	good := writeStream(t, ProtoRESP, []rec{{kindDB, []byte{0}}, {kindKey, bytes.Join(keyRecord([]byte("k"), 0, []byte("v")), nil)}})
	flip := func(i int) []byte { b := slices.Clone(good); b[i] ^= 1; return b }
	hugeLen := append(slices.Clone(good[:len(streamMagic)+1+1+len(ProtoRESP)]), kindKey, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f)
	cases := []struct {
		name     string
		protocol string
		data     []byte
	}{
		{"empty", ProtoRESP, nil},
		{"wrong magic", ProtoRESP, flip(0)},
		{"wrong version", ProtoRESP, flip(len(streamMagic))},
		{"other protocol", ProtoHTTP, good},
		{"truncated in a record", ProtoRESP, good[:len(good)-20]},
		{"truncated end", ProtoRESP, good[:len(good)-3]},
		{"no end record", ProtoRESP, good[:len(good)-14]},
		{"flipped body byte", ProtoRESP, flip(len(good) - 16)},
		{"flipped checksum", ProtoRESP, flip(len(good) - 1)},
		{"huge record length", ProtoRESP, hugeLen},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := readStream(tc.protocol, tc.data); !errors.Is(err, ErrBadStream) {
				t.Fatalf("got %v, want ErrBadStream", err)
			}
		})
	}
}

func TestParseKeyRecordRefusesGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, {5, 'a'}, {1, 'a'}, {1, 'a', 1}} { // 1 = varint -1: negative expiry
		if _, _, _, err := parseKeyRecord(b); !errors.Is(err, ErrBadStream) {
			t.Errorf("parseKeyRecord(%v) = %v, want ErrBadStream", b, err)
		}
	}
}

func TestHLLRegisters(t *testing.T) {
	header := func(enc byte) []byte { return append([]byte("HYLL"), enc, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8) }
	// Sparse: register 0 = 3 (VAL 3, run 1), then XZERO for the other 16383.
	sparse := append(header(1), 0x80|(2<<2)|0, 0x40|0x3f, 0xfe)
	// Dense with the same registers, and another cached cardinality.
	dense := append(header(0), make([]byte, 16384*6/8)...)
	dense[8] = 0xaa
	dense[hllHeader] = 3
	rs, ok1 := hllRegisters(sparse)
	rd, ok2 := hllRegisters(dense)
	if !ok1 || !ok2 || !bytes.Equal(rs, rd) || rs[0] != 3 || rs[1] != 0 {
		t.Fatalf("sparse %v %v, dense %v %v: registers differ", ok1, rs[:4], ok2, rd[:4])
	}
	for _, bad := range [][]byte{[]byte("HYLL"), append(header(1), 0x00), append(header(0), 1, 2), append(header(7), 0), []byte("plain string value")} {
		if _, ok := hllRegisters(bad); ok {
			t.Errorf("hllRegisters(%q) accepted a malformed HyperLogLog", bad)
		}
	}
}

func TestSumIsOrderIndependent(t *testing.T) {
	a, b, c := bytes.Repeat([]byte{0xff}, 32), bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{0x80}, 32)
	var x, y sum256
	x.add(a)
	x.add(b)
	x.add(c)
	y.add(c)
	y.add(a)
	y.add(b)
	if x != y {
		t.Fatal("sum depends on order")
	}
	var z sum256
	z.add(a)
	z.add(b)
	if z == x {
		t.Fatal("a different multiset gives the same sum")
	}
}

func TestValidateSnapshotPath(t *testing.T) {
	for p, ok := range map[string]bool{
		"/_smr/state": true, "/snapshot": true, "": false, "/": false, "state": false,
		"/a?b": false, "/a b": false, "/a#b": false, "/a\x00": false,
	} {
		if err := ValidateSnapshotPath(p); (err == nil) != ok {
			t.Errorf("ValidateSnapshotPath(%q) = %v, want ok=%v", p, err, ok)
		}
	}
}

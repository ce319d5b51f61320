package rdb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strconv"
	"testing"
)

func TestCRC64(t *testing.T) {
	// Redis' crc64.c self-test value.
	if got := crc64Update(0, []byte("123456789")); got != 0xe9c6d914c4b8d9ca {
		t.Fatalf("crc64(123456789) = %016x, want e9c6d914c4b8d9ca", got)
	}
}

// file builds an RDB file by hand.
type file struct{ bytes.Buffer }

func (f *file) op(b ...byte) *file { f.Write(b); return f }
func (f *file) str(s string) *file {
	f.WriteByte(byte(len(s))) // lengths < 64 only
	f.WriteString(s)
	return f
}
func (f *file) end() []byte {
	f.WriteByte(opEOF)
	sum := crc64Update(0, f.Bytes())
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], sum)
	return append(bytes.Clone(f.Bytes()), b[:]...)
}

func listpack(elems ...[]byte) []byte {
	var body []byte
	for _, e := range elems {
		body = append(body, e...)
	}
	b := make([]byte, 6, 7+len(body))
	binary.LittleEndian.PutUint32(b, uint32(7+len(body)))
	binary.LittleEndian.PutUint16(b[4:], uint16(len(elems)))
	return append(append(b, body...), 0xff)
}

// lpStr is a listpack 6-bit string entry with its back-length.
func lpStr(s string) []byte { return append(append([]byte{0x80 | byte(len(s))}, s...), byte(1+len(s))) }

func sample() []byte {
	var f file
	f.WriteString("REDIS0010")
	f.op(opAux).str("redis-ver").str("7.0.15")
	f.op(opSelectDB, 0).op(opResizeDB, 3, 1)
	f.op(opExpireTimeMs)
	binary.Write(&f, binary.LittleEndian, uint64(1700000000123))
	f.op(typeString).str("k").str("v")
	f.op(typeString).str("n").op(0xc0, 0x85)                                  // int8 -123
	lp := listpack(lpStr("a"), []byte{0x05, 1}, []byte{0xc0 | 0x1f, 0xff, 2}) // "a", 5, -1 (13-bit)
	f.op(typeListQuicklist2).str("l").op(1, 2).op(byte(len(lp))).op(lp...)
	f.op(typeZSet2).str("z").op(1).str("m")
	binary.Write(&f, binary.LittleEndian, math.Float64bits(2.5))
	f.op(opSelectDB, 2).op(typeSetIntset).str("s")
	is := []byte{2, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xff, 7, 0}
	f.op(byte(len(is))).op(is...)
	return f.end()
}

func TestParseSample(t *testing.T) {
	var keys []*Key
	v, err := Parse(bytes.NewReader(sample()), Handler{Key: func(k *Key) error { keys = append(keys, k); return nil }})
	if err != nil || v != 10 {
		t.Fatalf("Parse: version %d, %v", v, err)
	}
	want := []string{
		`0 k string 1700000000123 "v"`,
		`0 n string 0 "-123"`,
		`0 l list 0 ["a" "5" "-1"]`,
		`0 z zset 0 [{m 2.5}]`,
		`2 s set 0 ["-1" "7"]`,
	}
	if len(keys) != len(want) {
		t.Fatalf("%d keys, want %d", len(keys), len(want))
	}
	for i, k := range keys {
		if got := describe(k); got != want[i] {
			t.Errorf("key %d: %s, want %s", i, got, want[i])
		}
	}
}

func describe(k *Key) string {
	var b bytes.Buffer
	b.WriteString(string(rune('0'+k.DB)) + " " + string(k.Key) + " " + k.Type + " ")
	b.WriteString(strconv.FormatInt(k.ExpireMs, 10) + " ")
	q := func(s []byte) string { return `"` + string(s) + `"` }
	switch k.Type {
	case TypeString:
		b.WriteString(q(k.String))
	case TypeList, TypeSet:
		vs := k.List
		if k.Type == TypeSet {
			vs = k.Set
		}
		b.WriteString("[")
		for i, v := range vs {
			if i > 0 {
				b.WriteString(" ")
			}
			b.WriteString(q(v))
		}
		b.WriteString("]")
	case TypeZSet:
		b.WriteString("[")
		for _, m := range k.ZSet {
			b.WriteString("{" + string(m.Member) + " " + strconv.FormatFloat(m.Score, 'g', -1, 64) + "}")
		}
		b.WriteString("]")
	}
	return b.String()
}

// TestParseRefusesDamage: every truncation, every flipped byte and
// unknown content give an error, never a panic or a wrong success.
func TestParseRefusesDamage(t *testing.T) {
	good := sample()
	for n := range len(good) {
		if _, err := Parse(bytes.NewReader(good[:n]), Handler{}); err == nil {
			t.Fatalf("truncated to %d bytes: no error", n)
		}
	}
	for i := range good {
		bad := bytes.Clone(good)
		bad[i] ^= 0x5a
		if _, err := Parse(bytes.NewReader(bad), Handler{}); err == nil {
			t.Fatalf("byte %d flipped: no error", i)
		}
	}
	var mod file
	mod.WriteString("REDIS0010")
	mod.op(opSelectDB, 0).op(typeModule2).str("m")
	var newer file
	newer.WriteString("REDIS0012")
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"module type", mod.end(), ErrModule},
		{"newer version", newer.end(), ErrUnsupported},
		{"not rdb", []byte("GET / HTTP/1.1\r\n"), ErrFormat},
		{"huge length", append([]byte("REDIS0010\xfa\x81"), bytes.Repeat([]byte{0xff}, 8)...), ErrFormat},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse(bytes.NewReader(tc.data), Handler{}); !errors.Is(err, tc.want) {
				t.Fatalf("Parse: %v, want %v", err, tc.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sample())
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = Parse(bytes.NewReader(b), Handler{}) // must not panic
		_, _ = listpackEntries(b)
		_, _ = ziplistEntries(b)
		_, _ = intsetEntries(b)
		_, _ = zipmapEntries(b)
		_, _ = lzfDecompress(b, 64)
	})
}
